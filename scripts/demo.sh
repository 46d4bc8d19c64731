#!/usr/bin/env bash
# Satchel's main job end to end on embedded defaults: a swtpm stands in for the
# client's TPM; the sample boot chain is measured into it and its event log;
# the log is replayed and compared with the TPM's PCRs (ours and tpm2-tools'),
# with the offline prediction; the organisation signs a reference manifest; the
# device attests (quote + verifier, cross-checked by tpm2_checkquote) and its
# guest launches with a PCR-sealed disk key; a tampered boot is refused by both
# the verifier and the launch gate, naming the stage; a vendor-provisioned swtpm
# enrolls with the gateway, attests and gets a device certificate; the gateway's
# proxy allows and denies URLs for it; the sample image is pulled, a user file
# pushed back, a base-os change refused and restored; the outcomes go into the
# tamper-evident audit log.
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
GATEWAY_PID=
WEB_PID=
cleanup() {
  if [ -n "$GATEWAY_PID" ]; then kill "$GATEWAY_PID" 2>/dev/null || true; wait "$GATEWAY_PID" 2>/dev/null || true; fi
  if [ -n "$WEB_PID" ]; then kill "$WEB_PID" 2>/dev/null || true; fi
  stop_swtpm
}
trap cleanup EXIT
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
echo "-> only PCR 8 (the hypervisor's PCR) differs."

step "7. the organisation signs what it built: a reference manifest"
"$SATCHEL" keygen --out "$OUT/org.key"
"$SATCHEL" predict --chain "$CHAIN" --banks sha1,sha256 --sign-key "$OUT/org.key" --out "$OUT/reference.json"

step "8. remote attestation: an AK, a quote over a fresh nonce, the verifier"
"$SATCHEL" attest ak --out "$OUT/ak.json"
NONCE=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
"$SATCHEL" attest quote --ak "$OUT/ak.json" --nonce "$NONCE" --pcrs 0-9,13 --log "$OUT/boot.log" --out "$OUT/evidence.json"
"$SATCHEL" attest verify --evidence "$OUT/evidence.json" --nonce "$NONCE" \
  --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub"
python3 - "$OUT" <<'PY'
import base64, json, sys
out = sys.argv[1]; e = json.load(open(f"{out}/evidence.json"))
open(f"{out}/quote.bin", "wb").write(base64.b64decode(e["quote"]))
open(f"{out}/quote.sig", "wb").write(base64.b64decode(e["signature"]))
open(f"{out}/ak.pem", "w").write(e["ak_pem"])
PY
tpm2_checkquote -u "$OUT/ak.pem" -m "$OUT/quote.bin" -s "$OUT/quote.sig" -q "$NONCE" -g sha256 >/dev/null
echo "OK: tpm2_checkquote (tpm2-tools) accepts the same quote and signature"

step "9. the launch gate: a disk key sealed to PCRs 4,8,9 reaches the guest only on this chain"
head -c 32 /dev/urandom > "$OUT/disk.key"
"$SATCHEL" seal --pcrs 4,8,9 --in "$OUT/disk.key" --out "$OUT/disk.sealed"
"$SATCHEL" launch --log "$OUT/boot.log" --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub" \
  --sealed "$OUT/disk.sealed" -- sh -c 'echo "guest: started with a $(wc -c < "$SATCHEL_KEY_FILE")-byte disk key at $SATCHEL_KEY_FILE -> $(readlink "$SATCHEL_KEY_FILE")"'

step "10. a tampered boot (the hypervisor from step 6) on another machine"
stop_swtpm
start_swtpm "$OUT/swtpm-tampered"
export SATCHEL_TPM=$SWTPM_TCTI
"$SATCHEL" measure --chain "$OUT/tampered-chain/chain.toml" --log "$OUT/boot-tampered.log" >/dev/null
"$SATCHEL" attest ak --out "$OUT/ak-tampered.json" >/dev/null
"$SATCHEL" seal --pcrs 4,8,9 --in "$OUT/disk.key" --out "$OUT/disk-tampered.sealed" >/dev/null
"$SATCHEL" attest quote --ak "$OUT/ak-tampered.json" --nonce "$NONCE" --pcrs 0-9,13 \
  --log "$OUT/boot-tampered.log" --out "$OUT/evidence-tampered.json" >/dev/null
set +e
"$SATCHEL" attest verify --evidence "$OUT/evidence-tampered.json" --nonce "$NONCE" \
  --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub"
VERIFY=$?
"$SATCHEL" launch --log "$OUT/boot-tampered.log" --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub" \
  --sealed "$OUT/disk-tampered.sealed" -- sh -c 'echo "guest: started (this must not happen)"'
LAUNCH=$?
set -e
if [ "$VERIFY" = 1 ] && [ "$LAUNCH" = 1 ]; then
  echo "OK: attestation (exit $VERIFY) and launch (exit $LAUNCH) refused, naming the stage"
else
  echo "a tampered chain was not refused (verify $VERIFY, launch $LAUNCH)" >&2; exit 1
fi

