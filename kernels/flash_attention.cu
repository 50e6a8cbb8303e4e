// Prompt attention on tensor cores, FlashAttention-2 style, over the paged KV cache: the rows
// of a prompt chunk (and of a speculative draft) see their sequence's cached keys and each
// other, causally, within the sliding window when the model has one.
//
// A thread block takes one tile of a sequence's new rows and one KV head. Its BM = 64 query
// rows are packed (token, head) pairs: the GQA group's heads of 64 / group consecutive tokens,
// so the K and V of that KV head are loaded into shared memory once for all of them. Four warps
// each own 16 packed rows and walk the keys in tiles of BN = 64:
//   S = Q K^T by mma.sync m16n8k16 (two m16n8k8 on sm_75), f32 accumulators;
//   causal and window mask, online softmax in f32 (log2 units), O rescaled per row;
//   O += P V by mma, P taken straight from S's accumulators (their layout is an A fragment's).
// f16 and bf16 (sm_80+) only: f32 models and unsupported shapes use paged_attention.cu.
// The host splits each sequence's new rows into tiles (`tiles`, three u32 per tile: sequence,
// first batch row, tokens) once per step, with ferro_flash_tokens_per_tile.

#include "ferro.cuh"

namespace ferro {
namespace flash {

constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int BM = 16 * WARPS;  // packed query rows per thread block
constexpr int BN = 64;          // keys per tile
constexpr int PAD = 8;          // elements of padding per shared row: conflict-free fragments

// Tokens of one tile for a GQA group of `group` query heads per KV head.
FERRO_HD int tokens_per_tile(int group) { return group >= 1 && group <= BM ? BM / group : 0; }

// Packed row r of a tile: token r / group of the tile, query head kv_head * group + r % group.
struct PackedRow {
  int token, head;
};
FERRO_HD PackedRow packed_row(int r, int group, int kv_head) {
  return {r / group, kv_head * group + r % group};
}

// Shared memory: K tile [BN][D + PAD], V tile transposed [D][BN + PAD].
FERRO_HD int k_stride(int d) { return d + PAD; }
FERRO_HD int v_stride() { return BN + PAD; }
template <typename T> FERRO_HD size_t shared_bytes(int d) {
  return sizeof(T) * ((size_t)BN * k_stride(d) + (size_t)d * v_stride());
}

template <typename T, int D>
__global__ void __launch_bounds__(THREADS) flash_attention(
    T* __restrict__ out,      // [rows, heads, D]
    const T* __restrict__ q,  // [rows, heads, D]
    const T* __restrict__ key_cache, const T* __restrict__ value_cache,
    const uint32_t* __restrict__ block_tables,  // [seqs, max_blocks]
    const uint32_t* __restrict__ context_lens,  // [rows]: position + 1
    const uint32_t* __restrict__ tiles,         // [tiles, 3]
    int heads, int kv_heads, int block_size, int max_blocks, float scale, int window) {
  constexpr int X = pack<T>();
  constexpr int KSTEPS = D / 16;  // over the head dimension, for S
  constexpr int S_TILES = BN / 8;  // 8-key column tiles of S
  constexpr int O_TILES = D / 8;   // 8-dimension column tiles of O
  constexpr int KS = D + PAD, VS = BN + PAD;
  FERRO_DYNAMIC_SHARED(T, shared);
  T* k_tile = shared;            // [BN][KS]
  T* v_tile = shared + BN * KS;  // [D][VS]

  const int group = heads / kv_heads;
  const int kv_head = blockIdx.y;
  const uint32_t* tile = tiles + (int64_t)blockIdx.x * 3;
  const int seq = tile[0], row0 = tile[1], tokens = tile[2];
  const uint32_t* table = block_tables + (int64_t)seq * max_blocks;
  const int valid_rows = tokens * group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // The two rows of the warp's 16 that this lane's accumulators hold (C elements 0-1, 2-3).
  int position[2];
  bool row_ok[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int packed = warp * 16 + c_row(lane, 2 * r);
    row_ok[r] = packed < valid_rows;
    position[r] =
        row_ok[r] ? (int)context_lens[row0 + packed_row(packed, group, kv_head).token] - 1 : -1;
  }

  // Q as A fragments, one per 16-dimension step, straight from global memory.
  uint32_t qa[KSTEPS][4];
#pragma unroll
  for (int s = 0; s < KSTEPS; ++s) {
#pragma unroll
    for (int reg = 0; reg < 4; ++reg) {
      const int packed = warp * 16 + a_row(lane, 2 * reg);
      const int col = s * 16 + a_col(lane, 2 * reg);  // and col + 1, in the same register
      qa[s][reg] = 0;
      if (packed < valid_rows) {
        const PackedRow pr = packed_row(packed, group, kv_head);
        qa[s][reg] = *reinterpret_cast<const uint32_t*>(
            q + ((int64_t)(row0 + pr.token) * heads + pr.head) * D + col);
      }
    }
  }

  float o[O_TILES][4];
#pragma unroll
  for (int t = 0; t < O_TILES; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) o[t][i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};  // this lane's part of it; the 4 lanes of a row add up at the end
  const float scale2 = scale * kLog2e;

  const int first_pos = (int)context_lens[row0] - 1;
  const int last_pos = (int)context_lens[row0 + tokens - 1] - 1;
  const int kv_begin = first_visible(first_pos, window);
  const int kv_end = last_pos + 1;

  for (int kv0 = kv_begin / BN * BN; kv0 < kv_end; kv0 += BN) {
    __syncthreads();  // every warp is done with the previous tile
    // Keys: BN x D/X chunks of 16 bytes; consecutive threads take consecutive keys.
    for (int i = threadIdx.x; i < BN * (D / X); i += THREADS) {
      const int key = i % BN, c = i / BN, j = kv0 + key;
      uint4 v = {0, 0, 0, 0};
      if (j >= kv_begin && j < kv_end) {
        const int64_t block = table[j / block_size];
        v = *reinterpret_cast<const uint4*>(key_cache + key_index(block, kv_head, c * X,
                                                                  j % block_size, kv_heads, D,
                                                                  block_size, X));
      }
      *reinterpret_cast<uint4*>(k_tile + key * KS + c * X) = v;
    }
    // Values: D x BN/X chunks of X consecutive keys of one dimension (block_size % X == 0).
    for (int i = threadIdx.x; i < D * (BN / X); i += THREADS) {
      const int chunk = i % (BN / X), d = i / (BN / X), j = kv0 + chunk * X;
      uint4 v = {0, 0, 0, 0};
      if (j >= kv_begin && j + X <= kv_end) {
        const int64_t block = table[j / block_size];
        v = *reinterpret_cast<const uint4*>(
            value_cache + value_index(block, kv_head, d, j % block_size, kv_heads, D, block_size));
      } else if (j + X > kv_begin && j < kv_end) {  // a chunk the key range cuts: one by one
        T elements[X];
#pragma unroll
        for (int e = 0; e < X; ++e) {
          const int je = j + e;
          elements[e] = from_float<T>(0.f);
          if (je >= kv_begin && je < kv_end) {
            elements[e] = value_cache[value_index(table[je / block_size], kv_head, d,
                                                  je % block_size, kv_heads, D, block_size)];
          }
        }
        memcpy(&v, elements, 16);
      }
      *reinterpret_cast<uint4*>(v_tile + d * VS + chunk * X) = v;
    }
    __syncthreads();

    // S = Q K^T for the warp's 16 rows and the tile's BN keys.
    float s[S_TILES][4];
#pragma unroll
    for (int n = 0; n < S_TILES; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s[n][i] = 0.f;
      const T* key_row = k_tile + (n * 8 + b_col(lane, 0)) * KS;
#pragma unroll
      for (int st = 0; st < KSTEPS; ++st) {
        uint32_t b[2];
        b[0] = *reinterpret_cast<const uint32_t*>(key_row + st * 16 + b_row(lane, 0));
        b[1] = *reinterpret_cast<const uint32_t*>(key_row + st * 16 + b_row(lane, 2));
        mma_16816<T>(s[n], qa[st], b);
      }
    }

    // Mask, then the online softmax per row.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int first = first_visible(position[r], window);
      float tile_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < S_TILES; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = kv0 + n * 8 + c_col(lane, 2 * r + e);
          const bool visible = row_ok[r] && key <= position[r] && key >= first;
          const float v = visible ? s[n][2 * r + e] * scale2 : -INFINITY;
          s[n][2 * r + e] = v;
          tile_max = fmaxf(tile_max, v);
        }
      }
      tile_max = lanes_max<4>(tile_max);  // the 4 lanes holding this row
      const float new_max = fmaxf(row_max[r], tile_max);
      const float correction = rescale(row_max[r], new_max);
      // A row that has seen nothing yet keeps weights of exp2(-inf) = 0.
      const float base = new_max == -INFINITY ? 0.f : new_max;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < S_TILES; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float p = exp2f(s[n][2 * r + e] - base);
          s[n][2 * r + e] = p;
          sum += p;
        }
      }
      row_sum[r] = row_sum[r] * correction + sum;
      row_max[r] = new_max;
