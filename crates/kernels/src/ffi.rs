//! The C entry points of `kernels/paged_attention.cu`. Each returns the launch's cudaError_t.

use std::ffi::c_void;

pub type Stream = *mut c_void;

/// `ferro_reshape_and_cache_<dtype>`.
pub type CacheFn = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *mut c_void,
    *mut c_void,
    *const u32,
    i32,
    i32,
    i32,
    i32,
    Stream,
) -> i32;

/// `ferro_paged_attention_<dtype>`.
pub type AttentionFn = unsafe extern "C" fn(
    *mut c_void,
    *mut f32,
    *mut f32,
    *mut f32,
    *const c_void,
    *const c_void,
    *const c_void,
    *const u32,
    *const u32,
    *const u32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    i32,
    Stream,
) -> i32;

macro_rules! entry_points {
    ($cache:ident, $attention:ident) => {
        extern "C" {
            pub fn $cache(
                key: *const c_void,
                value: *const c_void,
                key_cache: *mut c_void,
                value_cache: *mut c_void,
                slots: *const u32,
                tokens: i32,
                kv_heads: i32,
                head_dim: i32,
                block_size: i32,
                stream: Stream,
            ) -> i32;

            pub fn $attention(
                out: *mut c_void,
                part_out: *mut f32,
                part_max: *mut f32,
                part_sum: *mut f32,
                q: *const c_void,
                key_cache: *const c_void,
                value_cache: *const c_void,
                block_tables: *const u32,
                row_seq: *const u32,
                context_lens: *const u32,
                rows: i32,
                heads: i32,
                kv_heads: i32,
                head_dim: i32,
                block_size: i32,
                max_blocks: i32,
                partitions: i32,
                scale: f32,
                window: i32,
                stream: Stream,
            ) -> i32;
        }
    };
}

entry_points!(ferro_reshape_and_cache_f32, ferro_paged_attention_f32);
entry_points!(ferro_reshape_and_cache_f16, ferro_paged_attention_f16);
#[cfg(ferrollama_bf16)]
entry_points!(ferro_reshape_and_cache_bf16, ferro_paged_attention_bf16);

extern "C" {
    pub fn ferro_attention_partition_size() -> i32;
}