step "11. closed computing: the school policy, signed into a bundle"
POLICY=examples/policy/school.csv
"$SATCHEL" policy test --policy "$POLICY" --cases examples/policy/school-cases.csv
"$SATCHEL" policy bundle --policy "$POLICY" --sign-key "$OUT/org.key" --version 1 --out "$OUT/policy.bundle"
"$SATCHEL" policy check --bundle "$OUT/policy.bundle" --bundle-key "$OUT/org.key.pub" \
  --subject device:laptop-17 --url https://en.wikipedia.org/wiki/Rust
if "$SATCHEL" policy check --bundle "$OUT/policy.bundle" --bundle-key "$OUT/org.key.pub" \
  --subject device:laptop-17 --url 'https://EN.wikipedia.org./wiki/x/../%53pecial:Random'; then
  echo "a denied URL was allowed" >&2; exit 1
fi
if "$SATCHEL" policy check --bundle "$OUT/policy.bundle" --bundle-key "$OUT/org.key.pub" \
  --subject device:laptop-17 --url http://0x7f.1/; then
  echo "an IP literal in hex was allowed" >&2; exit 1
fi
"$SATCHEL" run --bundle "$OUT/policy.bundle" --bundle-key "$OUT/org.key.pub" --subject device:laptop-17 \
  -- /usr/bin/env sh -c 'echo "allowlisted program (/usr/bin/env) ran"'
printf '#!/bin/sh\necho "this must not run"\n' > "$OUT/not-allowlisted.sh"; chmod +x "$OUT/not-allowlisted.sh"
if "$SATCHEL" run --bundle "$OUT/policy.bundle" --bundle-key "$OUT/org.key.pub" --subject device:laptop-17 \
  --audit-db "sqlite:$OUT/audit.db" -- "$OUT/not-allowlisted.sh"; then
  echo "a program outside the allowlist ran" >&2; exit 1
fi
echo "OK: the denied URL, the hex IP literal and the unlisted program were refused"

step "12. the gateway: enroll a device with a provisioned TPM, attest, reach it over mTLS"
stop_swtpm
TPMDIR="$OUT/swtpm-client"; mkdir -p "$TPMDIR/localca"
printf 'statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n' \
  "$TPMDIR/localca" "$TPMDIR/localca" "$TPMDIR/localca" "$TPMDIR/localca" > "$TPMDIR/localca.conf"
printf -- '--platform-manufacturer Satchel\n--platform-version 2.1\n--platform-model swtpm\n' > "$TPMDIR/localca.options"
printf 'create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\n' \
  "$TPMDIR/localca.conf" "$TPMDIR/localca.options" > "$TPMDIR/setup.conf"
