// A host emulation of the CUDA execution model, so that our kernels' logic runs and is tested
// on a machine without a GPU (CI). The same .cu source compiles with nvcc for the device and
// with a host C++ compiler (FERRO_EMULATE, see ferro.cuh) into this runtime:
//
// - a launch runs the grid's thread blocks one after another; the threads of a block are
//   fibers on the calling OS thread, switched only at synchronisation points, so a thread runs
//   until its next barrier. Blocks alternate between two orders of running their threads
//   (run_block), so a missing __syncthreads shows as a wrong result whether it leaves a
//   read-after-write or a write-after-read hazard.
// - __syncthreads is a block barrier that exited threads leave (as on sm_70+); warp-collective
//   operations (shuffles, mma) are warp barriers that require all 32 lanes alive, as the full
//   mask promises. A barrier that can never complete (divergent collectives) aborts with the
//   state of every thread.
// - dynamic shared memory is poisoned with 0xFF (NaN in every float type) at each block's start,
//   so a read of something never written shows.
// - mma.sync is computed from the fragment layouts as the PTX ISA tables define them
//   (mma.m16n8k16 and mma.m16n8k8 with .f16/.bf16 inputs and .f32 accumulators), written here
//   independently of the kernels' own fragment code, so a kernel that loads fragments wrongly
//   fails here as it would on the GPU.
// Host-only; never seen by nvcc.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
struct alignas(8) uint2 {
  uint32_t x, y;
};
typedef void* cudaStream_t;
typedef int cudaError_t;
inline int cudaGetLastError() { return 0; }

// Each OS thread runs its own launches (cargo runs tests on several threads).
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace ferro_emu {

constexpr int kMaxWords = 16;  // per lane, for one warp-collective exchange

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

// Switching fibers (every .cu file carries the switch, weak, and the linker keeps one). On x86-64, a hand-written switch of the callee-saved registers (glibc's
// swapcontext also saves the signal mask, a system call per switch, which made the emulator
// ten times slower); elsewhere, ucontext.
#if defined(__x86_64__)
extern "C" void ferro_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak ferro_emu_switch
  .hidden ferro_emu_switch
  .type ferro_emu_switch,@function
ferro_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ferro_emu_switch, .-ferro_emu_switch
)");

struct Context {
  void* sp = nullptr;
};
inline void switch_to(Context& save, Context& load) { ferro_emu_switch(&save.sp, load.sp); }
// A fresh stack that "returns" into `entry` on its first switch: the frame ferro_emu_switch
// pops (MXCSR and x87 control word, six registers), then entry's address, 16-byte aligned as
// at a call.
inline void make_context(Context& c, std::vector<char>& stack, void (*entry)()) {
  uintptr_t top = ((uintptr_t)stack.data() + stack.size()) & ~(uintptr_t)15;
  void** sp = (void**)(top - 8);
  *sp = nullptr;  // entry never returns
  *--sp = (void*)entry;
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  --sp;
  const uint32_t mxcsr = 0x1F80, fpu_control = 0x037F;
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy((char*)sp + 4, &fpu_control, 4);
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
inline void switch_to(Context& save, Context& load) { swapcontext(&save.uc, &load.uc); }
inline void make_context(Context& c, std::vector<char>& stack, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack.data();
  c.uc.uc_stack.ss_size = stack.size();
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

struct Fiber {
  Context context;
  State state = State::Ready;
  std::vector<char> stack;
};

struct Block {
  Context scheduler;
  std::vector<Fiber> fibers;
  int current = 0;
  std::function<void()> body;
  std::vector<unsigned char> shared;
  // Per warp, per lane: the words a lane offers to a warp-collective operation.
  std::vector<uint32_t> exchange;
};

inline thread_local Block* block = nullptr;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "ferro_emu: %s (block %u,%u,%u thread %d)\n", what, blockIdx.x,
               blockIdx.y, blockIdx.z, block ? block->current : -1);
  std::abort();
}

inline void set_thread_index(int linear) {
  threadIdx.x = linear % blockDim.x;
  threadIdx.y = (linear / blockDim.x) % blockDim.y;
  threadIdx.z = linear / (blockDim.x * blockDim.y);
}

