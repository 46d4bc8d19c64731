#!/usr/bin/env bash
# The guest's boot time, from the command to the guest's "ready", and what of it is
# firmware, kernel and userspace, beside OVMF alone reaching its shell in the same run.
#
#   satchel   `satchel guest start` on the Debian 12 guest (scripts/debian-root.sh --guest):
#             disks and vTPM made or checked, qemu + OVMF, the kernel and initramfs, the
#             guest's quote verified, ready. Timings from --json. First run (fresh state:
#             vTPM provisioned, LUKS disks made) and N warm runs (disks kept).
#   ovmf      qemu + OVMF with no disk until its "Shell>" prompt: the firmware's floor.
#
# Usage: scripts/bench-guest.sh [RUNS] [--accel tcg|kvm|auto]   (RUNS default 3; root)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
[ "$(id -u)" -eq 0 ] || { echo "bench-guest.sh needs root (debootstrap, swtpm)" >&2; exit 2; }
RUNS=${1:-3}
ACCEL=tcg; [ "${2:-}" = --accel ] && ACCEL=${3:?--accel needs a value}
bash scripts/setup.sh >/dev/null
cargo build --release --quiet -p satchel
SATCHEL=$PWD/target/release/satchel
W=$(mktemp -d /var/tmp/satchel-bench-guest.XXXXXX)
chmod 711 "$W"  # the read-back of the user disk runs as an unprivileged user: it passes through
trap 'rm -rf "$W"' EXIT
scripts/debian-root.sh --guest "$W/root" >/dev/null
"$SATCHEL" keygen --out "$W/org.key" >/dev/null
"$SATCHEL" guest reference --root "$W/root" --state "$W/ref" --sign-key "$W/org.key" \
  --out "$W/guest-ref.json" --accel "$ACCEL" -q >/dev/null
head -c 32 /dev/urandom > "$W/disk.key"
mkdir -p "$W/home/pupil"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.2f\", $* }"; }
boot() {  # one run; prints "total assembled kernel hello ready"
  local t0 t1 j
  t0=$(now)
  j=$("$SATCHEL" guest start --root "$W/root" --user "$W/home" --state "$W/guest" \
      --reference "$W/guest-ref.json" --reference-key "$W/org.key.pub" \
      --key-file "$W/disk.key" --accel "$ACCEL" --json -q)
  t1=$(now)
  python3 -c 'import json,sys; t=json.loads(sys.argv[1])["timings"]; print(float(sys.argv[3])-float(sys.argv[2]), t["assembled"], t["kernel"], t["hello"], t["ready"])' "$j" "$t0" "$t1"
}
ovmf_shell() {  # seconds until OVMF's shell prompt
  local vars=$W/ovmf-vars.fd con=$W/ovmf-console t0 pid
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$vars"; : > "$con"
  t0=$(now)
  qemu-system-x86_64 -machine q35 -accel "$ACCEL" -m 1024 -display none -vga none \
    -nodefaults -net none -monitor none -serial "file:$con" \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file="$vars" </dev/null 2>/dev/null &
  pid=$!
  until grep -a -q "Shell>" "$con"; do sleep 0.05; done
  calc "$(now) - $t0"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "accelerator: $ACCEL; guest: Debian 12, $(basename "$(readlink "$W/root/vmlinuz")"); $(nproc) cores"
printf '%-14s %8s %10s %9s %15s %16s\n' run total disks+vTPM firmware kernel+initrd proof+userspace
first=$(boot)
read -r total asm k h r <<<"$first"
printf '%-14s %8.1f %10.1f %9.1f %15.1f %16.1f\n' "first (cold)" "$total" "$asm" "$(calc "$k - $asm")" "$(calc "$h - $k")" "$(calc "$r - $h")"
sum=0
for i in $(seq 1 "$RUNS"); do
  read -r total asm k h r <<<"$(boot)"
  sum=$(calc "$sum + $r")
  printf '%-14s %8.1f %10.1f %9.1f %15.1f %16.1f\n' "warm $i" "$total" "$asm" "$(calc "$k - $asm")" "$(calc "$h - $k")" "$(calc "$r - $h")"
done
osum=0
for i in $(seq 1 "$RUNS"); do osum=$(calc "$osum + $(ovmf_shell)"); done
warm=$(calc "$sum / $RUNS"); shell=$(calc "$osum / $RUNS")
echo "mean of $RUNS warm runs: command to ready ${warm} s; OVMF alone to its shell ${shell} s; ratio $(calc "$warm / $shell")"
