#!/usr/bin/env bash
# tests/lab/demo.sh — see a failover with your own eyes, in one command (as root):
#
#   builds athena-dhcpd, makes a private lab (a switch, node A 10.0.0.1, node B 10.0.0.2, a
#   client; VIP 10.0.0.3/24) out of network namespaces, starts both nodes, leases an address
#   to the client, asks the VIP who answers DNS, kills node A with -9 and prints the timeline
#   of the takeover, then removes everything (also on Ctrl-C or an error).
#
# Nothing outside the lab's namespaces is touched. Options: --no-build (use the binaries in
# target/release); `--down PREFIX` removes a lab left behind by a killed run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=1
P=demo$$
case "${1:-}" in
  --down) P=${2:?usage: demo.sh --down PREFIX}; DOWN_ONLY=1 ;;
  --no-build) BUILD=0 ;;
  "") ;;
  *) echo "usage: $0 [--no-build|--down PREFIX]" >&2; exit 2 ;;
esac
SW=${P}sw A=${P}a B=${P}b C=${P}c
VIP=10.0.0.3 WHO=who.lab.test

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo.sh: $*" >&2; exit 1; }

exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
down() {
  local ns pids
  for ns in "$C" "$A" "$B" "$SW"; do
    exists "$ns" || continue
    pids=$(ip netns pids "$ns" | tr '\n' ' ')
    if [ -n "${pids// /}" ]; then kill -CONT $pids 2>/dev/null || true; kill -KILL $pids 2>/dev/null || true; fi
    ip netns del "$ns" 2>/dev/null || true
  done
}
if [ "${DOWN_ONLY:-0}" = 1 ]; then down; echo "lab $P removed"; exit 0; fi

[ "$(id -u)" = 0 ] || die "run me as root (the lab is made of network namespaces): sudo $0"

# --- what we need: the Debian packages it drives are installed (said first), like tests/run.sh --
command -v cargo >/dev/null 2>&1 || die "needs a Rust toolchain (cargo): https://rustup.rs or apt-get install cargo"
missing=()
for p in iproute2 bind9-dnsutils udhcpc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages the demo drives)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "could not install ${missing[*]}; install them and rerun"
fi

