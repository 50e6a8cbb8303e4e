// The k highest logits of each f32 row, ranked as the engine's sampler ranks them (the higher
// logit first, the lower id among equals: Rust's f32::total_cmp, then the id), so that a row
// comes back from the GPU as k (logit, id) pairs instead of the whole vocabulary; the sampler
// then draws from them exactly (crates/engine/src/sampler.rs, "shortlists").
//
// One thread block per row. A radix select finds the k-th key (four passes of 8-bit histograms
// over the logits' order-preserving keys); the keys above it and the first ones equal to it by
// id are gathered at places a prefix sum gives (no atomics, so the order is deterministic), then
// a bitonic sort in shared memory ranks them.

#include <string.h>

#include "ferro.cuh"

namespace ferro {

constexpr int TOP_K_THREADS = 256;
// The most a launch returns per row (a power of two: the sort's size).
constexpr int TOP_K_MAX = 256;

// f32 → u32 in the order of Rust's f32::total_cmp.
FERRO_HD uint32_t order_key(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Whether (key a, id a) ranks before (key b, id b).
FERRO_HD bool ranks_before(uint32_t key_a, uint32_t id_a, uint32_t key_b, uint32_t id_b) {
  return key_a > key_b || (key_a == key_b && id_a < id_b);
}

// Shared words the kernel uses.
constexpr int TOP_K_SHARED_WORDS = 256 + 2 * TOP_K_THREADS + 2 + 2 * TOP_K_MAX;

// grid (rows), TOP_K_THREADS threads. values/ids: [rows, k].
__global__ void top_k(float* __restrict__ values, uint32_t* __restrict__ ids,
                      const float* __restrict__ logits, int vocab, int k) {
  FERRO_DYNAMIC_SHARED(uint32_t, shared);
  uint32_t* hist = shared;                   // 256 bins
  uint32_t* above = hist + 256;              // per thread: keys above the k-th, then offsets
  uint32_t* equal = above + TOP_K_THREADS;   // per thread: keys equal to it, then offsets
  uint32_t* state = equal + TOP_K_THREADS;   // the chosen bin; the rank left to find in it
  uint32_t* list_key = state + 2;            // TOP_K_MAX
  uint32_t* list_id = list_key + TOP_K_MAX;  // TOP_K_MAX
  const float* row = logits + (int64_t)blockIdx.x * vocab;
  const int tid = threadIdx.x, threads = blockDim.x;

  // Radix select, the most significant byte first: `prefix` is the k-th key's bytes so far.
  uint32_t prefix = 0, mask = 0;
  if (tid == 0) state[1] = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += threads) hist[b] = 0;
    __syncthreads();
    for (int i = tid; i < vocab; i += threads) {
      const uint32_t key = order_key(row[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      uint32_t rank = state[1];
      int b = 255;
      for (; b > 0 && hist[b] < rank; --b) rank -= hist[b];
      state[0] = b;
      state[1] = rank;
    }
    __syncthreads();
    prefix |= state[0] << shift;
    mask |= 255u << shift;
  }
  const uint32_t threshold = prefix;
  const uint32_t take_equal = state[1];  // keys equal to the k-th that make the top k
  const uint32_t n_above = k - take_equal;

  // Each thread gathers one run of ids, so equal keys are taken lowest id first.
  const int run = (vocab + threads - 1) / threads;
  const int begin = min(vocab, tid * run), end = min(vocab, begin + run);
  uint32_t my_above = 0, my_equal = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = order_key(row[i]);
    my_above += key > threshold;
    my_equal += key == threshold;
  }
  above[tid] = my_above;
  equal[tid] = my_equal;
  __syncthreads();
  if (tid == 0) {  // exclusive prefix sums, in place
    uint32_t a = 0, e = 0;
    for (int t = 0; t < threads; ++t) {
      const uint32_t na = above[t], ne = equal[t];
      above[t] = a;
      equal[t] = e;
      a += na;
      e += ne;
    }
  }
  __syncthreads();
  uint32_t at_above = above[tid], at_equal = equal[tid];
  for (int i = begin; i < end; ++i) {
    const uint32_t key = order_key(row[i]);
    if (key > threshold) {
      list_key[at_above] = key;
      list_id[at_above++] = i;
    } else if (key == threshold) {
      if (at_equal < take_equal) {
        list_key[n_above + at_equal] = key;
        list_id[n_above + at_equal] = i;
      }
      ++at_equal;
    }
  }
  // Pad to a power of two with entries that rank last.
  int n = 1;
  while (n < k) n <<= 1;
  for (int j = k + tid; j < n; j += threads) {
    list_key[j] = 0;
    list_id[j] = 0xFFFFFFFFu;
  }

  // Bitonic sort into rank order.
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = tid; i < n; i += threads) {
        const int j = i ^ stride;
        if (j <= i) continue;
        const uint32_t ki = list_key[i], ii = list_id[i], kj = list_key[j], ij = list_id[j];
        const bool in_order = (i & size) == 0;  // this half ranks forwards, the other back
        if (in_order ? ranks_before(kj, ij, ki, ii) : ranks_before(ki, ii, kj, ij)) {
          list_key[i] = kj;
          list_id[i] = ij;
          list_key[j] = ki;
          list_id[j] = ii;
        }
      }
    }
  }
  __syncthreads();
  for (int j = tid; j < k; j += threads) {
    const uint32_t id = list_id[j];
    ids[(int64_t)blockIdx.x * k + j] = id;
    values[(int64_t)blockIdx.x * k + j] = row[id];
  }
}

}  // namespace ferro

// 0, or NO_KERNEL (-1) for k outside 1..=min(vocab, TOP_K_MAX).
extern "C" int ferro_top_k_f32(float* values, uint32_t* ids, const float* logits, int rows,
                               int vocab, int k, cudaStream_t stream) {
  if (k < 1 || k > vocab || k > ferro::TOP_K_MAX) return -1;
  if (rows == 0) return 0;
  FERRO_LAUNCH(rows, ferro::TOP_K_THREADS, sizeof(uint32_t) * ferro::TOP_K_SHARED_WORDS, stream,
               ferro::top_k)(values, ids, logits, vocab, k);
  return (int)cudaGetLastError();
}
