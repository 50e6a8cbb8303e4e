// Paged attention for ferrollama: writing new keys and values into their cache slots, and
// attention of query rows over the paged cache. Launched from crates/kernels/src/cuda.rs as
// candle custom ops, on candle's stream.
//
// Layout (vLLM's, so reads of one key are 16-byte chunks): with x = 16 / sizeof(T),
//   key_cache   [blocks, kv_heads, head_dim / x, block_size, x]
//   value_cache [blocks, kv_heads, head_dim, block_size]
//
// Attention rows: each query row names its sequence's block table and how many keys it sees
// (its position + 1), so one decoding token per sequence, or every token of a prompt chunk
// (whose own keys were written first), take the same kernel. Keys are split into partitions
// of PARTITION; one thread block per (head, row, partition) computes an unnormalised partial
// result with its own max and sum, and a second kernel combines the partitions (vLLM's
// paged_attention_v2 idea), so long contexts spread over many blocks.

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <float.h>
#include <stdint.h>
#if defined(FERRO_BF16)
#include <cuda_bf16.h>
#endif

namespace ferro {

constexpr int PARTITION = 512;
constexpr int THREADS = 128;
constexpr int WARPS = THREADS / 32;

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

// Elements of T in 16 bytes: the innermost extent of the key layout.
template <typename T> __host__ __device__ constexpr int pack() { return 16 / sizeof(T); }

template <typename T>
__device__ __forceinline__ int64_t key_index(int64_t block, int kv_head, int d, int offset,
                                             int kv_heads, int head_dim, int block_size) {
  constexpr int x = pack<T>();
  return (((block * kv_heads + kv_head) * (head_dim / x) + d / x) * block_size + offset) * x + d % x;
}

__device__ __forceinline__ int64_t value_index(int64_t block, int kv_head, int d, int offset,
                                               int kv_heads, int head_dim, int block_size) {
  return ((block * kv_heads + kv_head) * head_dim + d) * block_size + offset;
}

// One thread block per new token: its keys and values ([tokens, kv_heads, head_dim],
// contiguous) go to its slot.
template <typename T>
__global__ void reshape_and_cache(const T* __restrict__ key, const T* __restrict__ value,
                                  T* __restrict__ key_cache, T* __restrict__ value_cache,
                                  const uint32_t* __restrict__ slots, int kv_heads, int head_dim,
                                  int block_size) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slots[token];
  const int64_t block = slot / block_size;
  const int offset = slot % block_size;
  const int width = kv_heads * head_dim;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const int kv_head = i / head_dim;
    const int d = i % head_dim;
    key_cache[key_index<T>(block, kv_head, d, offset, kv_heads, head_dim, block_size)] =
        key[token * width + i];
    value_cache[value_index(block, kv_head, d, offset, kv_heads, head_dim, block_size)] =
        value[token * width + i];
  }
}

// Max (or sum) over the thread block; every thread gets the result. `scratch` holds WARPS.
template <bool MAX> __device__ float block_reduce(float v, float* scratch) {
  for (int o = 16; o > 0; o /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = MAX ? fmaxf(v, other) : v + other;
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < WARPS; ++w) r = MAX ? fmaxf(r, scratch[w]) : r + scratch[w];
  __syncthreads();
  return r;
}

// grid (heads, rows, partitions), THREADS threads. Row r attends to keys
// [first, context_lens[r]) of sequence row_seq[r], first = context - window when windowed.
template <typename T>
__global__ void attention_partition(
    float* __restrict__ part_out,  // [rows, heads, partitions, head_dim], unnormalised
    float* __restrict__ part_max,  // [rows, heads, partitions]
    float* __restrict__ part_sum,  // [rows, heads, partitions]
    const T* __restrict__ q,       // [rows, heads, head_dim]
    const T* __restrict__ key_cache, const T* __restrict__ value_cache,
    const uint32_t* __restrict__ block_tables,  // [seqs, max_blocks]
    const uint32_t* __restrict__ row_seq,       // [rows]
    const uint32_t* __restrict__ context_lens,  // [rows]
    int heads, int kv_heads, int head_dim, int block_size, int max_blocks, float scale,
    int window) {
  extern __shared__ float shared[];
  float* q_s = shared;                   // [head_dim]
  float* logits = q_s + head_dim;        // [PARTITION]
  float* scratch = logits + PARTITION;   // [WARPS]

  const int head = blockIdx.x;
  const int row = blockIdx.y;
  const int part = blockIdx.z;
  const int kv_head = head / (heads / kv_heads);
  const int context = context_lens[row];
  const int first = window > 0 ? max(0, context - window) : 0;
  const int start = first + part * PARTITION;
  const int end = min(context, start + PARTITION);
  const int64_t at = ((int64_t)row * heads + head) * gridDim.z + part;

  if (start >= end) {  // this partition lies past the row's keys: it weighs nothing
    if (threadIdx.x == 0) {
      part_max[at] = -FLT_MAX;
      part_sum[at] = 0.f;
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) part_out[at * head_dim + d] = 0.f;
    return;
  }

  const uint32_t* table = block_tables + (int64_t)row_seq[row] * max_blocks;
  const T* q_row = q + ((int64_t)row * heads + head) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q_s[d] = to_float(q_row[d]) * scale;
  __syncthreads();

  // Scores: a warp per key, its lanes across the head's dimensions.
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  for (int j = start + warp; j < end; j += WARPS) {
    const int64_t block = table[j / block_size];
    const int offset = j % block_size;
    float dot = 0.f;
    for (int d = lane; d < head_dim; d += 32) {
      dot += q_s[d] *
             to_float(key_cache[key_index<T>(block, kv_head, d, offset, kv_heads, head_dim,
                                             block_size)]);
    }
    for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) logits[j - start] = dot;
  }
  __syncthreads();

  const int n = end - start;
  float m = -FLT_MAX;
  for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, logits[i]);
  m = block_reduce<true>(m, scratch);
  float sum = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float e = expf(logits[i] - m);
    logits[i] = e;
    sum += e;
  }
  sum = block_reduce<false>(sum, scratch);  // its barrier also publishes the exps

  // Weighted values: a thread per dimension, walking the keys.
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int j = start; j < end; ++j) {
      const int64_t block = table[j / block_size];
      acc += logits[j - start] *
             to_float(value_cache[value_index(block, kv_head, d, j % block_size, kv_heads,
                                              head_dim, block_size)]);
    }
    part_out[at * head_dim + d] = acc;
  }
  if (threadIdx.x == 0) {
    part_max[at] = m;
    part_sum[at] = sum;
  }
}