swtpm_setup --tpm2 --tpmstate "$TPMDIR" --pcr-banks sha256 --create-ek-cert --config "$TPMDIR/setup.conf" --overwrite >/dev/null
start_swtpm "$TPMDIR"
export SATCHEL_TPM=$SWTPM_TCTI
echo "client TPM provisioned like a vendor's: EK certificate from a local CA ($TPMDIR/localca)"
"$SATCHEL" measure --chain "$CHAIN" --log "$OUT/boot-client.log" >/dev/null
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GW_PORT=$(free_port); PROXY_PORT=$(free_port); WEB_PORT=$(free_port)
# A local web server stands in for the web; the school policy plus one rule for it.
mkdir -p "$OUT/web/lessons" "$OUT/web/games"
echo "lesson 1: fractions" > "$OUT/web/lessons/1.txt"; echo "not during class" > "$OUT/web/games/1.txt"
(cd "$OUT/web" && exec python3 -m http.server "$WEB_PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
WEB_PID=$!
cp examples/policy/school.csv "$OUT/gateway-policy.csv"
echo "p, group:class-7a, url, http://127.0.0.1:$WEB_PORT/lessons/*, GET, allow" >> "$OUT/gateway-policy.csv"
"$SATCHEL" gateway serve --data "$OUT/gw" --listen "127.0.0.1:$GW_PORT" --proxy-listen "127.0.0.1:$PROXY_PORT" \
  --policy "$OUT/gateway-policy.csv" --ek-ca "$TPMDIR/localca" \
  --reference "$OUT/reference.json" --reference-key "$OUT/org.key.pub" 2> "$OUT/gateway.log" &
GATEWAY_PID=$!
for _ in $(seq 1 100); do
  curl -sf --cacert "$OUT/gw/ca.crt" "https://127.0.0.1:$GW_PORT/v1/health" >/dev/null 2>&1 && break
  sleep 0.1
done
GW="https://127.0.0.1:$GW_PORT"
TOKEN=$("$SATCHEL" gateway enroll-token --data "$OUT/gw" --device-id laptop-17 --groups group:class-7a)
"$SATCHEL" client enroll --gateway "$GW" --ca "$OUT/gw/ca.crt" --data "$OUT/client" --device-id laptop-17 --token "$TOKEN"
if "$SATCHEL" client enroll --gateway "$GW" --ca "$OUT/gw/ca.crt" --data "$OUT/client" --device-id laptop-17 --token "$TOKEN" 2>/dev/null; then
  echo "a token worked twice" >&2; exit 1
fi
echo "the same token again: refused"
"$SATCHEL" client attest --gateway "$GW" --ca "$OUT/gw/ca.crt" --data "$OUT/client" --log "$OUT/boot-client.log"
echo "whoami over mTLS with the issued certificate (curl):"
curl -sS --cacert "$OUT/gw/ca.crt" --cert "$OUT/client/device.crt" --key "$OUT/client/device.key" "$GW/v1/whoami"; echo
echo "without a certificate:"
curl -sS --cacert "$OUT/gw/ca.crt" "$GW/v1/whoami"; echo

step "12b. the egress proxy: each URL decided for the device's groups"
PROXY=(-x "https://127.0.0.1:$PROXY_PORT" --proxy-cacert "$OUT/gw/ca.crt"
  --proxy-cert "$OUT/client/device.crt" --proxy-key "$OUT/client/device.key")
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$WEB_PORT/lessons/1.txt" >/dev/null && break; sleep 0.1; done
echo "allowed (a rule for /lessons/*):"
curl -sS "${PROXY[@]}" "http://127.0.0.1:$WEB_PORT/lessons/1.txt"
echo "denied (no rule: the default), the 403 names what decided:"
CODE=$(curl -sS "${PROXY[@]}" -o "$OUT/denied.json" -w '%{http_code}' "http://127.0.0.1:$WEB_PORT/games/1.txt")
cat "$OUT/denied.json"; echo
[ "$CODE" = 403 ] || { echo "the proxy let a denied URL through ($CODE)" >&2; exit 1; }

step "12c. push-OS: build the sample image, pull it over mTLS, change a file, push it back"
"$SATCHEL" image build --data "$OUT/gw" --image classroom-2026 \
  --layer base-os=examples/image/base-os --layer user-data=examples/image/user-data
SYNC=(--gateway "$GW" --ca "$OUT/gw/ca.crt" --data "$OUT/client" --image classroom-2026)
echo "first pull (stats):"
"$SATCHEL" client sync pull "${SYNC[@]}" --into "$OUT/root" --stats-json
diff -r examples/image/base-os "$OUT/root/base-os" && echo "the pulled base-os equals the image"
echo "a note written on the device, then pushed:"
echo "my homework, written offline" > "$OUT/root/user-data/Documents/homework.txt"
"$SATCHEL" client sync push "${SYNC[@]}" --from "$OUT/root"
echo "a change to base-os on the device is refused and reported:"
echo "tampered" > "$OUT/root/base-os/etc/hostname"
"$SATCHEL" client sync push "${SYNC[@]}" --from "$OUT/root"
echo "the next pull restores it (stats):"
"$SATCHEL" client sync pull "${SYNC[@]}" --into "$OUT/root" --stats-json
diff -r examples/image/base-os "$OUT/root/base-os" && echo "base-os is as pushed again"
echo "the gateway's own audit log (it signs a checkpoint every minute; one more now):"
GW_DB="sqlite:$OUT/gw/satchel.db"
"$SATCHEL" audit checkpoint --db "$GW_DB" --key "$OUT/gw/audit.key" --origin satchel.gateway.audit >/dev/null
"$SATCHEL" audit list --db "$GW_DB"
"$SATCHEL" audit verify --db "$GW_DB" --pubkey "$OUT/gw/audit.key.pub" --origin satchel.gateway.audit

step "13. recording the outcomes in the tamper-evident audit log"
AUDIT_DB="sqlite:$OUT/audit.db"
"$SATCHEL" keygen --out "$OUT/audit.key"   # the policy refusal above is already entry 0
PCR8=$(awk '/^sha256:/{b=1} b && $1 == "8:" {print $2; exit}' "$OUT/replay.txt")
"$SATCHEL" audit append --db "$AUDIT_DB" --key "$OUT/audit.key" --kind measurement \
  --actor device:demo --subject boot-chain --decision agree --details "{\"pcr8_sha256\": \"$PCR8\"}" >/dev/null
"$SATCHEL" audit append --db "$AUDIT_DB" --key "$OUT/audit.key" --kind attestation \
  --actor gateway:demo --subject device:demo --decision trusted --details '{"reference": "chain"}' >/dev/null
"$SATCHEL" audit append --db "$AUDIT_DB" --key "$OUT/audit.key" --kind attestation \
  --actor gateway:demo --subject device:tampered --decision refused --details '{"pcr": 8, "stage": "hypervisor"}' >/dev/null
"$SATCHEL" audit list --db "$AUDIT_DB"
"$SATCHEL" audit verify --db "$AUDIT_DB" --pubkey "$OUT/audit.key.pub"
"$SATCHEL" audit export --db "$AUDIT_DB" --out "$OUT/audit.jsonl" >/dev/null
sed -i '0,/"decision":"agree"/s//"decision":"differs"/' "$OUT/audit.jsonl"
echo "-> after editing the measurement entry of the export (agree -> differs):"
if "$SATCHEL" audit verify --export "$OUT/audit.jsonl" --pubkey "$OUT/audit.key.pub"; then
  echo "an edited export verified: this must not happen" >&2; exit 1
fi

step "done: everything above is in $OUT"
