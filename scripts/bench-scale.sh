#!/usr/bin/env bash
# The bounded load test of docs/scale.md, on loopback only: DEVICES simulated
# devices (default 1000) attest, pull a layer and push a change against two
# gateways on one PostgreSQL and one SeaweedFS (gateway/examples/load.rs
# starts them all on free ports and stops them); then the gateways' CPU per
# full mTLS handshake beside nginx's in the same run (scripts/bench-gateway.sh).
# Usage: scripts/bench-scale.sh [DEVICES] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
DEVICES=${1:-1000}
CONC=${2:-64}
bash scripts/setup.sh >/dev/null
cargo build --release --quiet -p satchel
cargo build --release --quiet -p gateway --example load
echo "== $DEVICES devices, $CONC at a time, two gateways (release build)"
OUT=$(mktemp); trap 'rm -f "$OUT"' EXIT
TSS2_LOG=all+none ./target/release/examples/load "$PWD/target/release/satchel" "$DEVICES" "$CONC" >"$OUT"
python3 - "$OUT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps(r, indent=2))
a, s = r["attest"], r["pull_and_push"]
print("attestations: %s/s, p50 %s ms, p99 %s ms, gateway CPU %s ms each"
      % (a["per_second"], a["p50_ms"], a["p99_ms"], r["attest_gateway_cpu_ms_each"]))
print("pull + push:  %s/s, p50 %s ms, p99 %s ms, gateway CPU %s ms each"
      % (s["per_second"], s["p50_ms"], s["p99_ms"], r["pull_and_push_gateway_cpu_ms_each"]))
PY
echo
echo "== full mTLS handshakes, one gateway beside nginx"
bash scripts/bench-gateway.sh 10 32 --no-attest
