#!/usr/bin/env bash
# Seed the fuzz corpora from the real firmware logs in shared/fixtures and the
# sample boot chain. Usage: fuzz/seed-corpus.sh; then
#   cargo fuzz run -s none eventlog_parse -- -max_total_time=60
set -euo pipefail
cd "$(dirname "$0")"
FIX=${SATCHEL_FIXTURES:-../../shared/fixtures/eventlogs}
mkdir -p corpus/eventlog_parse corpus/boot_chain
cp "$FIX"/*.bin corpus/eventlog_parse/
cp ../examples/boot-chain/chain.toml corpus/boot_chain/
