#!/usr/bin/env bash
# Builds what benches/gpu/check.sh runs on a GPU machine (which has no Rust and no network):
# the CUDA build of `ferrollama` and the GPU test binaries for one architecture (default 90,
# the H100/H200 the device tool lends; 75 for a T4), stripped and xz-compressed into
# gpu-bundle/ (git-ignored; about 30 MB, under the 64 MiB that travels). Then, with the
# device tool: carry `gpu-bundle`, run `benches/gpu/check.sh $OUT`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
tests/cuda.sh
target="${CARGO_TARGET_DIR:-$root/target}-cuda$CUDA_COMPUTE_CAP"
bundle="$root/gpu-bundle"
rm -rf "$bundle"
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
cp "$target/release/ferrollama" "$bundle/ferrollama"
cp "$(pick kernels)" "$bundle/kernels-test"
cp "$(pick gpu)" "$bundle/gpu-test"
for f in "$bundle"/*; do
  strip "$f"
  xz -T0 -6 "$f"
done
echo "sm_$CUDA_COMPUTE_CAP $(git rev-parse --short HEAD)" >"$bundle/BUILD"
du -ch "$bundle"/* | tail -n 1
