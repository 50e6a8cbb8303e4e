#!/usr/bin/env bash
# The whole test suite, set-up included: a venv with the test model and the Python clients,
# every Rust test in release mode (model math is too slow unoptimised), the CUDA kernels under
# the host emulator, each micro-benchmark once, the real clients (openai, litellm, ollama) and a `ferrollama bench` smoke run against
# the real server process, then the deploy/ checks (shellcheck, cloud-init, systemd, dry runs),
# the Dockerfile.cuda lint, and the CUDA build with its GPU tests (tests/cuda.sh; they skip,
# saying so, without a GPU).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
SMOLLM2_GGUF="$(models/smollm2-path.sh)"
export SMOLLM2_GGUF
echo "SmolLM2 test model: $SMOLLM2_GGUF"
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt

cargo test --release --workspace "$@"
# Our CUDA kernels' logic without a GPU: the same .cu sources on the host emulator
# (kernels/emulator.h) against their CPU references.
cargo test --release -p ferrollama-kernels --features emulate
# Criterion runs each benchmark once under `cargo test`: the micro-benchmarks stay working.
cargo test --release -p ferrollama-bench --benches

cargo build --release --bin ferrollama
export FERROLLAMA_BIN="${CARGO_TARGET_DIR:-$root/target}/release/ferrollama"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/clients
tests/deploy/run.sh

# The GPU image's Dockerfile (no Docker engine here: lint only) and the CUDA scripts, then the
# CUDA build.
.venv/bin/hadolint Dockerfile.cuda
shellcheck models/*.sh kernels/*.sh tests/cuda.sh benches/*.sh benches/gpu/*.sh
tests/cuda.sh
