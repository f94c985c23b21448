# Sourced by benches/dhcp.sh and benches/dhcp-memory.sh: the lab of benches/README.md.
# dhcp_lab SRV_NS CLI_NS: two namespaces joined by a veth created inside SRV_NS (vsrv
# 198.18.0.1/15 in SRV_NS, vcli 198.18.0.2/15 in CLI_NS); nothing in the host namespace.
dhcp_lab() {
  ip netns add "$1"
  ip netns add "$2"
  ip -n "$1" link set lo up
  ip -n "$2" link set lo up
  ip -n "$1" link add vsrv type veth peer name vcli netns "$2"
  ip -n "$1" addr add 198.18.0.1/15 dev vsrv
  ip -n "$1" link set vsrv up
  ip -n "$2" addr add 198.18.0.2/15 dev vcli
  ip -n "$2" link set vcli up
}
