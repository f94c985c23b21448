#!/usr/bin/env bash
# benches/dns-outage.sh — an upstream outage: which share of the names clients asked before is
# still answered, for athena-dhcpd (serve_stale) and for unbound (`serve-expired`) and dnsmasq
# (`use-stale-cache`), side by side in one run (not a test).
#
#   sudo benches/dns-outage.sh [--minutes 10] [--ttl 30] [--names 1000] [--round 60]
#                              [--rate 500] [--servers "athena unbound dnsmasq"] [--tsv FILE]
#                              [--no-build] [--check]
#   BIN=...: use this athena-dhcpd binary instead of building the release one
#
# Everything runs in one private network namespace on its own loopback, each server on its
# own port, all forwarding to one upstream:
#   upstream  unbound on 127.0.0.1:5399 answering NAMES names host<i>.bench.lan from local
#             data with a TTL of TTL seconds (short, so every answer expires during the outage)
#   athena    athena-dhcpd on 127.0.0.1:5300: forwarders = the upstream, cache_size 10000,
#             serve_stale = true, stale_max = "1d", upstream_timeout 2s (the defaults)
#   unbound   unbound 1.17 on 127.0.0.1:5301, one thread, forwarding everything to the
#             upstream, `serve-expired: yes`, `serve-expired-ttl: 86400` (as stale_max),
#             `serve-expired-reply-ttl: 30` (its default, as athena's stale TTL),
#             `serve-expired-client-timeout: 0` (1.17's default: expired data at once)
#   dnsmasq   dnsmasq 2.90 on 127.0.0.1:5302, `--server` the upstream, `--cache-size=10000`,
#             `--use-stale-cache=86400`
# Servers run on core SERVER_CPU (1), the client (dnsperf) on CLIENT_CPU (0).
#
# Method: each server is asked every name once through dnsperf (its cache learns them; every
# name must be answered), then the upstream is blackholed: an nftables rule in the namespace's
# input hook drops every packet to port 5399, so a query to it is sent and never answered (as
# when the forwarders are unreachable; an output-hook drop would fail the send at once, which
# no real outage does). Every ROUND seconds of the outage, and at its end, each server is
# asked every name again, once (dnsperf -n 1 -Q RATE, timeout 5 s, 100 outstanding): answered
# = NOERROR replies (an expired answer served stale counts; the data is checked against what
# the upstream gave); failed = SERVFAIL, other rcodes, or no reply within 5 s. The first round
# comes after the TTL has run out for every name. Per round and server: the share answered,
# p50 and p99 latency of the replies. The rule is removed at the end.
#
# Results: one TSV line per round and server (path printed), a table with the share answered
# per server at the first round and at the end, its minimum over the rounds, and the latency
# of the first round (the one where every name's first query after its expiry finds the
# upstream silent).
# --check: exit 1 unless athena-dhcpd answers at least the share of the best other server in
# every round.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MINUTES=10
TTL=30
NAMES=1000
ROUND=60
RATE=500
SERVERS="athena unbound dnsmasq"
TSV=""
BUILD=1
CHECK=0
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --ttl) TTL=$2; shift 2 ;;
    --names) NAMES=$2; shift 2 ;;
    --round) ROUND=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --tsv) TSV=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --check) CHECK=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "dns-outage.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (a network namespace); run it with sudo"
for c in dnsperf unbound dnsmasq dig nft taskset ip; do
  command -v "$c" >/dev/null ||
    die "$c not found (apt-get install dnsperf unbound dnsmasq bind9-dnsutils nftables util-linux iproute2)"
done
[ "$TTL" -lt $((MINUTES * 60)) ] || die "--ttl $TTL must be shorter than the outage (--minutes $MINUTES)"
[ "$ROUND" -gt "$TTL" ] || die "--round $ROUND must be longer than --ttl $TTL (the first round must find every answer expired)"

if [ -n "${BIN:-}" ]; then BUILD=0; fi
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin athena-dhcpd) || die "build failed"
fi
BIN=${BIN:-$ROOT/target/release/athena-dhcpd}
[ -x "$BIN" ] || die "$BIN missing (build it, or drop --no-build, or set BIN)"

WORK=$(mktemp -d /tmp/dns-outage.XXXXXX)
[ -n "$TSV" ] || TSV=$WORK/results.tsv
NS="dnsout$$"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# shellcheck source=benches/dns-lab.sh
. "$ROOT/benches/dns-lab.sh"
dns_lab || die "cannot create namespace $NS"

