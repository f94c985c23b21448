#!/bin/bash
# /etc/athena-dhcpd/hooks/floating-ip.sh
#
# The OLD route to a floating IP, kept as an example and for comparison: a [[hooks.script]]
# that forks `ip` and `arping` on every ha.failover. It needs root capabilities, so it only
# works when the daemon runs with `[server] drop_privileges = false` (hook scripts get no
# capabilities otherwise). The built-in [[hooks.vip]] does the same over netlink with only
# CAP_NET_ADMIN, in well under a millisecond, and re-adds, re-announces and defends the VIP.
#
#   [[hooks.script]]
#   name = "floating-ip"
#   events = ["ha.failover"]
#   command = "/etc/athena-dhcpd/hooks/floating-ip.sh"
#   timeout = "5s"

VIP="${FLOATING_IP_VIP:-10.0.0.3/24}"
INTERFACE="${FLOATING_IP_INTERFACE:-eth0}"

case "$ATHENA_EVENT_TYPE" in
    ha.failover)
        if [ "$ATHENA_HA_NEW_STATE" = "ACTIVE" ]; then
            # we're now active — claim the VIP
            ip addr add $VIP dev $INTERFACE 2>/dev/null
            # send gratuitous ARP to update switch MAC tables
            arping -c 3 -U -I $INTERFACE ${VIP%/*}
            logger -t athena "claimed floating IP $VIP"
        else
            # we're no longer active — release the VIP
            ip addr del $VIP dev $INTERFACE 2>/dev/null
            logger -t athena "released floating IP $VIP"
        fi
        ;;
esac
