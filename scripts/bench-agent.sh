#!/usr/bin/env bash
# What `satchel agent` adds to each exec, in one run (root; two dedicated
# tmpfs mounts, never the machine's own file systems). The agent marks one
# mount (A) and not the other (B); the load tool (satchel/examples/
# exec-latency.rs) execs a program on A and its twin on B alternately, so
# the drift of a busy machine cancels, and reports the median of the
# per-pair differences:
#   - kernel hit: the same allowed root-owned binary again and again (after
#     the first exec the kernel answers from an ignore mark);
#   - agent hit: the same, group-writable (the kernel must ask every time;
#     the agent answers from its hash cache);
#   - cache miss: a fresh copy (a new inode) each time, so the agent hashes
#     the whole file before it answers.
# The control run does the same with no agent: A and B should then differ
# by nothing but noise. Also printed: what reached the agent (a hit the
# kernel answers from an ignore mark never does) and its time per decision.
# With PIN=CPU the agent and the load tool share that one CPU (taskset), so
# a decision costs a local context switch, not a wake-up across CPUs.
# With MODE=closed the agent runs in closed mode (--root on mount A): every
# open on A by a program goes to the agent too, so each exec costs one more
# permission event (the exec's own open); the kernel settings it applies are
# put back afterwards, and --allow-open-system lets it run where one cannot
# be set.
# Usage: [PIN=CPU] [MODE=mount|closed] scripts/bench-agent.sh [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
PAIRS=${1:-3000}
TASKSET=; [ -n "${PIN:-}" ] && TASKSET="taskset -c $PIN"
MODE=${MODE:-mount}
MEMFD_WAS=$(cat /proc/sys/vm/memfd_noexec 2>/dev/null || true)
[ "$(id -u)" -eq 0 ] || { echo "bench-agent: run as root (fanotify permission events)" >&2; exit 2; }
bash scripts/setup.sh >/dev/null
cargo build --release --quiet -p satchel --bin satchel --example exec-latency
SATCHEL=$PWD/target/release/satchel
LAT=$PWD/target/release/examples/exec-latency
TMP=$(mktemp -d)
AGENT=
cleanup() {
  set +e
  if [ -n "$AGENT" ]; then kill "$AGENT" 2>/dev/null; wait "$AGENT" 2>/dev/null; fi
  [ -n "$MEMFD_WAS" ] && echo "$MEMFD_WAS" > /proc/sys/vm/memfd_noexec
  umount -l "$TMP/a" 2>/dev/null
  umount -l "$TMP/b" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$TMP/a" "$TMP/b" "$TMP/state"
mount -t tmpfs -o size=512m tmpfs "$TMP/a"
mount -t tmpfs -o size=512m tmpfs "$TMP/b"
BIN=/bin/true
cp "$BIN" "$TMP/a/hit"; cp "$BIN" "$TMP/b/hit"
cp "$BIN" "$TMP/a/hit-gw"; cp "$BIN" "$TMP/b/hit-gw"; chmod 0775 "$TMP/a/hit-gw" "$TMP/b/hit-gw"
"$SATCHEL" keygen --out "$TMP/org.key" >/dev/null
echo "p, device:bench, app, sha256:$(sha256sum "$BIN" | cut -d' ' -f1), exec, allow" > "$TMP/policy.csv"
"$SATCHEL" policy bundle --policy "$TMP/policy.csv" --sign-key "$TMP/org.key" --version 1 --out "$TMP/policy.bundle" >/dev/null

copies() { # fresh copies on both mounts: new inodes, never seen
  rm -rf "$TMP/a/miss" "$TMP/b/miss"; mkdir "$TMP/a/miss" "$TMP/b/miss"
  for i in $(seq 1 "$PAIRS"); do cp "$BIN" "$TMP/a/miss/$i"; cp "$BIN" "$TMP/b/miss/$i"; done
}
list() { for i in $(seq 1 "$PAIRS"); do echo "$TMP/$1/miss/$i"; done; }
field() { sed -E "s/.*\"$1\": (-?[0-9.]+).*/\1/"; }

start_agent() {
  local mark=(--mount "$TMP/a")
  [ "$MODE" = closed ] && mark=(--root "$TMP/a" --allow-open-system)
  $TASKSET "$SATCHEL" agent --bundle "$TMP/policy.bundle" --bundle-key "$TMP/org.key.pub" \
    --subject device:bench "${mark[@]}" --state-dir "$TMP/state" 2>"$TMP/agent.log" &
  AGENT=$!
  for _ in $(seq 1 200); do
    [ -f "$TMP/state/status.json" ] && grep -q "\"pid\": $AGENT," "$TMP/state/status.json" && return
    sleep 0.05
  done
  cat "$TMP/agent.log" >&2; exit 1
}
stop_agent() {
  kill "$AGENT" 2>/dev/null || true; wait "$AGENT" || true; AGENT=
  { "$SATCHEL" agent status --state-dir "$TMP/state" --json 2>/dev/null || true; } \
    | sed -E 's/.*"events":([0-9]+).*"decide_ns_total":([0-9]+).*"kernel_cached":([0-9]+).*/\1 \2 \3/' \
    | awk '{printf "  the agent saw %d exec events (%.1f us each from read to answer); %d files left to the kernel\n", $1, $2 / $1 / 1000, $3}'
}

run_case() { # label: prints a line per case
  local hit gw miss
  hit=$($TASKSET "$LAT" "$PAIRS" "$TMP/a/hit" -- "$TMP/b/hit")
  gw=$($TASKSET "$LAT" "$PAIRS" "$TMP/a/hit-gw" -- "$TMP/b/hit-gw")
  copies
  # shellcheck disable=SC2046
  miss=$($TASKSET "$LAT" "$PAIRS" $(list a) -- $(list b))
  printf '%-10s kernel hit: marked %7.1f us  unmarked %7.1f us  added %6.1f us per exec\n' "$1" \
    "$(echo "$hit" | field a_median_us)" "$(echo "$hit" | field b_median_us)" "$(echo "$hit" | field added_median_us)"
  printf '%-10s agent hit:  marked %7.1f us  unmarked %7.1f us  added %6.1f us per exec\n' "$1" \
    "$(echo "$gw" | field a_median_us)" "$(echo "$gw" | field b_median_us)" "$(echo "$gw" | field added_median_us)"
  printf '%-10s cache miss: marked %7.1f us  unmarked %7.1f us  added %6.1f us per exec\n' "$1" \
    "$(echo "$miss" | field a_median_us)" "$(echo "$miss" | field b_median_us)" "$(echo "$miss" | field added_median_us)"
}

echo "exec latency: $PAIRS pairs of execs of $BIN copies per case (medians), agent in $MODE mode${PIN:+, agent and load on CPU $PIN}"
run_case "no agent"
start_agent
run_case "agent"
stop_agent
