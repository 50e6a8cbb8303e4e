// Paged attention for ferrollama: writing new keys and values into their cache slots, and
// attention of query rows over the paged cache on CUDA cores (decode rows, and every row in
// f32, which has no tensor-core path; prompt chunks in f16/bf16 go to flash_attention.cu).
// Launched from crates/kernels/src/cuda.rs on candle's stream.
//
// Layout (vLLM's, so reads of one key are 16-byte chunks): with x = 16 / sizeof(T),
//   key_cache   [blocks, kv_heads, head_dim / x, block_size, x]
//   value_cache [blocks, kv_heads, head_dim, block_size]
//
// Attention rows: each query row names its sequence's block table and how many keys it sees
// (its position + 1). One thread block takes one row, one KV head and the query heads of its
// GQA group (up to MAX_GROUP of them), so every key and value is read once for the whole group
// (vLLM paged_attention v2 and FlashInfer's decode do the same), in 16-byte loads. Keys are
// split into partitions; each computes an unnormalised partial result with its own max and sum,
// and a second kernel combines them, so long contexts spread over many thread blocks. With one
// partition the first kernel writes the output itself.

#include "ferro.cuh"

namespace ferro {

constexpr int THREADS = 128;
constexpr int WARPS = THREADS / 32;
constexpr int MAX_GROUP = 8;
constexpr int MAX_PARTITION = 512;

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
    key_cache[key_index(block, kv_head, d, offset, kv_heads, head_dim, block_size, pack<T>())] =
        key[token * width + i];
    value_cache[value_index(block, kv_head, d, offset, kv_heads, head_dim, block_size)] =
        value[token * width + i];
  }
}

// The largest power of two that divides n, at most 32: the lanes that share one key.
FERRO_HD constexpr int lanes_per_key(int chunks) {
  return chunks % 32 == 0 ? 32 : chunks % 16 == 0 ? 16 : chunks % 8 == 0 ? 8
       : chunks % 4 == 0 ? 4 : chunks % 2 == 0 ? 2 : 1;
}

// Which query heads thread block `x` of the grid's first dimension takes: the GQA group of
// one KV head, split into parts of at most MAX_GROUP heads.
struct HeadGroup {
  int kv_head, first_head, count;
};
FERRO_HD HeadGroup head_group(int x, int heads, int kv_heads) {
  const int group = heads / kv_heads;
  const int parts = (group + MAX_GROUP - 1) / MAX_GROUP;
  const int kv_head = x / parts;
  const int first = kv_head * group + (x % parts) * MAX_GROUP;
  const int last = kv_head * group + group;
  return {kv_head, first, (last - first) < MAX_GROUP ? (last - first) : MAX_GROUP};
}

// Keys [start, end) of a row's partition `part`: the row sees [first_visible, context).
struct KeyRange {
  int start, end;
};
FERRO_HD KeyRange partition_keys(int context, int window, int part, int partition) {
  const int start = first_visible(context - 1, window) + part * partition;
  const int end = start + partition < context ? start + partition : context;
  return {start, end};
}

