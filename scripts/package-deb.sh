#!/usr/bin/env bash
# Build satchel_VERSION_ARCH.deb: the binary, its manual pages and shell
# completions, the systemd units, the closed-mode sysctl settings and the docs.
# The units run /usr/bin/satchel. Install with `apt install ./satchel_*.deb`,
# then put /etc/satchel/satchel.toml (the agent) or /etc/satchel/gateway.toml
# (the gateway) in place and enable the unit you need.
# Usage: [BIN=path/to/satchel] [COMPRESS=xz|gzip|none] scripts/package-deb.sh [OUT_DIR]
# (BIN skips the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/deb}
if [ -z "${BIN:-}" ]; then
  . scripts/env.sh
  cargo build --release --locked --quiet -p satchel --bin satchel
  BIN=target/release/satchel
fi
VERSION=$("$BIN" --version | awk '{print $2}')
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

install -D -m 0755 "$BIN" "$STAGE/usr/bin/satchel"
mkdir -p "$STAGE/usr/share/man/man1"
"$BIN" man --out "$STAGE/usr/share/man/man1"
gzip -9n "$STAGE"/usr/share/man/man1/*.1
install -d "$STAGE/usr/share/bash-completion/completions" \
  "$STAGE/usr/share/zsh/vendor-completions" "$STAGE/usr/share/fish/vendor_completions.d"
"$BIN" completions bash > "$STAGE/usr/share/bash-completion/completions/satchel"
"$BIN" completions zsh > "$STAGE/usr/share/zsh/vendor-completions/_satchel"
"$BIN" completions fish > "$STAGE/usr/share/fish/vendor_completions.d/satchel.fish"
for unit in satchel-agent.service satchel-gateway.service; do
  sed 's|/usr/local/bin/satchel|/usr/bin/satchel|' "packaging/$unit" \
    | install -D -m 0644 /dev/stdin "$STAGE/lib/systemd/system/$unit"
done
install -D -m 0644 packaging/90-satchel-agent.conf "$STAGE/usr/lib/sysctl.d/90-satchel-agent.conf"
install -D -m 0644 packaging/grafana-satchel-gateway.json \
  "$STAGE/usr/share/satchel/grafana-satchel-gateway.json"
install -D -m 0644 examples/satchel.toml "$STAGE/usr/share/doc/satchel/examples/satchel.toml"
for d in docs/*.md; do install -D -m 0644 "$d" "$STAGE/usr/share/doc/satchel/$(basename "$d")"; done

SIZE=$(du -sk "$STAGE" | cut -f1)
mkdir -p "$STAGE/DEBIAN"
cat > "$STAGE/DEBIAN/control" <<EOF
Package: satchel
Version: $VERSION
Architecture: $ARCH
Maintainer: Satchel <satchel@localhost>
Installed-Size: $SIZE
Depends: libtss2-esys-3.0.2-0 | libtss2-esys0, libtss2-tctildr0, libtss2-mu0 | libtss2-mu-4.0.1-0, libtss2-sys1, libc6, passwd, procps
Recommends: swtpm, tpm2-tools
Section: admin
Priority: optional
Description: trusted-boot, closed-computing appliance
 A branch-office gateway pushes a guest OS to client machines; a measured
 boot anchored in TPM PCRs gates its launch; an exec allowlist and per-URL
 network rules hold on the device; everything lands in a tamper-evident
 audit trail. One binary: gateway, client, agent and tools.
EOF
cat > "$STAGE/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  # The gateway's unit runs as this system user.
  if ! getent passwd satchel >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/satchel-gateway \
      --shell /usr/sbin/nologin --comment "Satchel gateway" satchel
  fi
  if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || true
  fi
fi
EOF
chmod 0755 "$STAGE/DEBIAN/postinst"
mkdir -p "$OUT"
DEB="$OUT/satchel_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${COMPRESS:-xz}" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