inline void trampoline() {
  block->body();
  Fiber& me = block->fibers[block->current];
  me.state = State::Done;
  switch_to(me.context, block->scheduler);
  fail("a finished thread was resumed");
}

inline void wait(State state) {
  Fiber& me = block->fibers[block->current];
  me.state = state;
  switch_to(me.context, block->scheduler);
}

inline int lane_id() { return block->current % 32; }
inline int warp_id() { return block->current / 32; }

// All 32 lanes of the current warp wait for each other.
inline void warp_barrier() {
  const int first = warp_id() * 32;
  for (int i = 0; i < 32; ++i) {
    if (first + i >= (int)block->fibers.size() || block->fibers[first + i].state == State::Done) {
      fail("a warp-collective operation with the full mask while a lane has exited");
    }
  }
  wait(State::AtWarpBarrier);
}

inline uint32_t* lane_words(int lane) {
  return &block->exchange[(size_t)(warp_id() * 32 + lane) * kMaxWords];
}

// Releases warp `w` when every live lane of it waits at the warp barrier.
inline bool release_warp(Block& b, int w, int threads) {
  const int end = std::min(threads, w * 32 + 32);
  int live = 0, waiting = 0;
  for (int i = w * 32; i < end; ++i) {
    live += b.fibers[i].state != State::Done;
    waiting += b.fibers[i].state == State::AtWarpBarrier;
  }
  if (live == 0 || waiting != live) return false;
  for (int i = w * 32; i < end; ++i) {
    if (b.fibers[i].state == State::AtWarpBarrier) b.fibers[i].state = State::Ready;
  }
  return true;
}

inline bool run_ready(Block& b, int first, int end) {
  bool ran = false;
  for (int i = first; i < end; ++i) {
    if (b.fibers[i].state != State::Ready) continue;
    b.current = i;
    set_thread_index(i);
    switch_to(b.scheduler, b.fibers[i].context);
    ran = true;
  }
  return ran;
}

// Runs every thread of one block to completion, in one of two orders, so that a missing
// barrier shows whichever hazard it leaves:
// - lockstep: every ready thread to its next synchronisation point, pass after pass; a reader
//   that did not wait runs before the writer it needed (read-after-write);
// - greedy: one warp at a time as far as it goes alone (through its own warp barriers, up to a
//   block barrier); a warp that did not wait overwrites what another warp still reads
//   (write-after-read).
inline void run_block(int threads, size_t stack_bytes, bool greedy) {
  Block& b = *block;
  b.fibers.resize(threads);
  for (int i = 0; i < threads; ++i) {
    Fiber& f = b.fibers[i];
    f.state = State::Ready;
    f.stack.resize(stack_bytes);
    make_context(f.context, f.stack, trampoline);
  }
  const int warps = (threads + 31) / 32;
  for (;;) {
    bool progressed = false;
    if (greedy) {
      for (int w = 0; w < warps; ++w) {
        while (run_ready(b, w * 32, std::min(threads, w * 32 + 32))) {
          progressed = true;
          release_warp(b, w, threads);
        }
      }
    } else {
      progressed = run_ready(b, 0, threads);
    }
    int live = 0, at_block = 0;
    for (auto& f : b.fibers) {
      live += f.state != State::Done;
      at_block += f.state == State::AtBlockBarrier;
    }
    if (live == 0) return;
    if (at_block == live) {
      for (auto& f : b.fibers)
        if (f.state == State::AtBlockBarrier) f.state = State::Ready;
      progressed = true;
    }
    for (int w = 0; w < warps; ++w) progressed |= release_warp(b, w, threads);
    if (!progressed) {
      for (int i = 0; i < threads; ++i) {
        std::fprintf(stderr, "thread %d: state %d\n", i, (int)b.fibers[i].state);
      }
      b.current = -1;
      fail("deadlock: threads wait at barriers that cannot complete");
    }
  }
}

