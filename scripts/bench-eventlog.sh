#!/usr/bin/env bash
# Times `satchel eventlog replay` against Debian's `tpm2_eventlog` (tpm2-tools)
# on the same real firmware logs, as whole processes, in one run, with
# hyperfine (no shell in between). Prints per-log means and ratios, then the
# per-log cost when one satchel process replays all logs at once.
# Usage: scripts/bench-eventlog.sh [RUNS]    (default 100 runs per command)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
RUNS=${1:-100}
FIX=${SATCHEL_FIXTURES:-fixtures/eventlogs}
bash scripts/setup.sh >/dev/null
if ! command -v hyperfine >/dev/null; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq hyperfine >/dev/null
fi
cargo build --release --quiet -p satchel
SATCHEL=$PWD/target/release/satchel
export TSS2_LOG=all+none
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

logs=()
for f in "$FIX"/*.bin; do
  case "$(basename "$f")" in ima-*|malformed-*) continue;; esac
  logs+=("$f")
done

# mean_ms CSV ROW: the mean (ms) of row ROW (1-based after the header).
mean_ms() { awk -F, -v r="$2" 'NR == r + 1 { printf "%.3f", $2 * 1000 }' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / (b > 0 ? b : 1) }'; }

printf '%-46s %10s %10s %7s\n' "log (mean of $RUNS runs)" "satchel" "tpm2_evlog" "ratio"
sum_s=0; sum_t=0
for f in "${logs[@]}"; do
  # tpm2_eventlog 5.4 crashes on some logs: -i counts those runs anyway.
  hyperfine -N -i --warmup 3 --runs "$RUNS" --style none --export-csv "$TMP/r.csv" \
    "$SATCHEL eventlog replay $f" "tpm2_eventlog --eventlog-version=2 $f" >/dev/null 2>&1
  s=$(mean_ms "$TMP/r.csv" 1); t=$(mean_ms "$TMP/r.csv" 2)
  sum_s=$(awk -v a="$sum_s" -v b="$s" 'BEGIN { print a + b }')
  sum_t=$(awk -v a="$sum_t" -v b="$t" 'BEGIN { print a + b }')
  printf '%-46s %8sms %8sms %6sx\n' "$(basename "$f")" "$s" "$t" "$(ratio "$t" "$s")"
done
printf '%-46s %8sms %8sms %6sx\n' "sum over ${#logs[@]} logs" "$sum_s" "$sum_t" "$(ratio "$sum_t" "$sum_s")"

hyperfine -N --warmup 3 --runs "$RUNS" --style none --export-csv "$TMP/b.csv" \
  "$SATCHEL eventlog replay ${logs[*]}" >/dev/null 2>&1
batch=$(mean_ms "$TMP/b.csv" 1)
per=$(awk -v a="$batch" -v n="${#logs[@]}" 'BEGIN { printf "%.3f", a / n }')
printf '\none satchel process replaying all %d logs: %sms, %sms per log; tpm2_eventlog %sx slower per log\n' \
  "${#logs[@]}" "$batch" "$per" "$(ratio "$sum_t" "$(awk -v a="$per" -v n="${#logs[@]}" 'BEGIN { print a * n }')")"
