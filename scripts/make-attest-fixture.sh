#!/usr/bin/env bash
# Regenerate attest/tests/data/: a realistic evidence (P-256 AK, 8 PCRs, a
# 100-event log in the sha1 and sha256 banks) quoted by a real swtpm, with its signed reference manifest.
# The TPM-free verifier tests, the criterion bench and the fuzz seeds read it.
# Usage: scripts/make-attest-fixture.sh   (needs swtpm; builds satchel)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/swtpm-lib.sh
cargo build -q -p satchel
S=$PWD/target/debug/satchel
out=$PWD/attest/tests/data
work=$(mktemp -d)
trap 'stop_swtpm; rm -rf "$work"' EXIT
mkdir -p "$out"

# 100 events over PCRs 0-7: a firmware-sized chain of data stages.
{
  for i in $(seq 1 92); do
    printf '[[stage]]\nname = "stage-%03d"\npcr = %d\nevent = "EV_POST_CODE"\ndata = "component %d version 1.%d"\n\n' \
      "$i" $(( i % 8 )) "$i" "$i"
  done
  printf '[[stage]]\nname = "end-of-firmware"\nseparator = [0, 1, 2, 3, 4, 5, 6, 7]\n'
} > "$work/chain.toml"

# sha1 + sha256: the banks PC TPMs allocate out of the box.
mkdir -p "$work/tpm" && : > "$work/setup.conf"
swtpm_setup --tpm2 --tpmstate "$work/tpm" --pcr-banks sha1,sha256 --config "$work/setup.conf" >/dev/null
start_swtpm "$work/tpm"
export SATCHEL_TPM=$SWTPM_TCTI
"$S" measure --chain "$work/chain.toml" --log "$work/boot.log" >/dev/null
rm -f "$out"/org.key.pub
"$S" keygen --out "$work/org.key" >/dev/null
cp "$work/org.key.pub" "$out/org.key.pub"
"$S" predict --chain "$work/chain.toml" --banks sha1,sha256 --sign-key "$work/org.key" --out "$out/reference.json" >/dev/null
"$S" attest ak --out "$work/ak.json" >/dev/null
nonce=$(openssl rand -hex 32)
echo "$nonce" > "$out/nonce.hex"
"$S" attest quote --ak "$work/ak.json" --nonce "$nonce" --pcrs 0-7 --log "$work/boot.log" --out "$out/evidence.json" >/dev/null
"$S" attest verify --evidence "$out/evidence.json" --nonce "$nonce" --reference "$out/reference.json" --reference-key "$out/org.key.pub"
echo "wrote $out"
