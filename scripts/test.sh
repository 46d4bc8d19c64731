#!/usr/bin/env bash
# Satchel's whole test suite: installs what is missing, then formatting,
# clippy (-D warnings), every test (swtpm-backed ones included: each test
# starts its own swtpm on a free port), and a build of the fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export TSS2_LOG=${TSS2_LOG:-all+none}

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

echo "== fuzz targets build"
(cd fuzz && cargo fuzz build -s none)

echo "== all checks passed"
