#!/usr/bin/env bash
# Builds what benches/gpu/check.sh runs on a GPU machine (which has no Rust and no network),
# stripped and xz-compressed into gpu-bundle/ (git-ignored; under the 64 MiB that travels):
#   gpu-bundle/sm90: `ferrollama`, the kernel tests and the model's GPU tests for H100/H200;
#   gpu-bundle/sm75: the kernel and model tests of the T4's build, whose PTX the check runs on
#     the newer GPU through the driver's JIT (the T4's code path, not its speed).
# Each is tests/cuda.sh for that architecture (a cold build is ~25 minutes on 2 cores).
# Then, with the device tool: carry `gpu-bundle`, run `benches/gpu/check.sh $OUT`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
rm -rf gpu-bundle
for cap in ${PACK_CAPS:-90 75}; do
  CUDA_COMPUTE_CAP=$cap tests/cuda.sh
  target="${CARGO_TARGET_DIR:-$root/target}-cuda$cap"
  bundle="gpu-bundle/sm$cap"
  mkdir -p "$bundle"
  pick() { # the executable of test target $1 from the build's JSON
    python3 - "$target.build.json" "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[2]:
        print(m["executable"])
PY
  }
  [ "$cap" = 90 ] && cp "$target/release/ferrollama" "$bundle/ferrollama"
  cp "$(pick kernels)" "$bundle/kernels-test"
  cp "$(pick gpu)" "$bundle/gpu-test"
  for f in "$bundle"/*; do
    strip "$f"
    xz -T0 -6 "$f"
  done
done
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes') (sm_90 and sm_75 bundles)" >gpu-bundle/BUILD
du -ch gpu-bundle/*/* | tail -n 1
