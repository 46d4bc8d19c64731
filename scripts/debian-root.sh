#!/usr/bin/env bash
# Make a minimal Debian 12 root (debootstrap --variant=minbase) at DEST, as
# root. The first run builds it from the mirror and keeps a tarball (xattrs,
# device nodes and hard links included) in the cache; later runs unpack it.
#
#   scripts/debian-root.sh [--guest] [--upgraded] DEST
#
# --guest makes Satchel's example guest (docs/guest.md): the root also holds
# Debian's cloud kernel and its initramfs in /boot, systemd's EFI stub (the guest boots
# them as one unified kernel image), tpm2-tools and iproute2, and gets
# examples/guest/satchel-guest-init as its init (/etc/satchel/guest-cmdline).
#
# --upgraded makes the same root after a security update: `apt-get upgrade`
# with bookworm-updates and bookworm-security added to its sources (real newer
# package versions: libc6, libssl3, udev, ...; the triggers run, so the
# initramfs is made again). Made from the cached root, and cached beside it.
#
# SATCHEL_CACHE names the cache directory [~/.cache/satchel];
# SATCHEL_DEBIAN_MIRROR the mirror [http://deb.debian.org/debian].
set -euo pipefail
variant=minbase
include=
if [ "${1:-}" = --guest ]; then
  variant=guest
  include=--include=linux-image-cloud-amd64,systemd-boot-efi,tpm2-tools,iproute2
  shift
fi
upgraded=
if [ "${1:-}" = --upgraded ]; then
  upgraded=yes
  shift
fi
dest=${1:?usage: debian-root.sh [--guest] [--upgraded] DEST}
cache=${SATCHEL_CACHE:-${HOME:-/root}/.cache/satchel}
mirror=${SATCHEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The package list (and how the root is made) is in the name: a change is a
# new cache entry.
tarball=$cache/bookworm-$variant-$(printf '%s no-debs' "$include" | sha256sum | cut -c1-8).tar
mkdir -p "$cache" "$dest"
if [ -n "$(ls -A "$dest")" ]; then
  echo "debian-root.sh: $dest is not empty" >&2
  exit 2
fi
# One builder at a time; the others wait and unpack what it made.
exec 9>"$cache/bookworm-$variant.lock"
flock 9
if [ ! -s "$tarball" ]; then
  work=$(mktemp -d "$cache/.build-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase $include bookworm "$work/root" "$mirror" >"$work/log" 2>&1 \
    || { tail -n 20 "$work/log" >&2; exit 1; }
  # The packages debootstrap fetched are not part of the system.
  rm -f "$work/root"/var/cache/apt/archives/*.deb
  tar --xattrs --xattrs-include='*' --acls --numeric-owner -C "$work/root" -cf "$work/root.tar" .
  mv "$work/root.tar" "$tarball"
  rm -rf "$work"
  trap - EXIT
fi
if [ -n "$upgraded" ]; then
  # Made again whenever the root it upgrades was.
  base=$tarball
  tarball=${base%.tar}-upgraded.tar
  if [ ! "$tarball" -nt "$base" ]; then
    work=$(mktemp -d "$cache/.build-XXXXXX")
    trap 'umount -l "$work/root/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
    mkdir "$work/root"
    tar --xattrs --xattrs-include='*' --acls --numeric-owner -C "$work/root" -xpf "$base"
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://security.debian.org/debian-security bookworm-security main\n' \
      "$mirror" "$mirror" >"$work/root/etc/apt/sources.list"
    cp /etc/resolv.conf "$work/root/etc/resolv.conf"
    mount --bind /proc "$work/root/proc"
    chroot "$work/root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade && apt-get clean && rm -rf /var/lib/apt/lists/*' \
      >"$work/log" 2>&1 || { tail -n 20 "$work/log" >&2; exit 1; }
    umount "$work/root/proc"
    chroot "$work/root" dpkg-query -W -f '${Package} ${Version}\n' >"$work/after"
    tar -xOf "$base" ./var/lib/dpkg/status >"$work/status.before"
    n=$(awk '/^Package: /{p=$2} /^Version: /{print p" "$2}' "$work/status.before" | sort | comm -13 - <(sort "$work/after") | wc -l)
    if [ "$n" -eq 0 ]; then
      echo "debian-root.sh: apt-get upgrade found nothing newer than the root; no security update to make" >&2
      exit 1
    fi
    echo "debian-root.sh: the security update brought $n newer package versions" >&2
    tar --xattrs --xattrs-include='*' --acls --numeric-owner -C "$work/root" -cf "$work/root.tar" .
    mv "$work/root.tar" "$tarball"
    umount -l "$work/root/proc" 2>/dev/null || true
    rm -rf "$work"
    trap - EXIT
  fi
fi
flock -u 9
tar --xattrs --xattrs-include='*' --acls --numeric-owner -C "$dest" -xpf "$tarball"
if [ "$variant" = guest ]; then
  install -m 0755 "$(dirname "$0")/../examples/guest/satchel-guest-init" "$dest/usr/local/sbin/satchel-guest-init"
  mkdir -p "$dest/etc/satchel"
  echo "init=/usr/local/sbin/satchel-guest-init" > "$dest/etc/satchel/guest-cmdline"
fi
