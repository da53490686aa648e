#!/usr/bin/env bash
# Fuzzes the userspace pipeline with arbitrary frames (cargo-fuzz / libFuzzer) for the
# given number of seconds (default 30). Exits non-zero on a crash; the crashing input
# is left in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${1:-30}"
mkdir -p fuzz/corpus/pipeline
cargo run -q -p vipr-fixtures --example write_corpus --locked -- fuzz/corpus/pipeline
cargo +nightly fuzz run pipeline --fuzz-dir fuzz -- \
  -max_total_time="$seconds" -max_len=2048 -print_final_stats=1 2>&1 | tail -n 20