// grid (kv_heads * head parts, launched rows, partitions), THREADS threads. Scores and
// maxima are kept in log2 units (the query is scaled by scale * log2 e).
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) attention_partition(
    T* __restrict__ out,           // [rows, heads, D], written when there is one partition
    float* __restrict__ part_out,  // [launched rows, heads, partitions, D], unnormalised
    float* __restrict__ part_max,  // [launched rows, heads, partitions]
    float* __restrict__ part_sum,  // [launched rows, heads, partitions]
    const T* __restrict__ q,       // [rows, heads, D]
    const T* __restrict__ key_cache, const T* __restrict__ value_cache,
    const uint32_t* __restrict__ block_tables,  // [seqs, max_blocks]
    const uint32_t* __restrict__ row_seq,       // [rows]
    const uint32_t* __restrict__ context_lens,  // [rows]
    const uint32_t* __restrict__ launched,      // [launched rows]: the batch rows computed here
    int heads, int kv_heads, int block_size, int max_blocks, int partition, float scale,
    int window) {
  constexpr int X = pack<T>();
  constexpr int CHUNKS = D / X;               // 16-byte chunks of one key
  constexpr int LANES = lanes_per_key(CHUNKS);  // lanes sharing one key
  constexpr int PER_LANE = CHUNKS / LANES;    // chunks each of them reads
  constexpr int KEYS_PER_WARP = 32 / LANES;
  constexpr int SLICES = THREADS / D > 0 ? THREADS / D : 1;  // thread groups over the values
  constexpr int DIMS = D > THREADS ? D / THREADS : 1;        // dimensions per thread

  FERRO_DYNAMIC_SHARED(float, shared);
  float* logits = shared;                            // [MAX_GROUP, partition]
  float* row_max = logits + MAX_GROUP * partition;   // [MAX_GROUP]
  float* row_sum = row_max + MAX_GROUP;              // [MAX_GROUP]
  float* slice_acc = row_sum + MAX_GROUP;            // [SLICES, MAX_GROUP, D]

  const HeadGroup hg = head_group(blockIdx.x, heads, kv_heads);
  const int launched_row = blockIdx.y;
  const int row = launched[launched_row];
  const int part = blockIdx.z;
  const int parts = gridDim.z;
  const KeyRange keys = partition_keys(context_lens[row], window, part, partition);
  const int n = keys.end - keys.start;

  if (n <= 0) {  // this partition lies past the row's keys: it weighs nothing
    for (int i = threadIdx.x; i < hg.count * D; i += THREADS) {
      const int64_t at = ((int64_t)launched_row * heads + hg.first_head + i / D) * parts + part;
      part_out[at * D + i % D] = 0.f;
      if (i % D == 0) {
        part_max[at] = -INFINITY;
        part_sum[at] = 0.f;
      }
    }
    return;
  }
  const uint32_t* table = block_tables + (int64_t)row_seq[row] * max_blocks;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // Scores: LANES lanes per key, each with PER_LANE 16-byte chunks of it and of every query.
  {
    const int key_lane = lane % LANES, key_slot = lane / LANES;
    float qv[MAX_GROUP][PER_LANE][X];
    const float q_scale = scale * kLog2e;
#pragma unroll
    for (int h = 0; h < MAX_GROUP; ++h) {
#pragma unroll
      for (int p = 0; p < PER_LANE; ++p) {
        const int c = key_lane + p * LANES;
#pragma unroll
        for (int e = 0; e < X; ++e) {
          qv[h][p][e] = h < hg.count
                            ? to_float<T>(q[((int64_t)row * heads + hg.first_head + h) * D +
                                            c * X + e]) * q_scale
                            : 0.f;
        }
      }
    }
    // Warp-uniform trip count: every lane shuffles on every pass.
    for (int base = keys.start + warp * KEYS_PER_WARP; base < keys.end;
         base += WARPS * KEYS_PER_WARP) {
      const int j = base + key_slot;
      const bool valid = j < keys.end;
      float dot[MAX_GROUP];
#pragma unroll
      for (int h = 0; h < MAX_GROUP; ++h) dot[h] = 0.f;
      if (valid) {
        const int64_t block = table[j / block_size];
        const int offset = j % block_size;
#pragma unroll
        for (int p = 0; p < PER_LANE; ++p) {
          const int c = key_lane + p * LANES;
          const uint4 chunk = *reinterpret_cast<const uint4*>(
              key_cache + key_index(block, hg.kv_head, c * X, offset, kv_heads, D, block_size, X));
          T k[X];
          memcpy(k, &chunk, 16);
#pragma unroll
          for (int e = 0; e < X; ++e) {
            const float kf = to_float<T>(k[e]);
#pragma unroll
            for (int h = 0; h < MAX_GROUP; ++h) dot[h] += qv[h][p][e] * kf;
          }
        }
      }
#pragma unroll
      for (int h = 0; h < MAX_GROUP; ++h) {
        if (h < hg.count) dot[h] = lanes_sum<LANES>(dot[h]);  // uniform over the block
      }
      if (valid && key_lane == 0) {
        for (int h = 0; h < hg.count; ++h) logits[h * partition + (j - keys.start)] = dot[h];
      }
    }
  }
  __syncthreads();

  // Softmax within the partition: a warp per head.
  for (int h = warp; h < hg.count; h += WARPS) {
    float m = -INFINITY;
    for (int i = lane; i < n; i += 32) m = fmaxf(m, logits[h * partition + i]);
    m = lanes_max<32>(m);
    float s = 0.f;
    for (int i = lane; i < n; i += 32) {
      const float e = exp2f(logits[h * partition + i] - m);
      logits[h * partition + i] = e;
      s += e;
    }
    s = lanes_sum<32>(s);
    if (lane == 0) {
      row_max[h] = m;
      row_sum[h] = s;
    }
  }
  __syncthreads();

  // Weighted values: a thread per dimension (DIMS of them when D > THREADS), SLICES thread
  // groups over the key blocks; a block's values of one dimension are contiguous.
  const int slice = threadIdx.x / (D < THREADS ? D : THREADS);
  const int d0 = threadIdx.x % (D < THREADS ? D : THREADS);
  const bool active = slice < SLICES;
  float acc[MAX_GROUP][DIMS];
#pragma unroll
  for (int h = 0; h < MAX_GROUP; ++h)
#pragma unroll
    for (int i = 0; i < DIMS; ++i) acc[h][i] = 0.f;
  if (active) {
    const int first_block = keys.start / block_size;
    const int last_block = (keys.end - 1) / block_size;
    for (int b = first_block + slice; b <= last_block; b += SLICES) {
      const int64_t block = table[b];
      const int lo = max(keys.start, b * block_size) - b * block_size;
      const int hi = min(keys.end, (b + 1) * block_size) - b * block_size;
#pragma unroll
      for (int i = 0; i < DIMS; ++i) {
        const int d = d0 + i * THREADS;
        const T* v = value_cache + value_index(block, hg.kv_head, d, 0, kv_heads, D, block_size);
        const int key0 = b * block_size - keys.start;  // this block's first key, in `logits`
        if (lo == 0 && hi == block_size && block_size % X == 0) {
          for (int o = 0; o < block_size; o += X) {
            const uint4 chunk = *reinterpret_cast<const uint4*>(v + o);
            T vals[X];
            memcpy(vals, &chunk, 16);
#pragma unroll
            for (int e = 0; e < X; ++e) {
              const float vf = to_float<T>(vals[e]);
#pragma unroll
              for (int h = 0; h < MAX_GROUP; ++h)
                if (h < hg.count) acc[h][i] += logits[h * partition + key0 + o + e] * vf;
            }
          }
        } else {
          for (int o = lo; o < hi; ++o) {
            const float vf = to_float<T>(v[o]);
#pragma unroll
            for (int h = 0; h < MAX_GROUP; ++h)
              if (h < hg.count) acc[h][i] += logits[h * partition + key0 + o] * vf;
          }
        }
      }
    }
    if (SLICES > 1) {
#pragma unroll
      for (int h = 0; h < MAX_GROUP; ++h) slice_acc[(slice * MAX_GROUP + h) * D + d0] = acc[h][0];
    }
  }
  if (SLICES > 1) {
    __syncthreads();
    if (slice == 0) {
      for (int s = 1; s < SLICES; ++s)
#pragma unroll
        for (int h = 0; h < MAX_GROUP; ++h) acc[h][0] += slice_acc[(s * MAX_GROUP + h) * D + d0];
    }
  }
  if (slice != 0) return;
  for (int h = 0; h < hg.count; ++h) {
    const int head = hg.first_head + h;
#pragma unroll
    for (int i = 0; i < DIMS; ++i) {
      const int d = d0 + i * THREADS;
      if (parts == 1) {
        out[((int64_t)row * heads + head) * D + d] = from_float<T>(acc[h][i] / row_sum[h]);
      } else {
        const int64_t at = ((int64_t)launched_row * heads + head) * parts + part;
        part_out[at * D + d] = acc[h][i];
        if (d == 0) {
          part_max[at] = row_max[h];
          part_sum[at] = row_sum[h];
        }
      }
    }
  }
}

