#!/usr/bin/env bash
# Satchel's whole test suite: installs what is missing, then formatting,
# clippy (-D warnings), a build of the fuzz targets, and every test
# (swtpm-backed ones included: each test starts its own swtpm on a free
# port), closing with one 'tests: N passed, N failed' line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

# The event-log tests read real firmware logs (fixtures/eventlogs, in the
# repository; SATCHEL_FIXTURES may name another copy): say so now if they
# are missing rather than after a quarter of an hour of building.
fixtures=${SATCHEL_FIXTURES:-fixtures/eventlogs}
if ! compgen -G "$fixtures/*.bin" >/dev/null; then
    echo "error: no firmware event logs in $fixtures" >&2
    echo "  the repository's fixtures/eventlogs is missing or SATCHEL_FIXTURES names an empty directory" >&2
    exit 1
fi
export SATCHEL_FIXTURES=$(cd "$fixtures" && pwd)

bash scripts/setup.sh
export TSS2_LOG=${TSS2_LOG:-all+none}

echo "== unsafe code only where allowed"
# The workspace denies unsafe code; one module (the TPM2_PolicyNV session,
# docs/launch.md) allows it. Any other file that allows it fails here.
allowed=attest/src/tpm/esys.rs
others=$(grep -rlE 'allow\(unsafe_code\)|unsafe_code *= *"(allow|warn)"' --include='*.rs' --include=Cargo.toml . \
    | grep -v '^./target/' | grep -v "^./$allowed\$" || true)
if [ -n "$others" ]; then
    echo "error: unsafe code allowed outside $allowed:" >&2
    echo "$others" >&2
    exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== fuzz targets build"
(cd fuzz && cargo fuzz build -s none)

echo "== cargo test"
results=$(mktemp); trap 'rm -f "$results"' EXIT
cargo test --workspace --locked 2>&1 | tee "$results"
# One closing line over every test binary (the last binary alone may be a
# doc-test run with nothing in it).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' "$results"
