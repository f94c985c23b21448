#!/usr/bin/env bash
# DNS benchmark (not a test): dnsperf against athena-dhcpd, unbound and dnsmasq in one run,
# as benches/README.md describes, so the figures are comparable as ratios.
#
#  - everything runs in one private network namespace on its own loopback (server on
#    127.0.0.1:5300, the upstream of MODE=cache on 127.0.0.1:5399); no query leaves it;
#  - the server is pinned to one core, dnsperf to the other (SERVER_CPU / CLIENT_CPU);
#  - the same NAMES (1,000) names are answerable by each server: MODE=local from local data
#    ([[dns.record]], unbound local-data, dnsmasq addn-hosts), MODE=cache from the cache
#    after a warm-up through an upstream (an unbound with the local data);
#  - peak: `dnsperf -T1 -c4 -q100 -l PEAK_SECS`, REPEATS times; fixed rate: `-Q RATE -l
#    RATE_SECS -v`, REPEATS times, p99 latency from dnsperf's per-query lines;
#  - server CPU per query = Δ(utime+stime+cutime+cstime) of the server PID from
#    /proc/PID/stat over the run, divided by the queries completed.
#
# Usage (root): benches/dns.sh            # builds the release binary first
#   SKIP_BUILD=1 PEAK_SECS=5 RATE_SECS=5 REPEATS=3 MODE=local benches/dns.sh
#   CHECK=1 benches/dns.sh   # exit 1 when athena misses README's targets against unbound
# Every step's figures go to a TSV (OUT, default /tmp/dns-bench-<time>.tsv); a table with
# ratios to unbound is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PEAK_SECS=${PEAK_SECS:-20}
RATE_SECS=${RATE_SECS:-10}
REPEATS=${REPEATS:-3}
RATE=${RATE:-10000}
NAMES=${NAMES:-1000}
MODE=${MODE:-local}
SERVERS=${SERVERS:-"athena unbound dnsmasq"}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
OUT=${OUT:-/tmp/dns-bench-$(date +%Y%m%d-%H%M%S).tsv}
BIN=${ATHENA_BIN:-$PWD/target/release/athena-dhcpd}

die() { echo "benches/dns.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (it creates a network namespace)"
for c in dnsperf unbound dnsmasq dig taskset ip; do
  command -v "$c" >/dev/null || die "$c not found (apt-get install dnsperf unbound dnsmasq bind9-dnsutils util-linux iproute2)"
done
case "$MODE" in local|cache) ;; *) die "MODE must be local or cache" ;; esac
if [ -z "${SKIP_BUILD:-}" ] && [ -z "${ATHENA_BIN:-}" ]; then
  cargo build --release --bin athena-dhcpd
fi
[ -x "$BIN" ] || die "$BIN missing (build it or set ATHENA_BIN)"

WORK=$(mktemp -d /tmp/dns-bench.XXXXXX)
NS="dnsbench$$"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=benches/dns-lab.sh
. benches/dns-lab.sh  # cwd is the repository (cd above)
dns_lab

# --- data: the same names and addresses for every server ----------------------------------
: >"$WORK/names.txt"; : >"$WORK/hosts"; : >"$WORK/records.toml"; : >"$WORK/unbound-data.conf"
for i in $(seq 1 "$NAMES"); do
  name="host$i.bench.lan"
  ip="10.$((i / 65536 % 256)).$((i / 256 % 256)).$((i % 256))"
  echo "$name A" >>"$WORK/names.txt"
  echo "$ip $name" >>"$WORK/hosts"
  printf '[[dns.record]]\nname = "%s"\ntype = "A"\nvalue = "%s"\nttl = 300\n' "$name" "$ip" >>"$WORK/records.toml"
  echo "  local-data: \"$name. 300 IN A $ip\"" >>"$WORK/unbound-data.conf"
done

if [ "$MODE" = cache ]; then
  unbound_conf 5399 local "$WORK/unbound-data.conf" >"$WORK/upstream.conf"
  ip netns exec "$NS" unbound -c "$WORK/upstream.conf" -d >"$WORK/upstream.log" 2>&1 &
  PIDS+=($!)
fi

athena_bench_conf() {
  athena_conf bench
  if [ "$MODE" = local ]; then
    echo 'domain = "bench.lan"'
    cat "$WORK/records.toml"
  else
    echo 'forwarders = ["127.0.0.1:5399"]'
  fi
}