// grid (heads, launched rows): the partitions of one row and head, rescaled to their common max.
template <typename T>
__global__ void combine_partitions(T* __restrict__ out, const float* __restrict__ part_out,
                                   const float* __restrict__ part_max,
                                   const float* __restrict__ part_sum,
                                   const uint32_t* __restrict__ launched, int heads, int head_dim,
                                   int partitions) {
  const int head = blockIdx.x;
  const int launched_row = blockIdx.y;
  const int row = launched[launched_row];
  const int64_t base = ((int64_t)launched_row * heads + head) * partitions;
  float m = -INFINITY;
  for (int p = 0; p < partitions; ++p) m = fmaxf(m, part_max[base + p]);
  float total = 0.f;
  for (int p = 0; p < partitions; ++p) total += part_sum[base + p] * exp2f(part_max[base + p] - m);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int p = 0; p < partitions; ++p) {
      acc += part_out[(base + p) * head_dim + d] * exp2f(part_max[base + p] - m);
    }
    out[((int64_t)row * heads + head) * head_dim + d] = from_float<T>(acc / total);
  }
}

// Shared memory of attention_partition for one partition size and head dimension.
inline size_t partition_shared_bytes(int partition, int head_dim) {
  const int slices = THREADS / head_dim > 0 ? THREADS / head_dim : 1;
  const int dims = head_dim < THREADS ? head_dim : THREADS;
  return sizeof(float) * ((size_t)MAX_GROUP * partition + 2 * MAX_GROUP +
                          (slices > 1 ? (size_t)slices * MAX_GROUP * dims : 0));
}

