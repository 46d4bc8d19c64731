#!/usr/bin/env bash
# Seed the fuzz corpora from the real firmware logs in shared/fixtures and the
# sample boot chain. Usage: fuzz/seed-corpus.sh; then
#   cargo fuzz run -s none eventlog_parse -- -max_total_time=60
set -euo pipefail
cd "$(dirname "$0")"
FIX=${SATCHEL_FIXTURES:-../../shared/fixtures/eventlogs}
mkdir -p corpus/eventlog_parse corpus/boot_chain corpus/tpm2_structures \
  corpus/evidence_verify corpus/reference_manifest corpus/url_canonical corpus/policy_text
cp "$FIX"/*.bin corpus/eventlog_parse/
cp ../examples/boot-chain/chain.toml corpus/boot_chain/
# The swtpm-made evidence: its quote, signature and AK public area, whole.
DATA=../attest/tests/data
cp "$DATA/evidence.json" corpus/evidence_verify/
cp "$DATA/reference.json" corpus/reference_manifest/
python3 - "$DATA/evidence.json" corpus/tpm2_structures <<'PY'
import base64, json, sys
e = json.load(open(sys.argv[1]))
for k in ("quote", "signature", "ak_public"):
    open(f"{sys.argv[2]}/{k}", "wb").write(base64.b64decode(e[k]))
PY
# The sample policy, and its URLs one per file.
cp ../examples/policy/school.csv corpus/policy_text/
grep -o 'https\?://[^, ]*' ../examples/policy/*.csv | cut -d: -f2- | sort -u | \
  awk '{ f = sprintf("corpus/url_canonical/u%03d", NR); printf "%s", $0 > f; close(f) }'
