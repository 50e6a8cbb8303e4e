//! What candle lacks on CUDA: writing new keys and values into a paged KV cache, attention over
//! it (a CUDA-core kernel for decode rows, a tensor-core FlashAttention-2 kernel for prompt
//! chunks), and the fused elementwise steps of a layer, all in `kernels/*.cu`. With the `cuda`
//! feature, `build.rs` compiles them with nvcc for the one architecture of `CUDA_COMPUTE_CAP`
//! and [`cuda`] launches them on candle tensors; with `emulate`, the host compiler builds the same
//! sources against a CPU emulation of CUDA and [`emulated`] runs them on slices, so CI tests
//! the kernels' logic without a GPU. [`plan`] (always built) decides each step's launches.

include!(concat!(env!("OUT_DIR"), "/build_info.rs"));

pub mod plan;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(all(feature = "emulate", not(feature = "cuda")))]
pub mod emulated;
#[cfg(any(feature = "cuda", feature = "emulate"))]
pub mod ffi;
#[cfg(any(feature = "cuda", feature = "emulate"))]
mod launch;

#[cfg(feature = "cuda")]
pub use cuda::*;

pub use plan::{AttentionPlan, AttentionShape, SeqRows};

/// Whether the build has bf16 kernels (built for compute capability 8.0 or newer).
pub const BUILD_HAS_BF16: bool = cfg!(ferrollama_bf16);
