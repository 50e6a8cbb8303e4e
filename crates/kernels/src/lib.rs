//! What candle lacks on CUDA, as candle ops: writing new keys and values into a paged KV cache
//! and paged attention over it (`kernels/paged_attention.cu`, compiled by `build.rs` with nvcc
//! for the one architecture of `CUDA_COMPUTE_CAP`). Without the `cuda` feature this crate only
//! says that the build has no CUDA code (`BUILD_COMPUTE_CAP == 0`).

include!(concat!(env!("OUT_DIR"), "/build_info.rs"));

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod ffi;

#[cfg(feature = "cuda")]
pub use cuda::{
    gpu_info, gpu_or_skip, key_cache_shape, reshape_and_cache, value_cache_shape, GpuInfo,
    PagedAttention,
};

/// Whether the build has bf16 kernels (built for compute capability 8.0 or newer).
pub const BUILD_HAS_BF16: bool = cfg!(ferrollama_bf16);
