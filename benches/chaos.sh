#!/usr/bin/env bash
# benches/chaos.sh — long runs of the chaos suite (tests/chaos.rs): real udhcpc clients with
# 20 s leases, a DNS prober on the VIP (a query every 20 ms, a reply later than 100 ms counts
# as failed) and a DISCOVER prober, while a seeded random schedule of faults hits the HA pair
# (kill -9, SIGSTOP, peer link blocked, port down, SIGTERM, API handoff, and issue #18's
# split-brain faults: link blocked + hang + resume, short port flaps of the ACTIVE node, and
# the hang over a full cut; --split 1 leaves out the cut, --split 0 all three, as the suite
# was before issue #18). Prints, per fault kind and summed over the seeds:
# faults injected, DNS queries failed, invariant violations.
#
#   sudo benches/chaos.sh --minutes N --seed S [--seed S2 ...] [--split 0|1|2] [--clients 4]
#                         [--out DIR]
#
# The test binary is built once (debug, like the tests) and run directly, so editing the
# sources during a long run changes nothing. One run per seed, each N minutes of faults (plus
# ~30 s of set-up and final checks); `--seed random` draws one (the log names it). A seed
# replays its schedule (`ATHENA_CHAOS_SEED=S cargo test --test chaos`); timings still vary
# with the machine's load, so run it on a machine doing nothing else. Each run's log and
# table stay in DIR (default: a fresh temporary directory, printed). Exit 1 when any run
# broke an invariant (its log has the violations and the timeline of faults).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MINUTES=10
SEEDS=()
SPLIT=2
CLIENTS=4
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --seed) SEEDS+=("$2"); shift 2 ;;
    --split) if [[ ${2:-} =~ ^[0-2]$ ]]; then SPLIT=$2; shift 2; else SPLIT=1; shift; fi ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "chaos.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces); run it with sudo"
[[ $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--minutes wants a number, got $MINUTES"
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(random)
for t in ip nft udhcpc cargo; do command -v "$t" >/dev/null || die "missing $t (see tests/run.sh)"; done
OUT=${OUT:-$(mktemp -d /tmp/athena-chaos.XXXXXX)}
mkdir -p "$OUT"
SECS=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
TEST=chaos_schedule_keeps_every_client_address_and_one_server

cd "$ROOT"
BIN=$(cargo test --locked --test chaos --no-run --message-format=json 2>/dev/null |
  grep '"kind":\["test"\],[^}]*"name":"chaos"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$BIN" ] || die "build failed: cargo test --locked --test chaos --no-run"

echo "chaos.sh: ${#SEEDS[@]} run(s) of $MINUTES min, ATHENA_CHAOS_SPLIT=$SPLIT, logs in $OUT"
status=0
reports=()
i=0
for seed in "${SEEDS[@]}"; do
  i=$((i + 1))
  log="$OUT/run$i-seed-$seed.log"
  report="$OUT/run$i-seed-$seed.txt"
  rm -f "$report"
  start=$(date +%s)
  ATHENA_CHAOS_SEED=$seed ATHENA_CHAOS_SECS=$SECS ATHENA_CHAOS_SPLIT=$SPLIT \
    ATHENA_CHAOS_CLIENTS=$CLIENTS ATHENA_CHAOS_REPORT=$report \
    "$BIN" --exact "$TEST" --nocapture >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  # A random seed is drawn by the test; its first line names it.
  shown=$(sed -n 's/^chaos: seed \([0-9]*\) .*/\1/p' "$log" | head -1)
  if [ ! -s "$report" ]; then
    echo "seed ${shown:-$seed}: no figures (the run stopped early, rc=$rc); see $log"
    status=1
    continue
  fi
  reports+=("$report")
  head -1 "$report" | sed "s/^/  ${took}s: /"
  [ "$rc" = 0 ] || { status=1; grep -m5 'VIOLATION' "$log" | sed 's/^/    /'; }
done

[ ${#reports[@]} -gt 0 ] || exit 1
echo
awk '
  FNR == 1 { next }                              # the run summary line
  $1 == "kind" { next }
  NF == 4 { inj[$1] += $2; dns[$1] += $3; vio[$1] += $4; if (!($1 in seen)) { seen[$1] = 1; order[n++] = $1 } }
  END {
    printf "%-12s %9s %12s %11s\n", "fault", "injected", "dns_failed", "violations"
    for (i = 0; i < n; i++) { k = order[i]; ti += inj[k]; td += dns[k]; tv += vio[k]
      printf "%-12s %9d %12d %11d\n", k, inj[k], dns[k], vio[k] }
    printf "%-12s %9d %12d %11d\n", "total", ti, td, tv
  }' "${reports[@]}"
echo "(DNS: one query every 20 ms, so a failed query is ~20 ms of outage; violations are"
echo " counted against the fault injected last before them)"
exit $status
