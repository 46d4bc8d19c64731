#!/usr/bin/env bash
# Push-OS sync against rsync and casync, in one run, on the same data:
#   v1  = debootstrap --variant=minbase bookworm
#   v1u = v1 after `apt-get upgrade` with bookworm-security and bookworm-updates
#         (the security-update step)
#   v2  = v1u plus a few package installs
# For the first full pull (empty -> v1), the security update (v1 -> v1u) and the
# installs (v1u -> v2) it measures bytes over the wire and wall time for:
#   satchel   image build on a local gateway, then client sync pull over mTLS
#             (bytes_received + bytes_sent from --stats-json: HTTP bodies)
#   rsync     rsync -a --no-whole-file -z, local, with zlib and with zstd,
#             "Total bytes received" + sent
#   casync    casync make into one store; each step's bytes are the new chunk files
#   ostree    ostree commit of each version into an archive repository; each update's
#             bytes are its static delta (ostree static-delta generate --from --to)
# and the image build's time against `tar | zstd -19` (one thread) of the same tree.
# Every tool writes into a fresh journaled ext4 (a loop device). Then the first pull
# again, five alternating runs each, with rsync timed as it returns and until its
# writes are on disk; then chunking+hashing throughput (criterion, in memory).
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
for c in debootstrap rsync casync ostree; do command -v "$c" >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet -p satchel
SATCHEL=$PWD/target/release/satchel
B=${SATCHEL_BENCH_DIR:-/var/tmp/satchel-bench}
MIRROR=${SATCHEL_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$B"

# --- the three versions. The debootstrap roots are built once (marked *.done); the
# measured trees are copies holding only files, directories and symlinks, without
# /dev, /proc, /sys, /run, apt's package cache and its package lists (as images ship).
#   v1  = debootstrap --variant=minbase bookworm
#   v1u = v1 after `apt-get upgrade` with bookworm-security and bookworm-updates:
#         the security-update step (v1 -> v1u)
#   v2  = v1u plus a few package installs (less, nano, ca-certificates)
chroot_run() { # DIR COMMAND
  mount --bind /proc "$1/proc"; trap 'umount "$1/proc" 2>/dev/null || true' EXIT
  cp /etc/resolv.conf "$1/etc/resolv.conf"
  chroot "$1" sh -c "$2"
  umount "$1/proc"; trap - EXIT
}
# v1 and v1u come from scripts/debian-root.sh (cached in ~/.cache/satchel), as in
# the tests.
for v in v1 v1u; do
  if [ ! -f "$B/$v-raw.done" ]; then
    rm -rf "$B/$v-raw"
    flag=; [ "$v" = v1u ] && flag=--upgraded
    scripts/debian-root.sh $flag "$B/$v-raw"
    touch "$B/$v-raw.done"
  fi
done
if [ ! -f "$B/v2-raw.done" ]; then
  rm -rf "$B/v2-raw"
  cp -a "$B/v1u-raw" "$B/v2-raw"
  chroot_run "$B/v2-raw" 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq install --no-install-recommends less nano ca-certificates >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*'
  touch "$B/v2-raw.done"
fi
for v in v1 v1u v2; do
  rsync -a --delete --exclude=/dev/ --exclude=/proc/ --exclude=/sys/ --exclude=/run/ \
    --exclude=/var/cache/apt/ --exclude=/var/lib/apt/lists/ --delete-excluded "$B/$v-raw/" "$B/$v/"
done
size() { du -sb "$1" | cut -f1; }
echo "v1: $(size "$B/v1") bytes, v1u: $(size "$B/v1u") bytes, v2: $(size "$B/v2") bytes"

TMP=$(mktemp -d "$B/run.XXXXXX")
GW_PID=
cleanup() {
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null
  mountpoint -q "$TMP/dest" && umount "$TMP/dest"
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
# Every tool writes into a fresh ext4 file system with a journal, as a device's disk
# has (a loop device on a sparse file): the machine's own file system may lack the
# journal, and then ext4 scans for recently deleted inodes on every create, which
# makes whichever tool runs after a cleanup slow. Without loop devices, $TMP is used.
D=$TMP/dest
mkdir -p "$D"
truncate -s 4G "$TMP/dest.img"
if mkfs.ext4 -q -F "$TMP/dest.img" && mount -o loop "$TMP/dest.img" "$D" 2>/dev/null; then
  echo "destinations: a fresh journaled ext4 on a loop device"
else
  echo "destinations: $TMP (no loop device)"
fi
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
cp -a "$TMP/client" "$TMP/client0"
mv "$TMP/client" "$D/client"
pull() {
  "$SATCHEL" client sync pull --gateway "https://127.0.0.1:$PORT" --ca "$GW/ca.crt" \
    --data "$D/client" --image bench --into "$D/root" --stats-json
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
wire() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d['bytes_received'] + d['bytes_sent'])"; }
S=(); ST=(); SD=(); SS=()
step=0
for v in v1 v1u v2; do
  [ "$step" -gt 0 ] && "$SATCHEL" image build --data "$GW" --image bench --layer "base-os=$B/$v" >/dev/null
  out=$(pull)
  S[step]=$(echo "$out" | wire); ST[step]=$(echo "$out" | field seconds); SD[step]=$(echo "$out" | field delta_files)
  SS[step]=$(echo "$out" | field bytes_sent)
  diff -r --no-dereference "$B/$v" "$D/root/base-os" >/dev/null || { echo "satchel: the pulled tree differs from $v" >&2; exit 1; }
  step=$((step + 1))
done

# --- rsync (delta transfer forced even locally), with zlib (-z) and with zstd
rsync_run() { # SRC DST COMPRESS-CHOICE -> "bytes seconds"
  local t0 t1 out; t0=$(now)
  out=$(rsync -a --no-whole-file -z --compress-choice="$3" --stats "$1/" "$2/")
  t1=$(now)
  local r s
  r=$(echo "$out" | awk -F': ' '/^Total bytes received/ { gsub(",", "", $2); print $2 }')
  s=$(echo "$out" | awk -F': ' '/^Total bytes sent/ { gsub(",", "", $2); print $2 }')
  echo "$((r + s)) $(secs "$t0" "$t1")"
}
declare -A R RT
for c in zlib zstd; do
  step=0
  for v in v1 v1u v2; do
    read -r R[$c$step] RT[$c$step] < <(rsync_run "$B/$v" "$D/rsync-$c" "$c")
    step=$((step + 1))
  done
done

# --- casync (one store; each step ships the chunks the store lacked, plus the index)
C=(); CT=()
step=0
for v in v1 v1u v2; do
  { find "$TMP/castore" -type f 2>/dev/null || true; } | sort >"$TMP/before"
  t0=$(now); casync make --store="$TMP/castore" "$TMP/$v.caidx" "$B/$v" >/dev/null; t1=$(now)
  find "$TMP/castore" -type f | sort >"$TMP/after"
  n=$(comm -13 "$TMP/before" "$TMP/after" | xargs -r stat -c %s | awk '{ s += $1 } END { print s + 0 }')
  C[step]=$(( n + $(stat -c %s "$TMP/$v.caidx") )); CT[step]=$(secs "$t0" "$t1")
  step=$((step + 1))
done

# --- ostree (one archive repository; each update ships its static delta)
O=(); OT=()
ostree --repo="$TMP/ostree" init --mode=archive
step=0; prev=
for v in v1 v1u v2; do
  t0=$(now)
  rev=$(ostree --repo="$TMP/ostree" commit --branch=bench --tree=dir="$B/$v" -s "$v")
  if [ -n "$prev" ]; then
    ostree --repo="$TMP/ostree" static-delta generate --from="$prev" --to="$rev" >/dev/null
    O[step]=$(du -sb "$TMP/ostree/deltas" | cut -f1)
    rm -rf "$TMP/ostree/deltas"
  else
    O[step]=$(du -sb "$TMP/ostree/objects" | cut -f1)
  fi
  t1=$(now); OT[step]=$(secs "$t0" "$t1"); prev=$rev
  step=$((step + 1))
done

# --- the image build against tar | zstd -19 on one thread, same tree (v1)
t0=$(now); "$SATCHEL" image build --data "$TMP/gw-build" --image bench --layer "base-os=$B/v1" >/dev/null; t1=$(now)
BUILD=$(secs "$t0" "$t1")
t0=$(now); tar -C "$B/v1" -cf - . | zstd -19 -T1 -q -o "$TMP/v1.tar.zst"; t1=$(now)
TARZ=$(secs "$t0" "$t1")
TARZB=$(stat -c %s "$TMP/v1.tar.zst")
BUILDB=$(du -sb "$TMP/gw-build/chunks" | cut -f1)

# --- the first pull again, five times each, alternating, into fresh directories (the
# file system's state after one run weighs on the next, so neither always goes first:
# satchel leads odd runs, rsync even ones).
# A satchel pull returns once what it wrote is on disk (fdatasync, syncfs); rsync
# returns with its writes still in the page cache. So rsync is timed both ways: as it
# returns, and until a `sync` after it returns (the same durability). Each run starts
# after a `sync`, so nobody flushes what the run before left.
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
FS=(); FR=(); FRS=()
satchel_fp() { # RUN -> seconds, until it returns (its writes are on disk by then)
  local t0 t1; sync; t0=$(now)
  "$SATCHEL" client sync pull --gateway "https://127.0.0.1:$PORT" --ca "$GW/ca.crt" \
    --data "$D/fp-client$1" --image bench --into "$D/fp-root$1" >/dev/null
  t1=$(now); secs "$t0" "$t1"
}
rsync_fp() { # RUN -> "seconds-as-it-returns seconds-until-synced"
  local t0 t1 t2; sync; t0=$(now)
  rsync -a --no-whole-file -z --compress-choice=zstd "$B/v2/" "$D/fp-rs$1/"
  t1=$(now); sync; t2=$(now)
  echo "$(secs "$t0" "$t1") $(secs "$t0" "$t2")"
}
for r in 1 2 3 4 5; do
  cp -a "$TMP/client0" "$D/fp-client$r"
  # Odd runs satchel first, even runs rsync first: whichever goes first after the
  # steps above tends to be slower.
  if [ $((r % 2)) -eq 1 ]; then
    FS+=("$(satchel_fp "$r")"); read -r a b < <(rsync_fp "$r")
  else
    read -r a b < <(rsync_fp "$r"); FS+=("$(satchel_fp "$r")")
  fi
  FR+=("$a"); FRS+=("$b")
  rm -rf "$D/fp-client$r" "$D/fp-root$r" "$D/fp-rs$r"
done

mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1e6 }'; }
echo
echo "bytes over the wire (both directions) and wall time:"
printf '%-12s %-24s %-32s %-24s\n' "" "first pull (-> v1)" "security update (v1 -> v1u)" "installs (v1u -> v2)"
printf '%-12s %-24s %-32s %-24s\n' satchel "$(mb "${S[0]}"), ${ST[0]} s" \
  "$(mb "${S[1]}"), ${ST[1]} s (${SD[1]} deltas)" "$(mb "${S[2]}"), ${ST[2]} s (${SD[2]} deltas)"
for c in zlib zstd; do
  printf '%-12s %-24s %-32s %-24s\n' "rsync $c" "$(mb "${R[${c}0]}"), ${RT[${c}0]} s" \
    "$(mb "${R[${c}1]}"), ${RT[${c}1]} s" "$(mb "${R[${c}2]}"), ${RT[${c}2]} s"
done
printf '%-12s %-24s %-32s %-24s\n' casync "$(mb "${C[0]}"), ${CT[0]} s (make)" \
  "$(mb "${C[1]}"), ${CT[1]} s (make)" "$(mb "${C[2]}"), ${CT[2]} s (make)"
printf '%-12s %-24s %-32s %-24s\n' ostree "$(mb "${O[0]}"), ${OT[0]} s (commit)" \
  "$(mb "${O[1]}"), ${OT[1]} s (static delta)" "$(mb "${O[2]}"), ${OT[2]} s (static delta)"
echo "image build of v1: satchel ${BUILD} s ($(mb "$BUILDB") stored); tar | zstd -19 -T1 ${TARZ} s ($(mb "$TARZB"));" \
  "ratio $(awk -v a="$BUILD" -v b="$TARZ" 'BEGIN { printf "%.2f", a / b }')x"
echo "satchel's security update: $(mb "${SS[1]}") of it sent (requests), the rest received"
echo "security update bytes, satchel / ostree static delta: $(awk -v a="${S[1]}" -v b="${O[1]}" 'BEGIN { printf "%.2f", a / b }')x;" \
  "satchel / casync: $(awk -v a="${S[1]}" -v b="${C[1]}" 'BEGIN { printf "%.2f", a / b }')x"
echo "first pull of v2 (whole commands, 5 alternating runs): satchel ${FS[*]} s;"
echo "  rsync zstd ${FR[*]} s as it returns, ${FRS[*]} s until its writes are on disk"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "ratios (satchel / rsync zstd): first pull time (medians) $(ratio "$(median "${FS[@]}")" "$(median "${FR[@]}")")x" \
  "against rsync's return, $(ratio "$(median "${FS[@]}")" "$(median "${FRS[@]}")")x against its writes on disk,"
echo "ratios (satchel / rsync zstd): the table's first pull (one run each; satchel's the first write to the new file system) $(awk -v a="${ST[0]}" -v b="${RT[zstd0]}" 'BEGIN { printf "%.2f", a / b }')x," \
  "security update bytes $(awk -v a="${S[1]}" -v b="${R[zstd1]}" 'BEGIN { printf "%.2f", a / b }')x"

if [ "$CRITERION" = yes ]; then
  echo
  echo "chunking + hashing (criterion, one core):"
  cargo bench --quiet -p sync --bench chunking -- --noplot 2>/dev/null | grep -E '^chunking/|time:|thrpt:' | sed 's/^ */  /'
fi