port_of() { case "$1" in athena) echo 5300 ;; unbound) echo 5301 ;; dnsmasq) echo 5302 ;; esac; }

# --- the names ---------------------------------------------------------------------------------
: >"$WORK/names.txt"; : >"$WORK/upstream-data.conf"
for i in $(seq 1 "$NAMES"); do
  ip="10.$((i / 65536 % 256)).$((i / 256 % 256)).$((i % 256))"
  echo "host$i.bench.lan A" >>"$WORK/names.txt"
  echo "  local-data: \"host$i.bench.lan. $TTL IN A $ip\"" >>"$WORK/upstream-data.conf"
done

# --- servers -----------------------------------------------------------------------------------
start_bg() {  # LOG CMD...
  local log=$1; shift
  # Not through inns: a backgrounded shell function runs in a subshell, so $! would be that
  # subshell and cleanup would kill it and leave the server running; ip netns exec (and
  # taskset) exec the command, so here $! is the server itself.
  ip netns exec "$NS" "$@" >"$log" 2>&1 &
  PIDS+=($!)
}
wait_answers() {  # NAME PORT
  local i
  for i in $(seq 1 100); do answers "$2" && return 0; sleep 0.1; done
  die "$1 on port $2 does not answer host1.bench.lan (logs in $WORK)"
}

unbound_conf 5399 local "$WORK/upstream-data.conf" >"$WORK/upstream.conf"
start_bg "$WORK/upstream.log" unbound -c "$WORK/upstream.conf" -d
wait_answers upstream 5399

for s in $SERVERS; do
  case "$s" in
    athena)
      { athena_conf outage-bench
        printf '%s\n' 'forwarders = ["127.0.0.1:5399"]' 'serve_stale = true' 'stale_max = "1d"'
      } >"$WORK/athena.toml"
      start_bg "$WORK/athena.log" taskset -c "$SERVER_CPU" "$BIN" --log-format text -c "$WORK/athena.toml" ;;
    unbound)
      unbound_conf 5301 forward 5399 '  serve-expired: yes
  serve-expired-ttl: 86400
  serve-expired-reply-ttl: 30
  serve-expired-client-timeout: 0' >"$WORK/unbound.conf"
      start_bg "$WORK/unbound.log" taskset -c "$SERVER_CPU" unbound -c "$WORK/unbound.conf" -d ;;
    dnsmasq)
      start_bg "$WORK/dnsmasq.log" taskset -c "$SERVER_CPU" dnsmasq -k --port=5302 --listen-address=127.0.0.1 \
        --bind-interfaces --no-resolv --no-hosts --pid-file= --cache-size=10000 --user=root \
        --log-facility=/dev/null --server=127.0.0.1#5399 --use-stale-cache=86400 ;;
    *) die "unknown server $s (athena, unbound, dnsmasq)" ;;
  esac
  wait_answers "$s" "$(port_of "$s")"
done

# --- rounds ------------------------------------------------------------------------------------
# One round against one server: "answered servfail timeout other wrong p50_ms p99_ms".
ask_all() {  # SERVER OUT
  inns taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$(port_of "$1")" -d "$WORK/names.txt" -n 1 -c 1 \
    -q 100 -t 5 -Q "$RATE" -v >"$2" 2>&1
  awk '/^> / {
      if ($2 == "NOERROR") { ok++; lat[ok] = $NF }
      else if ($2 == "SERVFAIL") sf++
      else if ($2 == "T") to++
      else other++
    }
    END {
      n = ok; for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (lat[j] < lat[i]) { t = lat[i]; lat[i] = lat[j]; lat[j] = t }
      p50 = n ? lat[int((n + 1) / 2)] * 1000 : -1; i99 = int(n * 0.99); if (i99 < 1) i99 = 1
      p99 = n ? lat[i99] * 1000 : -1
      printf "%d %d %d %d %.3f %.3f\n", ok, sf, to, other, p50, p99
    }' "$2"
}
# A sample of the answers must be the upstream's data (stale, not invented).
data_ok() {  # SERVER
  local i ip got
  for i in 1 $((NAMES / 2)) "$NAMES"; do
    ip="10.$((i / 65536 % 256)).$((i / 256 % 256)).$((i % 256))"
    got=$(inns dig +short +time=5 +tries=1 @127.0.0.1 -p "$(port_of "$1")" "host$i.bench.lan" A 2>/dev/null | grep '^[0-9]')
    [ "$got" = "$ip" ] || { echo "host$i:${got:-none}"; return; }
  done
  echo ok
}

