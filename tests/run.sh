#!/usr/bin/env bash
# The whole test suite, set-up included: the Python side (a venv with the test model), then
# every Rust test in release mode (model math is too slow unoptimised).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
SMOLLM2_GGUF="$(models/smollm2-path.sh)"
export SMOLLM2_GGUF
echo "SmolLM2 test model: $SMOLLM2_GGUF"
cargo test --release --workspace "$@"