#pragma unroll
      for (int t = 0; t < O_TILES; ++t) {
        o[t][2 * r] *= correction;
        o[t][2 * r + 1] *= correction;
      }
    }

    // O += P V: two 8-key column tiles of S make one 16-key A fragment.
#pragma unroll
    for (int st = 0; st < BN / 16; ++st) {
      uint32_t pa[4];
      pa[0] = pack2<T>(s[2 * st][0], s[2 * st][1]);
      pa[1] = pack2<T>(s[2 * st][2], s[2 * st][3]);
      pa[2] = pack2<T>(s[2 * st + 1][0], s[2 * st + 1][1]);
      pa[3] = pack2<T>(s[2 * st + 1][2], s[2 * st + 1][3]);
#pragma unroll
      for (int t = 0; t < O_TILES; ++t) {
        const T* value_row = v_tile + (t * 8 + b_col(lane, 0)) * VS + st * 16;
        uint32_t b[2];
        b[0] = *reinterpret_cast<const uint32_t*>(value_row + b_row(lane, 0));
        b[1] = *reinterpret_cast<const uint32_t*>(value_row + b_row(lane, 2));
        mma_16816<T>(o[t], pa, b);
      }
    }
  }

  // Normalise and write this lane's elements of its two rows.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = lanes_sum<4>(row_sum[r]);
    if (!row_ok[r]) continue;
    const float inv = total > 0.f ? 1.f / total : 0.f;
    const PackedRow pr = packed_row(warp * 16 + c_row(lane, 2 * r), group, kv_head);
    T* out_row = out + ((int64_t)(row0 + pr.token) * heads + pr.head) * D;