printf 'server\tround\tt_s\tanswered\tservfail\ttimeout\tother\tdata\tp50_ms\tp99_ms\n' >"$TSV"
declare -A SHARE FIRST LAST FIRSTLAT
round() {  # NAME T
  local s r
  for s in $SERVERS; do
    read -r a sf to ot p50 p99 <<<"$(ask_all "$s" "$WORK/$s-$1.txt")"
    r=$(data_ok "$s")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$1" "$2" "$a" "$sf" "$to" "$ot" "$r" "$p50" "$p99" >>"$TSV"
    echo "  t=+${2}s $1 $s: answered $a/$NAMES, servfail $sf, timeout $to, other $ot, data $r, p50 $p50 ms, p99 $p99 ms" >&2
    [ "$1" = before ] && continue
    SHARE[$s]+=" $(awk -v a="$a" -v n="$NAMES" 'BEGIN {printf "%.4f", a / n}')"
    if [ -z "${FIRST[$s]:-}" ]; then
      FIRST[$s]=$(awk -v a="$a" -v n="$NAMES" 'BEGIN {printf "%.4f", a / n}')
      FIRSTLAT[$s]="$p50 / $p99"
    fi
    LAST[$s]=$(awk -v a="$a" -v n="$NAMES" 'BEGIN {printf "%.4f", a / n}')
  done
}

echo "DNS upstream outage benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg);" \
  "outage ${MINUTES} min, TTL ${TTL} s, $NAMES names, a round every ${ROUND} s at $RATE queries/s; work dir $WORK" >&2
round before 0
for s in $SERVERS; do
  [ "$(awk -F'\t' -v s="$s" '$1 == s && $2 == "before" {print $4}' "$TSV")" = "$NAMES" ] ||
    die "$s did not answer every name before the outage (see $TSV)"
done

inns nft -f - <<EOF || die "nft failed"
table inet outage {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 5399 drop
    tcp dport 5399 drop
  }
}
EOF
t0=$(date +%s)
echo "  upstream blackholed at $(date -u +%H:%M:%S)" >&2
end=$((t0 + MINUTES * 60))
n=1
while :; do
  next=$((t0 + n * ROUND))
  [ "$next" -lt "$end" ] || break
  d=$((next - $(date +%s))); [ "$d" -gt 0 ] && sleep "$d"
  round "r$n" $(($(date +%s) - t0))
  n=$((n + 1))
done
now=$(date +%s); [ "$now" -lt "$end" ] && sleep $((end - now))
round end $(($(date +%s) - t0))
inns nft delete table inet outage

echo
echo "Upstream blackholed for $MINUTES min; every name (TTL $TTL s) asked once before, then again every $ROUND s and at the end."
printf '| %-8s | %-22s | %-22s | %-22s | %-30s |\n' server "answered, first round" "answered, end" "answered, worst round" \
  "p50 / p99 ms, first round"
printf '|%s|%s|%s|%s|%s|\n' ---------- ------------------------ ------------------------ ------------------------ \
  --------------------------------
for s in $SERVERS; do
  # shellcheck disable=SC2086
  worst=$(printf '%s\n' ${SHARE[$s]} | sort -g | head -1)
  printf '| %-8s | %-22s | %-22s | %-22s | %-30s |\n' "$s" "$(awk -v v="${FIRST[$s]}" 'BEGIN {printf "%.1f%%", v * 100}')" \
    "$(awk -v v="${LAST[$s]}" 'BEGIN {printf "%.1f%%", v * 100}')" "$(awk -v v="$worst" 'BEGIN {printf "%.1f%%", v * 100}')" \
    "${FIRSTLAT[$s]}"
done
echo "per-round figures (latency, SERVFAIL / timeout counts): $TSV"

if [ "$CHECK" = 1 ]; then
  awk -F'\t' 'NR > 1 && $2 != "before" {
      if ($1 == "athena") a[$2] = $4; else if ($4 > best[$2]) best[$2] = $4; rounds[$2] = 1
    }
    END {
      for (r in rounds) if (a[r] < best[r]) { printf "CHECK FAILED: round %s: athena answered %d, another server %d\n", r, a[r], best[r]; bad = 1 }
      if (!bad) print "check: athena-dhcpd answered at least as many names as the others in every round"
      exit bad
    }' "$TSV"
  exit $?
fi