WORK=$(mktemp -d /tmp/athena-demo.XXXXXX)
cleanup() {
  down
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo; echo "interrupted, cleaning up"; exit 130' INT TERM

if [ "$BUILD" = 1 ]; then
  say "building (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet --bin athena-dhcpd --example vipprobe) || die "build failed"
fi
BIN=$ROOT/target/release/athena-dhcpd PROBE=$ROOT/target/release/examples/vipprobe
[ -x "$BIN" ] && [ -x "$PROBE" ] || die "missing $BIN or $PROBE (drop --no-build)"

# --- the lab, as shared/lab/lab.sh builds it ------------------------------------------------------
port() {  # NS ADDR|none
  local ns=$1 addr=$2 p=p-${1#"$P"}
  ip -n "$SW" link add "$p" type veth peer name eth0 netns "$ns"
  ip -n "$SW" link set "$p" master br0 up
  [ "$addr" = none ] || ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
}
say "lab $P: switch ${SW}, node A ${A} 10.0.0.1, node B ${B} 10.0.0.2, client ${C}, VIP $VIP/24"
down
for ns in "$SW" "$A" "$B" "$C"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$SW" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$SW" link set br0 up
port "$A" 10.0.0.1; port "$B" 10.0.0.2; port "$C" none

config() {  # NODE(a|b)
  local n=$1 me=10.0.0.1 peer=10.0.0.2 role=primary who=192.0.2.1
  [ "$n" = b ] && { me=10.0.0.2; peer=10.0.0.1; role=secondary; who=192.0.2.2; }
  mkdir -p "$WORK/$n"
  cat <<EOF
[server]
node_name = "node-$n"
lease_db = "$WORK/$n/leases.redb"

[api]
read_token = "demo-read-token-0123456789"   # for athena-dhcpd status off loopback

[ha]
enabled = true
role = "$role"
peer_address = "$peer:8067"
listen_address = "$me:8067"
heartbeat_interval = "100ms"
failover_timeout = "1s"
shared_secret = "demo-shared-secret-0123456789abcdef"

[dns]
enabled = true
listen_udp = "0.0.0.0:53"
domain = "lab.test"
register_leases = true

# Each node answers this name with its own address, so a reply says who answered.
[[dns.record]]
name = "$WHO"
type = "A"
value = "$who"
ttl = 1

[[subnet]]
network = "10.0.0.0/24"
interface = "eth0"
dns_servers = ["$VIP"]
domain_name = "lab.test"
[[subnet.pool]]
range_start = "10.0.0.100"
range_end = "10.0.0.199"

[[hooks.vip]]
name = "dns-vip"
address = "$VIP/24"
interface = "eth0"
EOF
}
start() {  # NODE
  local ns=$A; [ "$1" = b ] && ns=$B
  config "$1" >"$WORK/$1.toml"
  ip netns exec "$ns" "$BIN" --log-format text --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  echo $! >"$WORK/$1.pid"
  disown  # no "Killed" job notices when the demo kills it
}
state_of() {  # NODE -> HA state from the API
  local ns=$A ip=10.0.0.1; [ "$1" = b ] && { ns=$B; ip=10.0.0.2; }
  ip netns exec "$ns" timeout 2 bash -c "exec 3<>/dev/tcp/$ip/8067 && printf 'GET /api/v1/ha/status HTTP/1.0\r\n\r\n' >&3 && cat <&3" 2>/dev/null |
    grep -o '"state":"[A-Z]*"' | head -1 | cut -d'"' -f4
}
wait_for() {  # SECS DESCRIPTION CMD...
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then
      echo "demo.sh: timed out waiting for: $what" >&2
      for n in a b; do echo "--- node $n log (tail)"; tail -20 "$WORK/$n.log"; done >&2
      exit 1
    fi
    sleep 0.05
  done
}
is_state() { [ "$(state_of "$1")" = "$2" ]; }

say "starting node A (primary) and node B (secondary)"
start a; start b
wait_for 30 "node A ACTIVE" is_state a ACTIVE
wait_for 30 "node B STANDBY" is_state b STANDBY
echo "node A: $(state_of a), node B: $(state_of b)"
ip -n "$A" -br -4 addr show dev eth0

say "client: DHCP with udhcpc"
cat >"$WORK/udhcpc.sh" <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew) ip addr replace "$ip/${mask:-24}" dev "$interface"
               echo "leased $ip for ${lease}s from server $serverid, DNS server(s): $dns" ;;
esac
EOF
chmod 755 "$WORK/udhcpc.sh"
ip netns exec "$C" udhcpc -i eth0 -q -n -t 10 -T 1 -s "$WORK/udhcpc.sh" 2>/dev/null | grep leased ||
  die "the client got no lease; node A log: $WORK/a.log"

say "client: dig @$VIP $WHO"
ip netns exec "$C" dig +noall +answer +time=1 +tries=1 @$VIP $WHO A
echo "(192.0.2.1 = node A answered)"

say "killing node A with -9 while the client asks the VIP every 20 ms"
ip netns exec "$C" "$PROBE" --server $VIP:53 --name $WHO --interval 20ms --timeout 20ms \
  --max-time 30s --stop-file "$WORK/stop" >"$WORK/probe.txt" 2>&1 &
probe=$!
sleep 1
t0=$(date +%s.%N)
kill -9 "$(cat "$WORK/a.pid")"
wait_for 20 "node B ACTIVE" is_state b ACTIVE
wait_for 20 "an answer from node B" grep -q " ok 192.0.2.2" "$WORK/probe.txt"
sleep 0.5
touch "$WORK/stop"; wait "$probe" || true

# --- the timeline, from node B's log (RFC 3339 timestamps) and the client's probe ---------------
ts() { date -d "$1" +%s.%N; }
log_time() {  # PATTERN: time of the first line of B's log matching it, after the kill
  local line t
  while IFS= read -r line; do
    t=$(ts "${line%% *}" 2>/dev/null) || continue
    if awk -v a="$t" -v b="$t0" 'BEGIN{exit !(a>=b)}'; then echo "$t"; return; fi
  done < <(grep -E "$1" "$WORK/b.log")
}
rel() { awk -v a="$1" -v b="$t0" 'BEGIN{printf "t=%+.3f", a-b}'; }
t_active=$(log_time 'HA [A-Z]+ -> ACTIVE')
t_vip=$(log_time 'claimed floating IP')
t_fail=$(awk '$2=="fail"{print $1; exit}' "$WORK/probe.txt")
t_b=$(awk '$2=="ok" && $3=="192.0.2.2"{print $1; exit}' "$WORK/probe.txt")
say "timeline"
{
  echo "$t0 node A killed (kill -9)"
  # The message only: B's log also says ACTIVE elsewhere, and the structured fields repeat it.
  [ -n "$t_active" ] && echo "$t_active node B ACTIVE      ($(grep -E 'HA [A-Z]+ -> ACTIVE' "$WORK/b.log" | tail -1 | sed 's/^[^ ]* *INFO *//; s/ event=.*//'))"
  [ -n "$t_vip" ] && echo "$t_vip VIP claimed by node B ($(grep 'claimed floating IP' "$WORK/b.log" | tail -1 | sed 's/.*claimed/claimed/; s/ vip=.*//'))"
  [ -n "$t_fail" ] && echo "$t_fail first DNS query without an answer"
  [ -n "$t_b" ] && echo "$t_b first DNS answer from node B"
} | sort -n | while read -r t rest; do echo "$(rel "$t") $rest"; done
grep '^summary' "$WORK/probe.txt" | sed 's/^summary /client: /; s/ first_fail=.*//'
echo "node A: $( [ -z "$(ip -n "$A" -br -4 addr show dev eth0 | grep -o "$VIP/24")" ] && echo "no VIP" || echo "still has the VIP in its kernel (stale until restart; the switch now sends to B)")"
echo "node B: $(state_of b), $(ip -n "$B" -br -4 addr show dev eth0 | grep -q "$VIP/24" && echo "holds $VIP/24")"
say "athena-dhcpd status on node B"
ip netns exec "$B" "$BIN" status --config "$WORK/b.toml" || true
say "node B's log since the kill (HA and VIP lines)"
awk -v t0="$t0" '{ cmd = "date -d " $1 " +%s.%N"; cmd | getline t; close(cmd); if (t >= t0) print }' \
  <(grep -E 'HA |peer|floating IP' "$WORK/b.log") | cut -c1-200
say "done; cleaning up"