template <typename T, int D>
int launch_attention(T* out, float* part_out, float* part_max, float* part_sum, const T* q,
                     const T* key_cache, const T* value_cache, const uint32_t* block_tables,
                     const uint32_t* row_seq, const uint32_t* context_lens,
                     const uint32_t* launched, int rows, int heads, int kv_heads, int block_size,
                     int max_blocks, int partition, int partitions, float scale, int window,
                     cudaStream_t stream) {
  const int head_parts = (heads / kv_heads + MAX_GROUP - 1) / MAX_GROUP;
  const dim3 grid(kv_heads * head_parts, rows, partitions);
  FERRO_LAUNCH(grid, THREADS, partition_shared_bytes(partition, D), stream,
               attention_partition<T, D>)(out, part_out, part_max, part_sum, q, key_cache,
                                          value_cache, block_tables, row_seq, context_lens,
                                          launched, heads, kv_heads, block_size, max_blocks,
                                          partition, scale, window);
  int err = (int)cudaGetLastError();
  if (err != 0 || partitions == 1) return err;
  FERRO_LAUNCH(dim3(heads, rows), D < 1024 ? D : 1024, 0, stream, combine_partitions<T>)(
      out, part_out, part_max, part_sum, launched, heads, D, partitions);
  return (int)cudaGetLastError();
}

}  // namespace ferro

// The error code for a head dimension without a kernel (cudaError_t values are positive).
#define FERRO_NO_KERNEL (-1)

// The C entry points, one per dtype. Each returns the launch's cudaError_t (0 on success).
#define FERRO_ENTRY_POINTS(NAME, T)                                                             \
  extern "C" int ferro_reshape_and_cache_##NAME(                                                \
      const void* key, const void* value, void* key_cache, void* value_cache,                   \
      const uint32_t* slots, int tokens, int kv_heads, int head_dim, int block_size,            \
      cudaStream_t stream) {                                                                    \
    if (tokens == 0) return 0;                                                                  \
    const int threads = min(512, kv_heads * head_dim);                                          \
    FERRO_LAUNCH(tokens, threads, 0, stream, ferro::reshape_and_cache<T>)(                      \
        (const T*)key, (const T*)value, (T*)key_cache, (T*)value_cache, slots, kv_heads,        \
        head_dim, block_size);                                                                  \
    return (int)cudaGetLastError();                                                             \
  }                                                                                             \
  extern "C" int ferro_paged_attention_##NAME(                                                  \
      void* out, float* part_out, float* part_max, float* part_sum, const void* q,              \
      const void* key_cache, const void* value_cache, const uint32_t* block_tables,             \
      const uint32_t* row_seq, const uint32_t* context_lens, const uint32_t* launched,          \
      int rows, int heads, int kv_heads, int head_dim, int block_size, int max_blocks,          \
      int partition, int partitions, float scale, int window, cudaStream_t stream) {            \
    if (rows == 0) return 0;                                                                    \
    if (partition <= 0 || partition > ferro::MAX_PARTITION || heads % kv_heads != 0)            \
      return FERRO_NO_KERNEL;                                                                   \
    switch (head_dim) {                                                                         \
      FERRO_ATTENTION_CASE(T, 16)                                                               \
      FERRO_ATTENTION_CASE(T, 32)                                                               \
      FERRO_ATTENTION_CASE(T, 64)                                                               \
      FERRO_ATTENTION_CASE(T, 80)                                                               \
      FERRO_ATTENTION_CASE(T, 96)                                                               \
      FERRO_ATTENTION_CASE(T, 128)                                                              \
      FERRO_ATTENTION_CASE(T, 256)                                                              \
      default:                                                                                  \
        return FERRO_NO_KERNEL;                                                                 \
    }                                                                                           \
  }

#define FERRO_ATTENTION_CASE(T, D)                                                              \
  case D:                                                                                       \
    return ferro::launch_attention<T, D>(                                                       \
        (T*)out, part_out, part_max, part_sum, (const T*)q, (const T*)key_cache,                \
        (const T*)value_cache, block_tables, row_seq, context_lens, launched, rows, heads,      \
        kv_heads, block_size, max_blocks, partition, partitions, scale, window, stream);

FERRO_ENTRY_POINTS(f32, float)
FERRO_ENTRY_POINTS(f16, __half)
#if defined(FERRO_BF16)
FERRO_ENTRY_POINTS(bf16, __nv_bfloat16)
#endif

// The largest partition the host may ask for (it sizes the scratch by its own choice).
extern "C" int ferro_attention_max_partition() { return ferro::MAX_PARTITION; }
