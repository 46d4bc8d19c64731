#!/usr/bin/env bash
# Satchel's main job end to end on embedded defaults: a swtpm stands in for the
# client's TPM; the sample boot chain is measured into it and its event log;
# the log is replayed and compared with the TPM's PCRs (ours and tpm2-tools'),
# with the offline prediction, and a tampered stage is shown to change them.
# Installs what is missing and builds first. Output lands in ./demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ROOT=$PWD

bash scripts/setup.sh
echo "== building satchel"
cargo build --quiet -p satchel
SATCHEL=$ROOT/target/debug/satchel

OUT=$ROOT/demo-out
rm -rf "$OUT"; mkdir -p "$OUT"
. scripts/swtpm-lib.sh
trap stop_swtpm EXIT
start_swtpm "$OUT/swtpm"
export SATCHEL_TPM=$SWTPM_TCTI
export TSS2_LOG=all+none
CHAIN=examples/boot-chain/chain.toml
step() { printf '\n== %s\n' "$*"; }

step "1. swtpm is up ($SATCHEL_TPM); measuring the sample boot chain ($CHAIN)"
"$SATCHEL" measure --chain "$CHAIN" --log "$OUT/boot.log"

step "2. the event log it wrote ($OUT/boot.log)"
"$SATCHEL" eventlog show "$OUT/boot.log"

step "3. replaying the log (sha256 shown; all banks in $OUT/replay.txt)"
"$SATCHEL" eventlog replay "$OUT/boot.log" > "$OUT/replay.txt"
sed -n '/^sha256:/,/^sha384:/p' "$OUT/replay.txt" | sed '$d'

step "4. the TPM's PCRs read by tpm2-tools, a peer implementation"
PCRS=0,1,2,3,4,5,6,7,8,9,13
BANKS=sha1,sha256,sha384,sha512   # what a fresh swtpm 0.7 allocates
tpm2_pcrread -T "$SATCHEL_TPM" "sha1:$PCRS+sha256:$PCRS+sha384:$PCRS+sha512:$PCRS" > "$OUT/tpm2_pcrread.txt"
grep -A3 'sha256:' "$OUT/tpm2_pcrread.txt"; echo "   ... (all of it in $OUT/tpm2_pcrread.txt)"
# Normalise both to "bank index hex" lines and compare.
norm_tpm2() { awk '/^ *sha[0-9]+:/{b=$1; sub(":","",b); next} /:/ {gsub(" ",""); split($0,a,":"); print b, a[1], tolower(substr(a[2],3))}' "$1"; }
norm_ours() { awk '/^[a-z0-9_]+:$/{b=$1; sub(":","",b); next} {gsub(":","",$1); print b, $1, $2}' "$1"; }
if diff <(norm_tpm2 "$OUT/tpm2_pcrread.txt" | sort) <(norm_ours "$OUT/replay.txt" | sort); then
  echo "OK: the replayed log equals the TPM's PCRs in every bank (checked by tpm2_pcrread)"
else
  echo "MISMATCH between the log and the TPM" >&2; exit 1
fi

step "5. predicting the same chain offline, without a TPM"
"$SATCHEL" predict --chain "$CHAIN" --banks "$BANKS" > "$OUT/predict.txt"
if diff "$OUT/predict.txt" "$OUT/replay.txt" >/dev/null; then
  echo "OK: prediction == replay == TPM"
else
  echo "MISMATCH between prediction and replay" >&2; diff "$OUT/predict.txt" "$OUT/replay.txt" >&2; exit 1
fi

step "6. tampering one stage: one byte of the hypervisor changes"
cp -r examples/boot-chain "$OUT/tampered-chain"
printf 'X' | dd of="$OUT/tampered-chain/hypervisor.bin" bs=1 seek=0 conv=notrunc status=none
"$SATCHEL" predict --chain "$OUT/tampered-chain/chain.toml" --banks "$BANKS" > "$OUT/predict-tampered.txt"
diff "$OUT/predict.txt" "$OUT/predict-tampered.txt" | sed 's/^/   /' || true
echo "-> only PCR 8 (the hypervisor's PCR) differs: the next issue's verifier names that stage."

step "7. recording the measurement in the tamper-evident audit log"
AUDIT_DB="sqlite:$OUT/audit.db"
"$SATCHEL" keygen --out "$OUT/audit.key"
PCR8=$(awk '/^sha256:/{b=1} b && $1 == "8:" {print $2; exit}' "$OUT/replay.txt")
"$SATCHEL" audit append --db "$AUDIT_DB" --key "$OUT/audit.key" --kind measurement \
  --actor device:demo --subject boot-chain --decision agree --details "{\"pcr8_sha256\": \"$PCR8\"}" >/dev/null
"$SATCHEL" audit append --db "$AUDIT_DB" --key "$OUT/audit.key" --kind measurement \
  --actor device:demo --subject tampered-chain --decision differs --details '{"pcr": 8}' >/dev/null
"$SATCHEL" audit list --db "$AUDIT_DB"
"$SATCHEL" audit verify --db "$AUDIT_DB" --pubkey "$OUT/audit.key.pub"
"$SATCHEL" audit export --db "$AUDIT_DB" --out "$OUT/audit.jsonl" >/dev/null
sed -i '1s/"decision":"agree"/"decision":"differs"/' "$OUT/audit.jsonl"
echo "-> after editing entry 0 of the export:"
if "$SATCHEL" audit verify --export "$OUT/audit.jsonl" --pubkey "$OUT/audit.key.pub"; then
  echo "an edited export verified: this must not happen" >&2; exit 1
fi

step "done: everything above is in $OUT"
