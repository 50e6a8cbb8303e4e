//! The C entry points of `kernels/*.cu`, the same whether nvcc built them for a GPU or the host
//! compiler for the emulator (`emulate` feature). Each returns the launch's cudaError_t (0 on
//! success), or `NO_KERNEL` for a shape the kernels are not built for. Pointers are device
//! addresses on a GPU and host addresses under emulation; `Stream` is ignored there.

use std::ffi::c_void;

pub type Stream = *mut c_void;

/// What an entry point returns for a shape it has no kernel for.
pub const NO_KERNEL: i32 = -1;

macro_rules! entry_points {
    ($cache:ident, $attention:ident, $qkv:ident, $norm:ident, $silu:ident) => {
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
                launched: *const u32,
                rows: i32,
                heads: i32,
                kv_heads: i32,
                head_dim: i32,
                block_size: i32,
                max_blocks: i32,
                partition: i32,
                partitions: i32,
                scale: f32,
                window: i32,
                stream: Stream,
            ) -> i32;

            pub fn $qkv(
                q_out: *mut c_void,
                key_cache: *mut c_void,
                value_cache: *mut c_void,
                qkv: *const c_void,
                cos: *const f32,
                sin: *const f32,
                slots: *const u32,
                tokens: i32,
                heads: i32,
                kv_heads: i32,
                head_dim: i32,
                block_size: i32,
                stream: Stream,
            ) -> i32;

            pub fn $norm(
                sum: *mut c_void,
                x: *const c_void,
                delta: *const c_void,
                weight: *const c_void,
                h: *mut c_void,
                tokens: i32,
                width: i32,
                eps: f32,
                stream: Stream,
            ) -> i32;

            pub fn $silu(
                out: *mut c_void,
                gate_up: *const c_void,
                tokens: i32,
                width: i32,
                stream: Stream,
            ) -> i32;
        }
    };
}

macro_rules! flash_entry_point {
    ($flash:ident) => {
        extern "C" {
            pub fn $flash(
                out: *mut c_void,
                q: *const c_void,
                key_cache: *const c_void,
                value_cache: *const c_void,
                block_tables: *const u32,
                context_lens: *const u32,
                tiles: *const u32,
                n_tiles: i32,
                heads: i32,
                kv_heads: i32,
                head_dim: i32,
                block_size: i32,
                max_blocks: i32,
                scale: f32,
                window: i32,
                stream: Stream,
            ) -> i32;
        }
    };
}

entry_points!(
    ferro_reshape_and_cache_f32,
    ferro_paged_attention_f32,
    ferro_qkv_rope_cache_f32,
    ferro_add_rms_norm_f32,
    ferro_silu_mul_f32
);
entry_points!(
    ferro_reshape_and_cache_f16,
    ferro_paged_attention_f16,
    ferro_qkv_rope_cache_f16,
    ferro_add_rms_norm_f16,
    ferro_silu_mul_f16
);
flash_entry_point!(ferro_flash_attention_f16);
#[cfg(ferrollama_bf16)]
entry_points!(
    ferro_reshape_and_cache_bf16,
    ferro_paged_attention_bf16,
    ferro_qkv_rope_cache_bf16,
    ferro_add_rms_norm_bf16,
    ferro_silu_mul_bf16
);
#[cfg(ferrollama_bf16)]
flash_entry_point!(ferro_flash_attention_bf16);

extern "C" {
    pub fn ferro_attention_max_partition() -> i32;
    pub fn ferro_flash_supported(head_dim: i32, group: i32, block_size: i32) -> i32;
    pub fn ferro_flash_tokens_per_tile(group: i32) -> i32;
}

/// The entry points of one element type.
pub struct Kernels {
    pub reshape_and_cache: unsafe extern "C" fn(
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
    ) -> i32,
    pub paged_attention: unsafe extern "C" fn(
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
        *const u32,
        i32,
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
    ) -> i32,
    /// None for f32: no tensor-core path.
    pub flash_attention: Option<
        unsafe extern "C" fn(
            *mut c_void,
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
            f32,
            i32,
            Stream,
        ) -> i32,
    >,
    pub qkv_rope_cache: unsafe extern "C" fn(
        *mut c_void,
        *mut c_void,
        *mut c_void,
        *const c_void,
        *const f32,
        *const f32,
        *const u32,
        i32,
        i32,
        i32,
        i32,
        i32,
        Stream,
    ) -> i32,
    #[allow(clippy::type_complexity)]
    pub add_rms_norm: unsafe extern "C" fn(
        *mut c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *mut c_void,
        i32,
        i32,
        f32,
        Stream,
    ) -> i32,
    pub silu_mul: unsafe extern "C" fn(*mut c_void, *const c_void, i32, i32, Stream) -> i32,
}

/// The most highest logits [`ferro_top_k_f32`] returns per row (`TOP_K_MAX` in top_k.cu).
pub const TOP_K_MAX: usize = 256;

extern "C" {
    /// The `k` highest logits of each f32 row, ranked (the higher first, the lower id among
    /// equals): `values` and `ids` are `[rows, k]`. NO_KERNEL for k outside 1..=min(vocab,
    /// TOP_K_MAX).
    pub fn ferro_top_k_f32(
        values: *mut f32,
        ids: *mut u32,
        logits: *const f32,
        rows: i32,
        vocab: i32,
        k: i32,
        stream: Stream,
    ) -> i32;
}

/// The element types the kernels are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    F32,
    F16,
    Bf16,
}

impl Element {
    pub fn size(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::F16 | Element::Bf16 => 2,
        }
    }
}

/// The entry points for `element`, or `None` where this build has no kernels for it (bf16
/// below sm_80).
pub fn kernels(element: Element) -> Option<Kernels> {
    match element {
        Element::F32 => Some(Kernels {
            reshape_and_cache: ferro_reshape_and_cache_f32,
            paged_attention: ferro_paged_attention_f32,
            flash_attention: None,
            qkv_rope_cache: ferro_qkv_rope_cache_f32,
            add_rms_norm: ferro_add_rms_norm_f32,
            silu_mul: ferro_silu_mul_f32,
        }),
        Element::F16 => Some(Kernels {
            reshape_and_cache: ferro_reshape_and_cache_f16,
            paged_attention: ferro_paged_attention_f16,
            flash_attention: Some(ferro_flash_attention_f16),
            qkv_rope_cache: ferro_qkv_rope_cache_f16,
            add_rms_norm: ferro_add_rms_norm_f16,
            silu_mul: ferro_silu_mul_f16,
        }),
        #[cfg(ferrollama_bf16)]
        Element::Bf16 => Some(Kernels {
            reshape_and_cache: ferro_reshape_and_cache_bf16,
            paged_attention: ferro_paged_attention_bf16,
            flash_attention: Some(ferro_flash_attention_bf16),
            qkv_rope_cache: ferro_qkv_rope_cache_bf16,
            add_rms_norm: ferro_add_rms_norm_bf16,
            silu_mul: ferro_silu_mul_bf16,
        }),
        #[cfg(not(ferrollama_bf16))]
        Element::Bf16 => None,
    }
}

/// A launch's status as a Rust result.
pub fn launched(status: i32, kernel: &str) -> Result<(), String> {
    match status {
        0 => Ok(()),
        NO_KERNEL => Err(format!("{kernel}: no kernel for this shape in this build")),
        code => Err(format!(
            "{kernel}: CUDA launch failed with cudaError_t {code}"
        )),
    }
}
