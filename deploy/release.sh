#!/usr/bin/env bash
# Release tarballs of the CUDA build, one per GPU architecture (candle compiles its kernels for
# one): dist/ferrollama-<version>-linux-x86_64-cuda-sm<CC>.tar.gz with a .sha256 beside it,
# holding the stripped binary, README.md and Dockerfile.cuda. The host needs the NVIDIA
# driver (580+, CUDA 13.0) and cuBLAS/cuRAND/NVRTC 13 (or the runtime container image).
#
#   deploy/release.sh            # 75 (T4) and 90 (H100/H200)
#   deploy/release.sh 75 80      # the architectures named
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
eval "$(kernels/cuda-toolchain.sh)"
version="$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ferrollama"))')"
mkdir -p dist
for cc in "${@:-75 90}"; do
  for arch in $cc; do
    target="${CARGO_TARGET_DIR:-$root/target}-cuda$arch"
    echo "== sm_$arch (target dir $target)"
    CUDA_COMPUTE_CAP="$arch" CARGO_TARGET_DIR="$target" \
      cargo build --release --features cuda --bin ferrollama
    name="ferrollama-$version-linux-x86_64-cuda-sm$arch"
    stage="$(mktemp -d)/$name"
    mkdir -p "$stage"
    cp "$target/release/ferrollama" "$stage/"
    strip "$stage/ferrollama"
    cp README.md Dockerfile.cuda "$stage/"
    tar -C "$(dirname "$stage")" -czf "dist/$name.tar.gz" "$name"
    (cd dist && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
    echo "dist/$name.tar.gz: $(du -h "dist/$name.tar.gz" | cut -f1), sha256 $(cut -d' ' -f1 "dist/$name.tar.gz.sha256")"
  done
done