// The launch of `kernel` over `grid` x `threads`, run to completion before it returns.
template <typename Kernel>
struct Launch {
  dim3 grid, threads;
  size_t shared_bytes;
  Kernel* kernel;

  template <typename... Args>
  void operator()(Args... args) const {
    const int n = threads.x * threads.y * threads.z;
    if (n <= 0 || n > 1024) fail("a block of more than 1024 threads");
    if (shared_bytes > 227 * 1024) fail("more dynamic shared memory than any GPU has");
    Block b;
    b.body = [&] { kernel(args...); };
    b.exchange.assign((size_t)((n + 31) / 32) * 32 * kMaxWords, 0);
    Block* outer = block;
    block = &b;
    gridDim = grid;
    blockDim = threads;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = dim3(x, y, z);
          b.shared.assign(shared_bytes, 0xFF);
          run_block(n, 64 * 1024, (x + y + z) % 2 == 1);  // both orders in every launch
        }
    block = outer;
  }
};

template <typename Kernel>
Launch<Kernel> launch(dim3 grid, dim3 threads, size_t shared_bytes, Kernel* kernel) {
  return Launch<Kernel>{grid, threads, shared_bytes, kernel};
}

// ---- 16-bit floats, as the device stores them ----

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const int exponent = (h >> 10) & 0x1F;
  uint32_t mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000 | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((uint32_t)(exponent - 15 + 127) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: renormalise
    int e = -1;
    do {
      mantissa <<= 1;
      ++e;
    } while (!(mantissa & 0x400));
    bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mantissa & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, with overflow to infinity and subnormals.
inline uint16_t float_to_half_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = (bits >> 16) & 0x8000;
  const uint32_t magnitude = bits & 0x7FFFFFFF;
  if (magnitude >= 0x7F800000) {  // inf or NaN
    return sign | 0x7C00 | (magnitude > 0x7F800000 ? 0x200 : 0);
  }
  if (magnitude >= 0x477FF000) return sign | 0x7C00;  // rounds past 65504
  if (magnitude < 0x38800000) {                        // below the smallest normal half
    if (magnitude < 0x33000000) return sign;           // below half the smallest subnormal
    const int shift = 126 - (int)(magnitude >> 23);  // 14..24
    const uint32_t mantissa = (magnitude & 0x7FFFFF) | 0x800000;
    const uint32_t value = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    // A carry out of the subnormals lands on the smallest normal, as it should.
    const uint32_t rounded = value + (rest > halfway || (rest == halfway && (value & 1)));
    return sign | (uint16_t)rounded;
  }
  uint32_t h = ((magnitude >> 13) - ((127 - 15) << 10));
  const uint32_t rest = magnitude & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return sign | (uint16_t)h;
}

inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7FFFFFFF) > 0x7F800000) return (bits >> 16) | 0x40;  // quiet NaN
  const uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return (uint16_t)((bits + rounding) >> 16);
}

}  // namespace ferro_emu

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) { return ferro_emu::half_bits_to_float(h.bits); }
inline __half __float2half(float f) { return __half{ferro_emu::float_to_half_bits(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return ferro_emu::bf16_bits_to_float(h.bits); }
inline __nv_bfloat16 __float2bfloat16(float f) {
  return __nv_bfloat16{ferro_emu::float_to_bf16_bits(f)};
}

// ---- intrinsics ----

inline void __syncthreads() { ferro_emu::wait(ferro_emu::State::AtBlockBarrier); }

template <typename V>
inline V ferro_emu_shuffle(V v, int source_lane) {
  static_assert(sizeof(V) <= 8, "shuffles move at most 8 bytes here");
  using namespace ferro_emu;
  uint32_t words[2] = {0, 0};
  std::memcpy(words, &v, sizeof(V));
  std::memcpy(lane_words(lane_id()), words, 8);
  warp_barrier();
  V out;
  std::memcpy(&out, lane_words(source_lane & 31), sizeof(V));
  warp_barrier();  // nobody overwrites its words before every lane has read
  return out;
}

template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask) {
  if (mask != 0xffffffffu) ferro_emu::fail("only full-mask shuffles are emulated");
  return ferro_emu_shuffle(v, ferro_emu::lane_id() ^ lane_mask);
}

template <typename V>
inline V __shfl_sync(unsigned mask, V v, int source_lane) {
  if (mask != 0xffffffffu) ferro_emu::fail("only full-mask shuffles are emulated");
  return ferro_emu_shuffle(v, source_lane);
}

inline float __expf(float x) { return std::exp(x); }
inline float exp2f(float x) { return std::exp2(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }
template <typename V>
inline V atomicAdd(V* address, V value) {  // fibers never interleave within an operation
  const V old = *address;
  *address = old + value;
  return old;
}

namespace ferro_emu {

// One 16-bit element of a packed pair: `lo` is the element in the register's low half.
inline float unpack(uint32_t reg, bool hi, bool bf16) {
  const uint16_t bits = hi ? (uint16_t)(reg >> 16) : (uint16_t)(reg & 0xFFFF);
  return bf16 ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
}

// mma.sync.aligned.m16n8k{K}.row.col.f32.{f16,bf16}.{f16,bf16}.f32, K = 8 or 16: D = A B + C.
// Fragment layouts from the PTX ISA ("Matrix Fragments for mma.m16n8k8 / mma.m16n8k16", floating
// point types), with groupID = lane >> 2 and threadID_in_group = lane % 4:
//   A (16 x K, row): element a_i sits at row groupID (+8 for i in {2,3,6,7}), column
//     threadID_in_group * 2 + (i & 1) (+8 for i >= 4); two elements per 32-bit register.
//   B (K x 8, col): element b_i at row threadID_in_group * 2 + (i & 1) (+8 for i >= 2), column
//     groupID.
//   C, D (16 x 8, f32): c_i at row groupID (+8 for i >= 2), column threadID_in_group * 2 + (i & 1).
inline void mma(int k, bool bf16, float d[4], const uint32_t* a, const uint32_t* b,
                const float c[4]) {
  struct Operands {
    float A[16][16], B[16][8];
    uint64_t built_for = ~0ull;
  };
  static thread_local std::vector<Operands> operands;
  static thread_local uint64_t calls = 0;  // per warp, counted by its lane 0
  const int lane = lane_id();
  uint32_t* mine = lane_words(lane);
  const int a_regs = k / 4, b_regs = k / 8;
  for (int i = 0; i < a_regs; ++i) mine[i] = a[i];
  for (int i = 0; i < b_regs; ++i) mine[4 + i] = b[i];
  // Lane 0 names this call, so every lane agrees which operands are current.
  if (lane == 0) mine[8] = (uint32_t)++calls;
  warp_barrier();
  const uint32_t call = lane_words(0)[8];
  operands.resize(block->exchange.size() / (32 * kMaxWords));
  Operands& ops = operands[warp_id()];
  if (ops.built_for != ((uint64_t)blockIdx.x << 32 | call)) {  // the first lane to run builds
    for (int l = 0; l < 32; ++l) {
      const uint32_t* w = lane_words(l);
      const int group = l >> 2, in_group = l % 4;
      for (int i = 0; i < 2 * a_regs; ++i) {
        const int row = group + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
        const int col = in_group * 2 + (i & 1) + (i >= 4 ? 8 : 0);
        ops.A[row][col] = unpack(w[i / 2], i & 1, bf16);
      }
      for (int i = 0; i < 2 * b_regs; ++i) {
        const int row = in_group * 2 + (i & 1) + (i >= 2 ? 8 : 0);
        ops.B[row][group] = unpack(w[4 + i / 2], i & 1, bf16);
      }
    }
    ops.built_for = (uint64_t)blockIdx.x << 32 | call;
  }
  const int group = lane >> 2, in_group = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = group + (i >= 2 ? 8 : 0);
    const int col = in_group * 2 + (i & 1);
    float acc = c[i];
    for (int kk = 0; kk < k; ++kk) acc += ops.A[row][kk] * ops.B[kk][col];
    out[i] = acc;
  }
  warp_barrier();  // nobody offers new operands before every lane has computed
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace ferro_emu
