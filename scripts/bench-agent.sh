#!/usr/bin/env bash
# What `satchel agent` adds to each exec, in one run (root; a dedicated
# tmpfs mount, never the machine's own file systems):
#   - cache hit: the same allowed binary exec'd again and again (hashed once);
#   - cache miss: a different copy each time (a new inode: fstat, hash the
#     whole file, decide).
# Each case runs ROUNDS times without the agent and with it (lockdown,
# release build), alternating, so drift hits both sides; the figure is the
# median of the per-round median differences. Two placements:
#   - shared core: the agent and the workload pinned to CPU 0 (taskset), so a
#     decision costs a local context switch;
#   - free: the scheduler places both (on a VM, waking a thread idle on the
#     other vCPU costs an inter-processor interrupt each way).
# Also printed: the agent's own time per decision (event read to answer
# written), from `satchel agent status`.
# Usage: scripts/bench-agent.sh [RUNS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
RUNS=${1:-3000}
ROUNDS=${2:-3}
[ "$(id -u)" -eq 0 ] || { echo "bench-agent: run as root (fanotify permission events)" >&2; exit 2; }
bash scripts/setup.sh >/dev/null
cargo build --release --quiet -p satchel --bin satchel --example exec-latency
SATCHEL=$PWD/target/release/satchel
LAT=$PWD/target/release/examples/exec-latency
TMP=$(mktemp -d)
AGENT=
cleanup() {
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  umount -l "$TMP/mnt" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
mkdir -p "$TMP/mnt" "$TMP/state"
mount -t tmpfs -o size=512m tmpfs "$TMP/mnt"
BIN=/bin/true
cp "$BIN" "$TMP/mnt/hit"
"$SATCHEL" keygen --out "$TMP/org.key" >/dev/null
echo "p, device:bench, app, sha256:$(sha256sum "$BIN" | cut -d' ' -f1), exec, allow" > "$TMP/policy.csv"
"$SATCHEL" policy bundle --policy "$TMP/policy.csv" --sign-key "$TMP/org.key" --version 1 --out "$TMP/policy.bundle" >/dev/null

copies() { # fresh copies: new inodes, never seen by the agent
  rm -rf "$TMP/mnt/miss"; mkdir "$TMP/mnt/miss"
  for i in $(seq 1 "$RUNS"); do cp "$BIN" "$TMP/mnt/miss/$i"; echo "$TMP/mnt/miss/$i"; done
}
median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { sed -E "s/.*\"$1\": ([0-9.]+).*/\1/"; }

start_agent() {
  $PIN "$SATCHEL" agent --bundle "$TMP/policy.bundle" --bundle-key "$TMP/org.key.pub" \
    --subject device:bench --mount "$TMP/mnt" --state-dir "$TMP/state" 2>"$TMP/agent.log" &
  AGENT=$!
  for _ in $(seq 1 200); do
    [ -f "$TMP/state/status.json" ] && grep -q "\"pid\": $AGENT," "$TMP/state/status.json" && return
    sleep 0.05
  done
  cat "$TMP/agent.log" >&2; exit 1
}
stop_agent() {
  kill "$AGENT"; wait "$AGENT" || true; AGENT=
  INAGENT="$INAGENT $({ "$SATCHEL" agent status --state-dir "$TMP/state" --json 2>/dev/null || true; } \
    | sed -E 's/.*"events":([0-9]+).*"decide_ns_total":([0-9]+).*/\2 \1/' | awk '{printf "%.1f", $1 / $2 / 1000}')"
}

for placement in shared free; do
PIN=; [ "$placement" = shared ] && PIN="taskset -c 0"
INAGENT=
echo "exec latency ($placement core), $RUNS execs of $BIN copies per case, $ROUNDS rounds (median us per exec)"
declare -A R
for r in $(seq 1 "$ROUNDS"); do
  for side in off on; do
    [ "$side" = on ] && start_agent
    hit=$($PIN "$LAT" "$RUNS" "$TMP/mnt/hit" | field median_us)
    # shellcheck disable=SC2046
    miss=$($PIN "$LAT" "$RUNS" $(copies) | field median_us)
    [ "$side" = on ] && stop_agent
    R[$side-hit-$r]=$hit; R[$side-miss-$r]=$miss
    printf '  round %d, agent %-3s: hit %8.1f us   miss %8.1f us\n' "$r" "$side" "$hit" "$miss"
  done
done
for c in hit miss; do
  diffs=""; offs=""; ons=""
  for r in $(seq 1 "$ROUNDS"); do
    diffs="$diffs $(awk -v a="${R[on-$c-$r]}" -v b="${R[off-$c-$r]}" 'BEGIN {print a - b}')"
    offs="$offs ${R[off-$c-$r]}"; ons="$ons ${R[on-$c-$r]}"
  done
  printf '%-8s %-10s without %8.1f us  with %8.1f us  added %7.1f us per exec (ratio %.3f)\n' \
    "$placement" "cache $c" "$(echo $offs | median)" "$(echo $ons | median)" "$(echo $diffs | median)" \
    "$(awk -v a="$(echo $ons | median)" -v b="$(echo $offs | median)" 'BEGIN {print a / b}')"
done
echo "$placement  in the agent per decision (hits and misses together), per round: $INAGENT us"
done
