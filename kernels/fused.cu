// Fused elementwise steps of a layer, each one kernel instead of several candle ops (and their
// launches, allocations and round trips through memory):
//   qkv_rope_cache: the fused q/k/v projection's output → rotary embedding on q and k (f32
//     cos/sin, rotate-half as candle's rope_thd), q out, k and v straight into their cache slots;
//   add_rms_norm: the residual add and the next RMSNorm (x += delta; h = rmsnorm(x) * w);
//   silu_mul: the SwiGLU gate of the fused gate/up projection (silu(gate) * up).
// Every kernel computes in f32 and rounds once, where the unfused ops round after each op.

#include "ferro.cuh"

namespace ferro {

constexpr int FUSED_THREADS = 256;

// grid (tokens), FUSED_THREADS threads.
template <typename T>
__global__ void qkv_rope_cache(T* __restrict__ q_out,           // [tokens, heads, D]
                               T* __restrict__ key_cache, T* __restrict__ value_cache,
                               const T* __restrict__ qkv,       // [tokens, (heads + 2 kv) D]
                               const float* __restrict__ cos,   // [tokens, D / 2]
                               const float* __restrict__ sin,   // [tokens, D / 2]
                               const uint32_t* __restrict__ slots,  // [tokens]
                               int heads, int kv_heads, int head_dim, int block_size) {
  const int64_t token = blockIdx.x;
  const int half = head_dim / 2;
  const T* row = qkv + token * (int64_t)(heads + 2 * kv_heads) * head_dim;
  const float* c = cos + token * half;
  const float* s = sin + token * half;
  const int64_t slot = slots[token];
  const int64_t block = slot / block_size;
  const int offset = slot % block_size;
  // Rotated pairs (i, i + half) of every q and k head.
  for (int p = threadIdx.x; p < (heads + kv_heads) * half; p += blockDim.x) {
    const int head = p / half, i = p % half;
    const float x1 = to_float<T>(row[head * head_dim + i]);
    const float x2 = to_float<T>(row[head * head_dim + i + half]);
    const T y1 = from_float<T>(x1 * c[i] - x2 * s[i]);
    const T y2 = from_float<T>(x1 * s[i] + x2 * c[i]);
    if (head < heads) {
      T* out = q_out + (token * heads + head) * head_dim;
      out[i] = y1;
      out[i + half] = y2;
    } else {
      const int kv_head = head - heads;
      key_cache[key_index(block, kv_head, i, offset, kv_heads, head_dim, block_size, pack<T>())] = y1;
      key_cache[key_index(block, kv_head, i + half, offset, kv_heads, head_dim, block_size,
                          pack<T>())] = y2;
    }
  }
  const T* v = row + (heads + kv_heads) * head_dim;
  for (int e = threadIdx.x; e < kv_heads * head_dim; e += blockDim.x) {
    value_cache[value_index(block, e / head_dim, e % head_dim, offset, kv_heads, head_dim,
                            block_size)] = v[e];
  }
}

// The sum over the thread block; every thread gets it. `scratch` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = lanes_sum<32>(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) total += scratch[w];
  return total;
}

// grid (tokens), FUSED_THREADS threads. sum = x + delta (rounded to T, as the residual stream
// is kept), then h = sum / rms(sum) * weight. `sum` may be `x` itself.
template <typename T>
__global__ void add_rms_norm(T* sum_out, const T* x, const T* __restrict__ delta,
                             const T* __restrict__ weight, T* __restrict__ h, int width,
                             float eps) {
  FERRO_DYNAMIC_SHARED(float, scratch);
  const int64_t base = (int64_t)blockIdx.x * width;
  float squares = 0.f;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const T sum = from_float<T>(to_float<T>(x[base + i]) + to_float<T>(delta[base + i]));
    sum_out[base + i] = sum;
    const float f = to_float<T>(sum);
    squares += f * f;
  }
  const float inv_rms = rsqrtf(block_sum(squares, scratch) / width + eps);
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    h[base + i] = from_float<T>(to_float<T>(sum_out[base + i]) * inv_rms * to_float<T>(weight[i]));
  }
}

// grid (tokens), FUSED_THREADS threads: out[i] = silu(g[i]) * u[i], g and u the two halves
// of a gate_up row.
template <typename T>
__global__ void silu_mul(T* __restrict__ out, const T* __restrict__ gate_up, int width) {
  const int64_t token = blockIdx.x;
  const T* g = gate_up + token * 2 * width;
  const T* u = g + width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const float a = to_float<T>(g[i]);
    out[token * width + i] = from_float<T>(a / (1.f + expf(-a)) * to_float<T>(u[i]));
  }
}

}  // namespace ferro

#define FERRO_FUSED_ENTRY_POINTS(NAME, T)                                                     \
  extern "C" int ferro_qkv_rope_cache_##NAME(                                                 \
      void* q_out, void* key_cache, void* value_cache, const void* qkv, const float* cos,     \
      const float* sin, const uint32_t* slots, int tokens, int heads, int kv_heads,           \
      int head_dim, int block_size, cudaStream_t stream) {                                    \
    if (tokens == 0) return 0;                                                                \
    FERRO_LAUNCH(tokens, ferro::FUSED_THREADS, 0, stream, ferro::qkv_rope_cache<T>)(          \
        (T*)q_out, (T*)key_cache, (T*)value_cache, (const T*)qkv, cos, sin, slots, heads,     \
        kv_heads, head_dim, block_size);                                                      \
    return (int)cudaGetLastError();                                                           \
  }                                                                                           \
  extern "C" int ferro_add_rms_norm_##NAME(void* sum, const void* x, const void* delta,      \
                                           const void* weight, void* h, int tokens,           \
                                           int width, float eps, cudaStream_t stream) {       \
    if (tokens == 0) return 0;                                                                \
    FERRO_LAUNCH(tokens, ferro::FUSED_THREADS, sizeof(float) * ferro::FUSED_THREADS / 32,     \
                 stream, ferro::add_rms_norm<T>)((T*)sum, (const T*)x, (const T*)delta, (const T*)weight,    \
                                                 (T*)h, width, eps);                          \
    return (int)cudaGetLastError();                                                           \
  }                                                                                           \
  extern "C" int ferro_silu_mul_##NAME(void* out, const void* gate_up, int tokens, int width, \
                                       cudaStream_t stream) {                                 \
    if (tokens == 0) return 0;                                                                \
    FERRO_LAUNCH(tokens, ferro::FUSED_THREADS, 0, stream, ferro::silu_mul<T>)(                \
        (T*)out, (const T*)gate_up, width);                                                   \
    return (int)cudaGetLastError();                                                           \
  }

FERRO_FUSED_ENTRY_POINTS(f32, float)
FERRO_FUSED_ENTRY_POINTS(f16, __half)
#if defined(FERRO_BF16)
FERRO_FUSED_ENTRY_POINTS(bf16, __nv_bfloat16)
#endif