#pragma unroll
    for (int t = 0; t < O_TILES; ++t) {
      *reinterpret_cast<uint32_t*>(out_row + t * 8 + c_col(lane, 2 * r)) =
          pack2<T>(o[t][2 * r] * inv, o[t][2 * r + 1] * inv);
    }
  }
}

template <typename T, int D>
int launch(T* out, const T* q, const T* key_cache, const T* value_cache,
           const uint32_t* block_tables, const uint32_t* context_lens, const uint32_t* tiles,
           int n_tiles, int heads, int kv_heads, int block_size, int max_blocks, float scale,
           int window, cudaStream_t stream) {
  FERRO_LAUNCH(dim3(n_tiles, kv_heads), THREADS, shared_bytes<T>(D), stream,
               flash_attention<T, D>)(out, q, key_cache, value_cache, block_tables,
                                      context_lens, tiles, heads, kv_heads, block_size,
                                      max_blocks, scale, window);
  return (int)cudaGetLastError();
}

}  // namespace flash
}  // namespace ferro

#define FERRO_NO_KERNEL (-1)

// Whether the flash kernel takes this shape (head_dim, GQA group, cache block size).
extern "C" int ferro_flash_supported(int head_dim, int group, int block_size) {
  const bool dim = head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
  return dim && ferro::flash::tokens_per_tile(group) > 0 && block_size % 8 == 0;
}

extern "C" int ferro_flash_tokens_per_tile(int group) {
  return ferro::flash::tokens_per_tile(group);
}

#define FERRO_FLASH_CASE(T, D)                                                                \
  case D:                                                                                     \
    return ferro::flash::launch<T, D>((T*)out, (const T*)q, (const T*)key_cache,              \
                                      (const T*)value_cache, block_tables, context_lens,      \
                                      tiles, n_tiles, heads, kv_heads, block_size,            \
                                      max_blocks, scale, window, stream);

