#!/usr/bin/env bash
# DHCP memory benchmark: athena-dhcpd's RSS with LEASES leases, in the lab of benches/dhcp.sh.
# Not a test: run it by hand as root (needs perfdhcp from kea-admin and a release build).
#
#   benches/dhcp-memory.sh                    # 50,000 leases
#   LEASES=20000 benches/dhcp-memory.sh
#   CHECK=1 benches/dhcp-memory.sh            # exit 1 when RSS goes over the 30 MB target
#
# Steps, each printing VmRSS and the split from /proc/PID/smaps_rollup (anonymous = heap and
# stacks, file = binary and redb's mmap):
#   1. fill:    a fresh server, perfdhcp at FILL_RATE/s with a client range much larger than
#               LEASES (nearly every exchange a new client) until LEASES exchanges are done;
#   2. restart: SIGTERM, start again on the same database, idle for 3 s;
#   3. load:    FIXED_RATE/s for STEP s over 50,000 clients (renewals and new leases), as in
#               the fixed-rate step of benches/dhcp.sh.
# The server runs on core 1, perfdhcp on core 0 (benches/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

LEASES=${LEASES:-50000}
FILL_RATE=${FILL_RATE:-4000}
FIXED_RATE=${FIXED_RATE:-4000}
STEP=${STEP:-10}
BIN=${BIN:-target/release/athena-dhcpd}
OUT=${OUT:-$(mktemp -d /tmp/athena-dhcp-mem.XXXXXX)}
S=dmsrv$$
C=dmcli$$

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
command -v perfdhcp >/dev/null || { echo "missing perfdhcp (apt-get install kea-admin)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "missing $BIN: cargo build --release" >&2; exit 1; }

SRV_PID=
cleanup() {
  [ -n "$SRV_PID" ] && kill -9 "$SRV_PID" 2>/dev/null || true
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
}
trap cleanup EXIT

. benches/dhcp-lab.sh  # cwd is the repository (cd above)
dhcp_lab "$S" "$C"

cat >"$OUT/athena.toml" <<EOF
[server]
node_name = "bench"
lease_db = "$OUT/leases.redb"
rate_limit_per_mac = 0
log_level = "warn"
[api]
listen = "127.0.0.1:18067"
[defaults]
lease_time = "1h"
[[subnet]]
network = "198.18.0.0/15"
interface = "vsrv"
[[subnet.pool]]
range_start = "198.18.1.0"
range_end = "198.19.255.254"
EOF

start_server() {
  ip netns exec "$S" env ${ATHENA_ENV:-} taskset -c 1 "$BIN" --config "$OUT/athena.toml" 2>>"$OUT/athena.log" &
  SRV_PID=$!
  for _ in $(seq 300); do
    ip netns exec "$S" curl -s -m 1 http://127.0.0.1:18067/api/v1/health 2>/dev/null | grep -q status && return
    sleep 0.1
  done
  echo "server did not come up (see $OUT/athena.log)" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SRV_PID" 2>/dev/null || true
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=
}

# "label rss_kB anon_kB file_kB threads leases"
report() {
  local label=$1 rss anon file thr leases
  rss=$(awk '/^VmRSS/{print $2}' "/proc/$SRV_PID/status")
  thr=$(awk '/^Threads/{print $2}' "/proc/$SRV_PID/status")
  anon=$(awk '/^Anonymous:/{print $2}' "/proc/$SRV_PID/smaps_rollup")
  file=$(awk '/^Rss:/{r=$2} /^Anonymous:/{a=$2} END{print r-a}' "/proc/$SRV_PID/smaps_rollup")
  leases=$(ip netns exec "$S" curl -s -m 5 http://127.0.0.1:18067/metrics | awk '/^athena_dhcp_leases_active /{print $2}')
  cp "/proc/$SRV_PID/smaps" "$OUT/smaps-$label" 2>/dev/null || true
  if [ "${MALLOC_STATS:-0}" = 1 ]; then # glibc's per-arena in-use figures, on the server's stderr
    echo "== $label" >>"$OUT/athena.log"
    gdb -batch -p "$SRV_PID" -ex 'call (void) malloc_stats()' ${TRIM:+-ex 'call (int) malloc_trim(0)'} >/dev/null 2>&1 || true
    [ -n "${TRIM:-}" ] && echo "after malloc_trim: $(awk '/^VmRSS/{print $2}' "/proc/$SRV_PID/status") kB"
  fi
  printf '%-8s RSS %6d kB  anon %6d kB  file %6d kB  threads %2d  active leases %s\n' \
    "$label" "$rss" "$anon" "$file" "$thr" "${leases:-?}"
  # README's target: under 30 MB with 50,000 leases, at every point of the run.
  [ "$rss" -lt 30720 ] || { echo "CHECK: $label RSS $rss kB is over the 30 MB target" >&2; OVER=1; }
}

start_server
ip netns exec "$C" taskset -c 0 perfdhcp -4 -l vcli -B -r "$FILL_RATE" -R 100000000 -n "$LEASES" -p 600 -g single >"$OUT/fill.txt" 2>&1 || true
sleep 6 # the lease gauge is refreshed every 5 s
report fill
stop_server

start_server
sleep 6
report restart

ip netns exec "$C" taskset -c 0 perfdhcp -4 -l vcli -B -r "$FIXED_RATE" -R 50000 -p "$STEP" -g single >"$OUT/load.txt" 2>&1 || true
sleep 6
report load
stop_server
echo "raw: $OUT" >&2
if [ "${CHECK:-0}" = 1 ] && [ "${OVER:-0}" = 1 ]; then
  echo "CHECK FAILED: RSS over 30 MB (above)"; exit 1
fi