// grid (heads, rows): the partitions of one row and head, rescaled to their common max.
template <typename T>
__global__ void combine_partitions(T* __restrict__ out, const float* __restrict__ part_out,
                                   const float* __restrict__ part_max,
                                   const float* __restrict__ part_sum, int heads, int head_dim,
                                   int partitions) {
  const int head = blockIdx.x;
  const int row = blockIdx.y;
  const int64_t base = ((int64_t)row * heads + head) * partitions;
  float m = -FLT_MAX;
  for (int p = 0; p < partitions; ++p) m = fmaxf(m, part_max[base + p]);
  float total = 0.f;
  for (int p = 0; p < partitions; ++p) total += part_sum[base + p] * expf(part_max[base + p] - m);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int p = 0; p < partitions; ++p) {
      acc += part_out[(base + p) * head_dim + d] * expf(part_max[base + p] - m);
    }
    out[((int64_t)row * heads + head) * head_dim + d] = from_float<T>(acc / total);
  }
}

}  // namespace ferro

// The C entry points, one per dtype. Each returns the launch's cudaError_t (0 on success).
#define FERRO_ENTRY_POINTS(NAME, T)                                                            \
  extern "C" int ferro_reshape_and_cache_##NAME(                                               \
      const void* key, const void* value, void* key_cache, void* value_cache,                  \
      const uint32_t* slots, int tokens, int kv_heads, int head_dim, int block_size,           \
      cudaStream_t stream) {                                                                   \
    if (tokens == 0) return 0;                                                                 \
    const int threads = min(512, kv_heads * head_dim);                                         \
    ferro::reshape_and_cache<T><<<tokens, threads, 0, stream>>>(                               \
        (const T*)key, (const T*)value, (T*)key_cache, (T*)value_cache, slots, kv_heads,       \
        head_dim, block_size);                                                                 \
    return (int)cudaGetLastError();                                                            \
  }                                                                                            \
  extern "C" int ferro_paged_attention_##NAME(                                                 \
      void* out, float* part_out, float* part_max, float* part_sum, const void* q,             \
      const void* key_cache, const void* value_cache, const uint32_t* block_tables,            \
      const uint32_t* row_seq, const uint32_t* context_lens, int rows, int heads,              \
      int kv_heads, int head_dim, int block_size, int max_blocks, int partitions, float scale, \
      int window, cudaStream_t stream) {                                                       \
    if (rows == 0) return 0;                                                                   \
    const size_t shared = (head_dim + ferro::PARTITION + ferro::WARPS) * sizeof(float);        \
    ferro::attention_partition<T><<<dim3(heads, rows, partitions), ferro::THREADS, shared,     \
                                    stream>>>(                                                 \
        part_out, part_max, part_sum, (const T*)q, (const T*)key_cache,                        \
        (const T*)value_cache, block_tables, row_seq, context_lens, heads, kv_heads, head_dim, \
        block_size, max_blocks, scale, window);                                                \
    int err = (int)cudaGetLastError();                                                         \
    if (err != 0) return err;                                                                  \
    ferro::combine_partitions<T><<<dim3(heads, rows), min(head_dim, 1024), 0, stream>>>(      \
        (T*)out, part_out, part_max, part_sum, heads, head_dim, partitions);                   \
    return (int)cudaGetLastError();                                                            \
  }

FERRO_ENTRY_POINTS(f32, float)
FERRO_ENTRY_POINTS(f16, __half)
#if defined(FERRO_BF16)
FERRO_ENTRY_POINTS(bf16, __nv_bfloat16)
#endif

// The partition size the host must plan scratch for.
extern "C" int ferro_attention_partition_size() { return ferro::PARTITION; }