#define FERRO_FLASH_ENTRY_POINT(NAME, T)                                                      \
  extern "C" int ferro_flash_attention_##NAME(                                                \
      void* out, const void* q, const void* key_cache, const void* value_cache,               \
      const uint32_t* block_tables, const uint32_t* context_lens, const uint32_t* tiles,      \
      int n_tiles, int heads, int kv_heads, int head_dim, int block_size, int max_blocks,     \
      float scale, int window, cudaStream_t stream) {                                         \
    if (n_tiles == 0) return 0;                                                               \
    if (heads % kv_heads != 0 || !ferro_flash_supported(head_dim, heads / kv_heads, block_size)) \
      return FERRO_NO_KERNEL;                                                                 \
    switch (head_dim) {                                                                       \
      FERRO_FLASH_CASE(T, 16)                                                                 \
      FERRO_FLASH_CASE(T, 32)                                                                 \
      FERRO_FLASH_CASE(T, 64)                                                                 \
      FERRO_FLASH_CASE(T, 128)                                                                \
      default:                                                                                \
        return FERRO_NO_KERNEL;                                                               \
    }                                                                                         \
  }

FERRO_FLASH_ENTRY_POINT(f16, __half)
#if defined(FERRO_BF16)
FERRO_FLASH_ENTRY_POINT(bf16, __nv_bfloat16)
#endif

// ---- a check of the fragment layouts, for the kernel tests ----

namespace ferro {
// One warp: c (16 x 8, row-major) = a (16 x 16, row-major) b (16 x 8, row-major), through the
// fragment coordinates above and one mma_16816. On a GPU this holds the layouts to the
// hardware's; under emulation, to the PTX ISA's tables.
template <typename T>
__global__ void mma_check(float* c, const T* a, const T* b) {
  const int lane = threadIdx.x;
  uint32_t fa[4], fb[2];
  for (int reg = 0; reg < 4; ++reg) {
    const int i = 2 * reg;
    fa[reg] = pack2<T>(to_float<T>(a[a_row(lane, i) * 16 + a_col(lane, i)]),
                       to_float<T>(a[a_row(lane, i + 1) * 16 + a_col(lane, i + 1)]));
  }
  for (int reg = 0; reg < 2; ++reg) {
    const int i = 2 * reg;
    fb[reg] = pack2<T>(to_float<T>(b[b_row(lane, i) * 8 + b_col(lane, i)]),
                       to_float<T>(b[b_row(lane, i + 1) * 8 + b_col(lane, i + 1)]));
  }
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  mma_16816<T>(d, fa, fb);
  for (int i = 0; i < 4; ++i) c[c_row(lane, i) * 8 + c_col(lane, i)] = d[i];
}
}  // namespace ferro

extern "C" int ferro_mma_check_f16(float* c, const void* a, const void* b, cudaStream_t stream) {
  FERRO_LAUNCH(1, 32, 0, stream, ferro::mma_check<__half>)(c, (const __half*)a, (const __half*)b);
  return (int)cudaGetLastError();
}
#if defined(FERRO_BF16)
extern "C" int ferro_mma_check_bf16(float* c, const void* a, const void* b, cudaStream_t stream) {
  FERRO_LAUNCH(1, 32, 0, stream, ferro::mma_check<__nv_bfloat16>)(
      c, (const __nv_bfloat16*)a, (const __nv_bfloat16*)b);
  return (int)cudaGetLastError();
}
#endif

#if defined(FERRO_EMULATE)
// Emulation only: run mma_16816<__half> as sm_75 does (two k8 steps) while `on`.
extern "C" void ferro_emulate_k8(int on) { ferro::emulate_k8() = on != 0; }
// Emulation only: the emulator's float → f16 and bf16 rounding, checked against Rust's.
extern "C" uint16_t ferro_emulated_f16_bits(float f) { return __float2half(f).bits; }
extern "C" uint16_t ferro_emulated_bf16_bits(float f) { return __float2bfloat16(f).bits; }
extern "C" float ferro_emulated_f16_value(uint16_t bits) { return __half2float(__half{bits}); }
#endif
