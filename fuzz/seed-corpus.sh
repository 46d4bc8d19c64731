#!/usr/bin/env bash
# Seed the fuzz corpora from the real firmware logs in fixtures/eventlogs and the
# sample boot chain. Usage: fuzz/seed-corpus.sh; then
#   cargo fuzz run -s none eventlog_parse -- -max_total_time=60
set -euo pipefail
cd "$(dirname "$0")"
FIX=${SATCHEL_FIXTURES:-../fixtures/eventlogs}
mkdir -p corpus/eventlog_parse corpus/boot_chain corpus/tpm2_structures \
  corpus/evidence_verify corpus/reference_manifest corpus/url_canonical corpus/policy_text corpus/sync_wire \
  corpus/chunk_pack
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
# A chunk frame stream and a delta record stream, as a gateway would send them.
python3 - corpus/sync_wire <<'PY'
import struct, sys
d = sys.argv[1]
open(f"{d}/frames", "wb").write(bytes(32) + struct.pack(">I", 3) + b"abc")
open(f"{d}/records", "wb").write(struct.pack(">IBI", 0, 0, 2) + b"dd" + struct.pack(">IBI", 1, 1, 34) + bytes(32) + b"cc")
open(f"{d}/../chunk_pack/one", "wb").write(b"SCK1" + bytes(32) + struct.pack(">I", 3) + b"abc")
open(f"{d}/bundle", "wb").write(b"SATCHEL-SYNC-BUNDLE-1\n" + struct.pack(">I", 2) + b"{}" + struct.pack(">Q", 0) + struct.pack(">I", 0))
PY
