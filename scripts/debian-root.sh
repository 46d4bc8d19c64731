#!/usr/bin/env bash
# Make a minimal Debian 12 root (debootstrap --variant=minbase) at DEST, as
# root. The first run builds it from the mirror and keeps a tarball (xattrs,
# device nodes and hard links included) in the cache; later runs unpack it.
#
#   scripts/debian-root.sh [--guest] DEST
#
# --guest makes Satchel's example guest (docs/guest.md): the root also holds
# Debian's cloud kernel and its initramfs in /boot, tpm2-tools and iproute2, and gets
# examples/guest/satchel-guest-init as its init (/etc/satchel/guest-cmdline).
#
# SATCHEL_CACHE names the cache directory [~/.cache/satchel];
# SATCHEL_DEBIAN_MIRROR the mirror [http://deb.debian.org/debian].
set -euo pipefail
variant=minbase
include=
if [ "${1:-}" = --guest ]; then
  variant=guest
  include=--include=linux-image-cloud-amd64,tpm2-tools,iproute2
  shift
fi
dest=${1:?usage: debian-root.sh [--guest] DEST}
cache=${SATCHEL_CACHE:-${HOME:-/root}/.cache/satchel}
mirror=${SATCHEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The package list is in the name: a changed list is a new cache entry.
tarball=$cache/bookworm-$variant-$(printf '%s' "$include" | sha256sum | cut -c1-8).tar
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
  tar --xattrs --xattrs-include='*' --acls --numeric-owner -C "$work/root" -cf "$work/root.tar" .
  mv "$work/root.tar" "$tarball"
fi
flock -u 9
tar --xattrs --xattrs-include='*' --acls --numeric-owner -C "$dest" -xpf "$tarball"
if [ "$variant" = guest ]; then
  install -m 0755 "$(dirname "$0")/../examples/guest/satchel-guest-init" "$dest/usr/local/sbin/satchel-guest-init"
  mkdir -p "$dest/etc/satchel"
  echo "init=/usr/local/sbin/satchel-guest-init" > "$dest/etc/satchel/guest-cmdline"
fi
