#!/usr/bin/env bash
# Installs what Satchel's build, demo and tests need on Debian/Ubuntu, only when missing.
# Idempotent: a second run installs nothing. Runs as root, or through sudo when not root.
set -euo pipefail

# Debian packages the build and the tests need (keep in sync with docs/development.md).
PACKAGES=(libtss2-dev pkg-config swtpm swtpm-tools tpm2-tools gcc make postgresql curl openssl strace chromium chromium-driver libnss3-tools python3-prometheus-client debootstrap)

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
