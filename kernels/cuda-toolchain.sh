#!/usr/bin/env bash
# The CUDA toolchain for building ferrollama's `cuda` feature on a machine without a GPU (or
# without a system CUDA install): nvcc and the CUDA libraries from NVIDIA's PyPI wheels, a
# libcuda stub to link against (the real one comes with the driver on the GPU machine), and
# the environment cargo needs. Idempotent: the second call only prints the environment.
#
#   eval "$(kernels/cuda-toolchain.sh)"          # install if needed, then export the env
#   CUDA_COMPUTE_CAP=75 cargo build --release --features cuda
#
# Where: $FERROLLAMA_CUDA_DIR (default ~/.cache/ferrollama/cuda-13.0), outside any clone.
# Why 13.0.x: cudarc 0.19.10 (candle 0.11.1) knows CUDA up to 13.4 and panics above it, and
# the GPU machines' driver (580) runs CUDA 13.0 code.
set -euo pipefail

CUDA_VERSION=13.0
dir="${FERROLLAMA_CUDA_DIR:-$HOME/.cache/ferrollama/cuda-$CUDA_VERSION}"
cuda_home="$dir/venv/lib/python3/site-packages/nvidia/cu13"

log() { echo "cuda-toolchain: $*" >&2; }

install() {
  log "installing CUDA $CUDA_VERSION wheels into $dir (about 1.2 GB, once)"
  mkdir -p "$dir"
  python3 -m venv "$dir/venv"
  # The wheels install into lib/python3.X; a fixed name keeps the paths below stable.
  ln -sfn "$(cd "$dir/venv/lib" && ls -d python3.*)" "$dir/venv/lib/python3"
  # cccl holds nv/target (without it nvcc stops at `nv/target: No such file`); crt and nvvm
  # hold the device compiler's front and back ends.
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==$CUDA_VERSION.*" "nvidia-cuda-crt==$CUDA_VERSION.*" \
    "nvidia-nvvm==$CUDA_VERSION.*" "nvidia-cuda-runtime==$CUDA_VERSION.*" \
    "nvidia-cuda-cccl==$CUDA_VERSION.*" "nvidia-cublas==$CUDA_VERSION.*" \
    "nvidia-cuda-nvrtc==$CUDA_VERSION.*" "nvidia-curand==10.4.*" >&2
}

# The wheels ship only versioned sonames (libcudart.so.13); the linker looks for libcudart.so.
link_unversioned() {
  local lib
  for lib in "$cuda_home"/lib/lib*.so.*; do
    local base="${lib%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
  done
}

# No wheel ships libcuda (it comes with the driver). Link against a stub with every driver API
# function of cuda.h, each answering CUDA_ERROR_NO_DEVICE (100): on the GPU machine the
# driver's libcuda.so.1 is loaded instead; here a binary starts and finds no GPU.
make_libcuda_stub() {
  local stubs="$cuda_home/lib/stubs"
  mkdir -p "$stubs"
  cc -E -P -I"$cuda_home/include" "$cuda_home/include/cuda.h" \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
    | awk '{ printf "int %s(void) { return 100; }\n", $1 }' >"$stubs/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
  ln -sfn libcuda.so "$stubs/libcuda.so.1"
  log "libcuda stub: $(wc -l <"$stubs/libcuda_stub.c") driver functions"
}

if [ ! -x "$cuda_home/bin/nvcc" ]; then
  install
fi
[ -e "$cuda_home/lib/libcudart.so" ] || link_unversioned
[ -e "$cuda_home/lib/stubs/libcuda.so" ] || make_libcuda_stub

# For the shell that evals this. LD_LIBRARY_PATH lists the stub last, so a machine with a
# driver still finds the real libcuda.so.1 first.
cat <<ENV
export CUDA_HOME="$cuda_home"
export CUDA_PATH="$cuda_home"
export NVCC="$cuda_home/bin/nvcc"
export CUDARC_CUDA_VERSION=13000
export PATH="$cuda_home/bin:\$PATH"
export LIBRARY_PATH="$cuda_home/lib:$cuda_home/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$cuda_home/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}:$cuda_home/lib/stubs"
ENV
