#!/usr/bin/env bash
# The CUDA backend on a machine without a GPU: installs the toolchain (kernels/cuda-toolchain.sh),
# compiles the whole workspace, every target, with `--features cuda` for one architecture (CUDA_COMPUTE_CAP,
# default 75: the T4), links the binary and every test, then runs the GPU tests, which print
# SKIPPED where there is no GPU. One cargo invocation builds everything: a second with another
# package selection would unify features differently and compile candle's kernels again.
# The target directory is $CARGO_TARGET_DIR-cuda$CUDA_COMPUTE_CAP, kept between runs: cold,
# the build takes about 22 minutes on 2 cores (nearly all nvcc), warm about two.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-75}"
eval "$(kernels/cuda-toolchain.sh)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}-cuda$CUDA_COMPUTE_CAP"
echo "CUDA build for sm_$CUDA_COMPUTE_CAP in $CARGO_TARGET_DIR"
start=$SECONDS
cargo build --release --features cuda --workspace --all-targets --message-format=json-render-diagnostics \
  >"$CARGO_TARGET_DIR.build.json"
echo "compiled and linked in $((SECONDS - start)) s"
# The GPU tests: our kernels against CPU references, the model on the GPU against the CPU.
tests=$(python3 - "$CARGO_TARGET_DIR.build.json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("kernels", "gpu"):
        print(m["executable"])
PY
)
[ -n "$tests" ] || { echo "error: no GPU test binaries were built" >&2; exit 1; }
for t in $tests; do
  echo "== $(basename "$t")"
  "$t" --nocapture 2>&1 | tee "$CARGO_TARGET_DIR.$(basename "$t").log"
done
skipped=$(cat "$CARGO_TARGET_DIR".*.log | grep -c '^SKIPPED' || true)
if [ "$skipped" -gt 0 ]; then
  echo "no GPU here: $skipped GPU tests compiled and skipped (benches/gpu/check.sh runs them on one)"
fi
