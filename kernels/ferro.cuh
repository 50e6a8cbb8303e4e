// What every kernel file includes: the one place where device code and its host emulation
// (emulator.h, for tests without a GPU) part ways, and the small helpers all kernels share.
// Index math lives in FERRO_HD functions: the same code runs on the device and on the host.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(FERRO_EMULATE)
#include "emulator.h"
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#ifndef FERRO_BF16
#define FERRO_BF16 1  // the host has no architecture limits
#endif
// kernel<<<grid, block, shared, stream>>>(args) as FERRO_LAUNCH(grid, block, shared, stream, kernel)(args).
#define FERRO_LAUNCH(grid, block, shared, stream, ...) \
  ::ferro_emu::launch(grid, block, shared, __VA_ARGS__)
#define FERRO_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::ferro_emu::block->shared.data())
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#if defined(FERRO_BF16)
#include <cuda_bf16.h>
#endif
#define FERRO_LAUNCH(grid, block, shared, stream, ...) __VA_ARGS__<<<grid, block, shared, stream>>>
#define FERRO_DYNAMIC_SHARED(type, name)                                 \
  extern __shared__ __align__(16) unsigned char ferro_shared_bytes[]; \
  type* name = reinterpret_cast<type*>(ferro_shared_bytes)
#endif

#define FERRO_HD __host__ __device__ __forceinline__

#include <float.h>

namespace ferro {

constexpr float kLog2e = 1.4426950408889634f;

// ---- float types ----

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

#if defined(FERRO_BF16)
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
#endif

// Elements of T in 16 bytes: the innermost extent of the key layout, and one vector load.
template <typename T> FERRO_HD constexpr int pack() { return 16 / (int)sizeof(T); }

// The 16-bit pair (lo, hi) of a 32-bit register, as mma fragments hold them.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T a = from_float<T>(lo), b = from_float<T>(hi);
  uint16_t ua, ub;
  memcpy(&ua, &a, 2);
  memcpy(&ub, &b, 2);
  return (uint32_t)ua | ((uint32_t)ub << 16);
}

// Eight elements of T from 16 bytes, as floats (T of 2 bytes).
template <typename T> __device__ __forceinline__ void unpack8(const uint4& v, float out[8]) {
  T elements[8];
  memcpy(elements, &v, 16);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = to_float<T>(elements[i]);
}

// ---- the paged KV cache (vLLM's layout; see paged_attention.cu) ----

// key_cache [blocks, kv_heads, head_dim / x, block_size, x], x = pack<T>().
FERRO_HD int64_t key_index(int64_t block, int kv_head, int d, int offset, int kv_heads,
                           int head_dim, int block_size, int x) {
  return (((block * kv_heads + kv_head) * (head_dim / x) + d / x) * block_size + offset) * x +
         d % x;
}

// value_cache [blocks, kv_heads, head_dim, block_size].
FERRO_HD int64_t value_index(int64_t block, int kv_head, int d, int offset, int kv_heads,
                             int head_dim, int block_size) {
  return ((block * kv_heads + kv_head) * head_dim + d) * block_size + offset;
}

// The first key a query at `position` sees (0 without a sliding window).
FERRO_HD int first_visible(int position, int window) {
  return window > 0 ? (position + 1 - window > 0 ? position + 1 - window : 0) : 0;
}

// ---- warp reductions ----

// Over the lanes that differ in the bits below `width` (a power of two <= 32).
template <int WIDTH> __device__ __forceinline__ float lanes_sum(float v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int WIDTH> __device__ __forceinline__ float lanes_max(float v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- online softmax ----

// The factor that moves a running sum kept against max `old_max` onto `new_max`; a running
// max of -inf (nothing seen yet) rescales nothing. Maxima are in log2 units.
FERRO_HD float rescale(float old_max, float new_max) {
  return old_max == -FLT_MAX || old_max == -INFINITY ? 0.f : exp2f(old_max - new_max);
}

// ---- tensor cores: mma.sync m16n8k16, f32 accumulators ----

// Fragment coordinates (the PTX ISA's tables for m16n8k16 with 16-bit inputs), for lane `lane`:
// A element i (0..7) of the 16 x 16 tile: row, column.
FERRO_HD int a_row(int lane, int i) { return (lane >> 2) + ((i >> 1) & 1) * 8; }
FERRO_HD int a_col(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >> 2) * 8; }
// B element i (0..3) of the 16 x 8 tile: row (k), column (n).
FERRO_HD int b_row(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >> 1) * 8; }
FERRO_HD int b_col(int lane, int i) { return lane >> 2; }
// C/D element i (0..3) of the 16 x 8 tile.
FERRO_HD int c_row(int lane, int i) { return (lane >> 2) + (i >> 1) * 8; }
FERRO_HD int c_col(int lane, int i) { return (lane % 4) * 2 + (i & 1); }

#if defined(FERRO_EMULATE)
// Emulation runs the sm_75 form (two k8 instructions) when this is set: tests take both paths.
inline bool& emulate_k8() {
  static thread_local bool k8 = false;
  return k8;
}
#endif

// d = a b + d for one 16 x 8 x 16 step; a: 4 registers, b: 2, of T pairs (f16 or bf16).
template <typename T>
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]);

template <>
__device__ __forceinline__ void mma_16816<__half>(float d[4], const uint32_t a[4],
                                                  const uint32_t b[2]) {
#if defined(FERRO_EMULATE)
  if (emulate_k8()) {
    const uint32_t a_lo[2] = {a[0], a[1]}, a_hi[2] = {a[2], a[3]};
    ferro_emu::mma(8, false, d, a_lo, &b[0], d);
    ferro_emu::mma(8, false, d, a_hi, &b[1], d);
  } else {
    ferro_emu::mma(16, false, d, a, b, d);
  }
#elif __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  // sm_75 (T4): m16n8k16 is the same as two m16n8k8 steps over the two k halves. The k8 A
  // fragment is registers {0, 1} (columns 0..7) and {2, 3} (8..15); B is register 0 and 1.
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(b[0]));
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[2]), "r"(a[3]), "r"(b[1]));
#endif
}

#if defined(FERRO_BF16)
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float d[4], const uint32_t a[4],
                                                         const uint32_t b[2]) {
#if defined(FERRO_EMULATE)
  ferro_emu::mma(16, true, d, a, b, d);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
#endif

}  // namespace ferro