dnsmasq_args() {
  local a=(-k --port=5300 --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts
    --pid-file= --cache-size=10000 --local-ttl=300 --user=root --log-facility=/dev/null)
  if [ "$MODE" = local ]; then
    a+=(--addn-hosts="$WORK/hosts" --local=/bench.lan/)
  else
    a+=(--server=127.0.0.1#5399)
  fi
  echo "${a[@]}"
}

SERVER_PID=""
start_server() {
  case "$1" in
    athena)
      athena_bench_conf >"$WORK/athena.toml"
      ip netns exec "$NS" taskset -c "$SERVER_CPU" "$BIN" --log-format text -c "$WORK/athena.toml" >"$WORK/athena.log" 2>&1 &
      ;;
    unbound)
      if [ "$MODE" = local ]; then unbound_conf 5300 local "$WORK/unbound-data.conf" >"$WORK/unbound.conf"; else unbound_conf 5300 forward 5399 >"$WORK/unbound.conf"; fi
      ip netns exec "$NS" taskset -c "$SERVER_CPU" unbound -c "$WORK/unbound.conf" -d >"$WORK/unbound.log" 2>&1 &
      ;;
    dnsmasq)
      # shellcheck disable=SC2046
      ip netns exec "$NS" taskset -c "$SERVER_CPU" dnsmasq $(dnsmasq_args) >"$WORK/dnsmasq.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 1 100); do
    answers 5300 && return 0
    sleep 0.1
  done
  cat "$WORK/$1.log" >&2
  die "$1 did not answer host1.bench.lan"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  # the next server binds the same port
  for _ in $(seq 1 50); do
    answers 5300 || break
    sleep 0.1
  done
}

ticks() { # utime+stime+cutime+cstime of a PID, in clock ticks
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13 + $14 + $15}'
}
HZ=$(getconf CLK_TCK)

perf() { inns taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p 5300 -d "$WORK/names.txt" -T1 -c4 "$@" 2>&1; }
field() { grep "$1" | head -1 | awk -v n="$2" '{print $n}'; }

printf 'server\tmode\tstep\trepeat\tqps\tcompleted\tlost\tcpu_us_per_query\tp99_ms\n' >"$OUT"
echo "benches/dns.sh: MODE=$MODE NAMES=$NAMES PEAK_SECS=$PEAK_SECS RATE=$RATE RATE_SECS=$RATE_SECS REPEATS=$REPEATS; TSV: $OUT" >&2

for s in $SERVERS; do
  start_server "$s"
  # Warm-up: every name asked at least once (fills caches, faults in pages).
  perf -q100 -n 3 >/dev/null
  for r in $(seq 1 "$REPEATS"); do
    t0=$(ticks "$SERVER_PID")
    out=$(perf -q100 -l "$PEAK_SECS")
    t1=$(ticks "$SERVER_PID")
    qps=$(echo "$out" | field "Queries per second" 4)
    done_q=$(echo "$out" | field "Queries completed" 3)
    lost=$(echo "$out" | field "Queries lost" 3)
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v q="$done_q" 'BEGIN{printf "%.2f", (q > 0 ? d / hz * 1e6 / q : 0)}')
    printf '%s\t%s\tpeak\t%s\t%s\t%s\t%s\t%s\t-\n' "$s" "$MODE" "$r" "$qps" "$done_q" "$lost" "$cpu" >>"$OUT"
    echo "  $s peak #$r: $qps QPS, $cpu us CPU/query, lost $lost" >&2
  done
  for r in $(seq 1 "$REPEATS"); do
    t0=$(ticks "$SERVER_PID")
    perf -q100 -Q "$RATE" -l "$RATE_SECS" -v >"$WORK/rate.out"
    t1=$(ticks "$SERVER_PID")
    qps=$(field "Queries per second" 4 <"$WORK/rate.out")
    done_q=$(field "Queries completed" 3 <"$WORK/rate.out")
    lost=$(field "Queries lost" 3 <"$WORK/rate.out")
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v q="$done_q" 'BEGIN{printf "%.2f", (q > 0 ? d / hz * 1e6 / q : 0)}')
    p99=$(grep '^> ' "$WORK/rate.out" | awk '{print $NF}' | sort -g |
      awk '{a[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", a[i] * 1000}')
    printf '%s\t%s\trate%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$MODE" "$RATE" "$r" "$qps" "$done_q" "$lost" "$cpu" "$p99" >>"$OUT"
    echo "  $s at $RATE QPS #$r: $cpu us CPU/query, p99 $p99 ms, lost $lost" >&2
  done
  stop_server
