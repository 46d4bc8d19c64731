#!/usr/bin/env bash
# Push-OS sync against rsync and casync, in one run, on the same data:
#   v1 = debootstrap --variant=minbase bookworm
#   v2 = v1 after `apt-get upgrade` with bookworm-security and bookworm-updates, plus a
#        few package installs (the security-update step)
# For the first full pull (empty -> v1) and the update (v1 -> v2) it measures bytes
# over the wire and wall time for:
#   satchel   image build on a local gateway, then client sync pull over mTLS
#             (bytes_received from --stats-json: HTTP bodies)
#   rsync     rsync -a --no-whole-file -z, local, "Total bytes received" + sent
#   casync    casync make into one store; the update's bytes are the new chunk files
# then chunking+hashing throughput (criterion, in memory).
# The root file systems are kept in $SATCHEL_BENCH_DIR (default /var/tmp/satchel-bench)
# and rebuilt when missing. Needs root and Debian's mirror.
# Usage: scripts/bench-sync.sh [--no-criterion]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
[ "$(id -u)" -eq 0 ] || { echo "bench-sync.sh needs root (debootstrap, chroot)" >&2; exit 2; }
CRITERION=yes; [ "${1:-}" = --no-criterion ] && CRITERION=no
bash scripts/setup.sh >/dev/null
need=()
for c in debootstrap rsync casync; do command -v "$c" >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet -p satchel
SATCHEL=$PWD/target/release/satchel
B=${SATCHEL_BENCH_DIR:-/var/tmp/satchel-bench}
MIRROR=${SATCHEL_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$B"

# --- the two versions. The debootstrap roots are built once (marked *.done); the
# measured trees are copies holding only files, directories and symlinks, without
# /dev, /proc, /sys, /run, apt's package cache and its package lists (as images ship).
if [ ! -f "$B/v1-raw.done" ]; then
  rm -rf "$B/v1-raw"
  debootstrap --variant=minbase bookworm "$B/v1-raw" "$MIRROR" >/dev/null
  touch "$B/v1-raw.done"
fi
if [ ! -f "$B/v2-raw.done" ]; then
  rm -rf "$B/v2-raw"
  cp -a "$B/v1-raw" "$B/v2-raw"
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://security.debian.org/debian-security bookworm-security main\n' \
    "$MIRROR" "$MIRROR" >"$B/v2-raw/etc/apt/sources.list"
  mount --bind /proc "$B/v2-raw/proc"; trap 'umount "$B/v2-raw/proc" 2>/dev/null || true' EXIT
  cp /etc/resolv.conf "$B/v2-raw/etc/resolv.conf"
  chroot "$B/v2-raw" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get -y -qq install --no-install-recommends less nano ca-certificates >/dev/null && apt-get clean'
  umount "$B/v2-raw/proc"; trap - EXIT
  touch "$B/v2-raw.done"
fi
for v in v1 v2; do
  rsync -a --delete --exclude=/dev/ --exclude=/proc/ --exclude=/sys/ --exclude=/run/ \
    --exclude=/var/cache/apt/ --exclude=/var/lib/apt/lists/ --delete-excluded "$B/$v-raw/" "$B/$v/"
done
size() { du -sb "$1" | cut -f1; }
echo "v1: $(size "$B/v1") bytes, v2: $(size "$B/v2") bytes"

TMP=$(mktemp -d "$B/run.XXXXXX")
GW_PID=
cleanup() { [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# --- satchel
GW=$TMP/gw
printf 'p, group:all, image, bench, subscribe, allow\n' >"$TMP/policy.csv"
"$SATCHEL" image build --data "$GW" --image bench --layer "base-os=$B/v1" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SATCHEL" gateway serve --data "$GW" --listen "127.0.0.1:$PORT" --policy "$TMP/policy.csv" 2>/dev/null &
GW_PID=$!
for _ in $(seq 100); do curl -fsS --cacert "$GW/ca.crt" "https://127.0.0.1:$PORT/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
# A device certificate for an enrolled device (the bench measures sync, not
# attestation, which needs a TPM: see scripts/demo.sh for the attested path).
cargo run --release --quiet -p gateway --example bench-device -- "$GW" bench-1 "$TMP/client"
pull() {
  "$SATCHEL" client sync pull --gateway "https://127.0.0.1:$PORT" --ca "$GW/ca.crt" \
    --data "$TMP/client" --image bench --into "$TMP/root" --stats-json
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
S1=$(pull)
"$SATCHEL" image build --data "$GW" --image bench --layer "base-os=$B/v2" >/dev/null
S2=$(pull)
diff -r --no-dereference "$B/v2" "$TMP/root/base-os" >/dev/null || { echo "satchel: the pulled tree differs from v2" >&2; exit 1; }

# --- rsync (-z, delta transfer forced even locally)
rsync_run() { # SRC DST -> "bytes seconds"
  local t0 t1 out; t0=$(now)
  out=$(rsync -a --no-whole-file -z --stats "$1/" "$2/")
  t1=$(now)
  local r s
  r=$(echo "$out" | awk -F': ' '/^Total bytes received/ { gsub(",", "", $2); print $2 }')
  s=$(echo "$out" | awk -F': ' '/^Total bytes sent/ { gsub(",", "", $2); print $2 }')
  echo "$((r + s)) $(secs "$t0" "$t1")"
}
read -r R1 R1T < <(rsync_run "$B/v1" "$TMP/rsync")
read -r R2 R2T < <(rsync_run "$B/v2" "$TMP/rsync")

# --- casync (one store; the update ships the chunks v1's store lacks, plus the index)
t0=$(now); casync make --store="$TMP/castore" "$TMP/v1.caidx" "$B/v1" >/dev/null; t1=$(now)
C1=$(( $(size "$TMP/castore") + $(stat -c %s "$TMP/v1.caidx") )); C1T=$(secs "$t0" "$t1")
find "$TMP/castore" -type f | sort >"$TMP/before"
t0=$(now); casync make --store="$TMP/castore" "$TMP/v2.caidx" "$B/v2" >/dev/null; t1=$(now)
find "$TMP/castore" -type f | sort >"$TMP/after"
C2=$(comm -13 "$TMP/before" "$TMP/after" | xargs -r stat -c %s | awk '{ s += $1 } END { print s + 0 }')
C2=$(( C2 + $(stat -c %s "$TMP/v2.caidx") )); C2T=$(secs "$t0" "$t1")

mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1e6 }'; }
echo
printf '%-8s %-26s %-26s\n' "" "first pull (empty -> v1)" "update (v1 -> v2)"
printf '%-8s %-26s %-26s\n' satchel "$(mb "$(echo "$S1" | field bytes_received)"), $(echo "$S1" | field seconds) s" \
  "$(mb "$(echo "$S2" | field bytes_received)"), $(echo "$S2" | field seconds) s ($(echo "$S2" | field delta_files) deltas)"
printf '%-8s %-26s %-26s\n' rsync "$(mb "$R1"), $R1T s" "$(mb "$R2"), $R2T s"
printf '%-8s %-26s %-26s\n' casync "$(mb "$C1"), $C1T s (make)" "$(mb "$C2"), $C2T s (make)"

if [ "$CRITERION" = yes ]; then
  echo
  echo "chunking + hashing (criterion, one core):"
  cargo bench --quiet -p sync --bench chunking -- --noplot 2>/dev/null | grep -E '^chunking/|time:|thrpt:' | sed 's/^ */  /'
fi
