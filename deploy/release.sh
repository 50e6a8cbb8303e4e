#!/usr/bin/env bash
# Release tarballs: the CPU build and the CUDA build for each GPU architecture (candle compiles
# its kernels for one), each as dist/ferrollama-<version>-linux-x86_64-<build>.tar.gz with a
# .sha256 file beside it. A tarball holds the stripped binary, README.md, Dockerfile.cuda and a
# MANIFEST (name, version, build, commit, the binary's sha256, the glibc it needs, the compiler,
# what else the host needs). up.sh --ferrollama-tarball takes one of them; the llm VM reads
# `build=` and `glibc=` from MANIFEST and refuses a release it cannot run.
#
#   deploy/release.sh                    # cpu, cuda sm_75 (T4) and sm_90 (H100/H200)
#   deploy/release.sh cpu 75             # the builds named: cpu, or a compute capability
#   deploy/release.sh --out DIR cpu      # somewhere else than dist/
#
# The CUDA builds need the toolchain kernels/cuda-toolchain.sh installs (no GPU needed); their
# hosts need the NVIDIA driver 580+ and the CUDA 13.0 cudart, cuBLAS, cuRAND and NVRTC
# libraries (deploy/firstboot/llm.sh installs them; the CUDA runtime image has them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# The tarballs are named linux-x86_64 and the VMs are x86_64: build nowhere else.
[ "$(uname -sm)" = "Linux x86_64" ] || { echo "release.sh builds on x86_64 Linux only, not $(uname -sm)" >&2; exit 2; }
out="$root/dist"
if [ "${1:-}" = --out ]; then out="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2; fi
[ $# -gt 0 ] || set -- cpu 75 90
cd "$root"
version="$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ferrollama"))')"
commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
mkdir -p "$out"

for build in "$@"; do
  case "$build" in
    cpu)
      target="${CARGO_TARGET_DIR:-$root/target}"
      echo "== cpu (target dir $target)"
      CARGO_TARGET_DIR="$target" cargo build --release --bin ferrollama
      binary="$target/release/ferrollama"
      kind=cpu needs="x86_64 Linux; AVX2 for the fast kernels (a scalar path runs elsewhere)" ;;
    [0-9]*)
      [ -n "${CUDA_TOOLCHAIN_READY:-}" ] || { eval "$(kernels/cuda-toolchain.sh)"; CUDA_TOOLCHAIN_READY=1; }
      target="${CARGO_TARGET_DIR:-$root/target}-cuda$build"
      echo "== cuda sm_$build (target dir $target)"
      CUDA_COMPUTE_CAP="$build" CARGO_TARGET_DIR="$target" \
        cargo build --release --features cuda --bin ferrollama
      binary="$target/release/ferrollama"
      kind="cuda-sm$build" needs="an NVIDIA GPU of compute capability ${build:0:1}.${build:1}; driver 580+; CUDA 13.0 cudart, cuBLAS, cuRAND, NVRTC" ;;
    *) echo "unknown build '$build': cpu or a compute capability like 75" >&2; exit 2 ;;
  esac
  name="ferrollama-$version-linux-x86_64-$kind"
  stage="$(mktemp -d)"
  mkdir -p "$stage/$name"
  cp "$binary" "$stage/$name/ferrollama"
  strip "$stage/$name/ferrollama"
  cp README.md Dockerfile.cuda "$stage/$name/"
  # The newest glibc symbol version the binary links is the oldest glibc it starts on: the
  # build host's, in practice. The llm VM compares it with its own (ldd --version).
  glibc="$(objdump -T "$stage/$name/ferrollama" | { grep -o 'GLIBC_[0-9][0-9.]*' || true; } | cut -d_ -f2 | sort -uV | tail -n 1)"
  [ -n "$glibc" ] || { echo "no GLIBC_ symbol versions in $binary: not a glibc build?" >&2; exit 1; }
  cat >"$stage/$name/MANIFEST" <<MANIFEST
name=$name
version=$version
build=$kind
commit=$commit
binary_sha256=$(sha256sum "$stage/$name/ferrollama" | cut -d' ' -f1)
glibc=$glibc
rustc=$(rustc --version)
needs=$needs
MANIFEST
  tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
  rm -rf "$stage"
  (cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
  echo "$out/$name.tar.gz: $(du -h "$out/$name.tar.gz" | cut -f1), sha256 $(cut -d' ' -f1 "$out/$name.tar.gz.sha256")"
done