done

# --- table --------------------------------------------------------------------------------
awk -F'\t' -v rate="rate$RATE" '
  function med(list,   n, arr, i, j, t) {
    n = split(list, arr, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] + 0 < arr[i] + 0) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
    return n ? arr[int((n + 1) / 2)] : 0
  }
  function span(list,   n, arr, i, lo, hi) {
    n = split(list, arr, " "); lo = hi = arr[1]
    for (i = 2; i <= n; i++) { if (arr[i] + 0 < lo + 0) lo = arr[i]; if (arr[i] + 0 > hi + 0) hi = arr[i] }
    return lo "-" hi
  }
  NR == 1 { next }
  { if (!($1 in seen)) { seen[$1] = 1; order[++ns] = $1 } }
  $3 == "peak" { pq[$1] = pq[$1] " " $5; pc[$1] = pc[$1] " " $8 }
  $3 == rate   { rc[$1] = rc[$1] " " $8; rp[$1] = rp[$1] " " $9; rl[$1] = rl[$1] " " $7 }
  END {
    ref = ("unbound" in seen) ? "unbound" : order[1]
    printf "\n%-9s %12s %14s %14s %18s %10s %10s %10s\n", "server", "peak QPS", "CPU/q peak", "CPU/q @" substr(rate, 5), "p99 @" substr(rate, 5) " (ms)", "QPS/ref", "CPU/ref", "CPU@/ref"
    for (k = 1; k <= ns; k++) {
      s = order[k]
      printf "%-9s %12.0f %12.2fus %12.2fus %18s %10.2f %10.2f %10.2f\n", s, med(pq[s]), med(pc[s]), med(rc[s]),
        med(rp[s]) " [" span(rp[s]) "]",
        med(pq[ref]) ? med(pq[s]) / med(pq[ref]) : 0,
        med(pc[ref]) ? med(pc[s]) / med(pc[ref]) : 0,
        med(rc[ref]) ? med(rc[s]) / med(rc[ref]) : 0
    }
    printf "(medians of the repeats; p99 [min-max]; ratios to %s; CPU = server CPU time per query)\n", ref
  }' "$OUT"

# CHECK=1: README's targets (medians of the repeats): more QPS than unbound at peak, less CPU
# per query than unbound at peak and at RATE, p99 under 1 ms at RATE.
if [ "${CHECK:-0}" = 1 ]; then
  awk -F'\t' -v rate="rate$RATE" '
    function med(list,   n, arr, i, j, t) {
      n = split(list, arr, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] + 0 < arr[i] + 0) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
      return n ? arr[int((n + 1) / 2)] : 0
    }
    function want(what, ok, detail) { printf "%s: %s (%s)\n", ok ? "check" : "CHECK FAILED", what, detail; if (!ok) bad = 1 }
    NR == 1 { next }
    $3 == "peak" { pq[$1] = pq[$1] " " $5; pc[$1] = pc[$1] " " $8 }
    $3 == rate   { rc[$1] = rc[$1] " " $8; rp[$1] = rp[$1] " " $9 }
    END {
      if (!("athena" in pq) || !("unbound" in pq)) { print "CHECK FAILED: needs athena and unbound in SERVERS"; exit 1 }
      want("peak QPS above unbound", med(pq["athena"]) > med(pq["unbound"]), med(pq["athena"]) " vs " med(pq["unbound"]))
      want("CPU per query at peak below unbound", med(pc["athena"]) < med(pc["unbound"]), med(pc["athena"]) " vs " med(pc["unbound"]) " us")
      want("CPU per query at " substr(rate, 5) " QPS below unbound", med(rc["athena"]) < med(rc["unbound"]), med(rc["athena"]) " vs " med(rc["unbound"]) " us")
      want("p99 at " substr(rate, 5) " QPS under 1 ms", med(rp["athena"]) < 1, med(rp["athena"]) " ms")
      exit bad
    }' "$OUT" || exit 1
fi
