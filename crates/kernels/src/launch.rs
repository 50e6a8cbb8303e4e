//! The launches, on raw addresses: device addresses from `cuda.rs`, host addresses from
//! `emulated.rs`. Both call these same functions, so the emulator tests exactly the sequence
//! of launches (and arguments) that the GPU runs.

use crate::ffi::{self, Element, Kernels, Stream};
use crate::plan::AttentionPlan;
use std::ffi::c_void;

/// Where one layer's attention reads and writes.
pub struct AttentionAddresses {
    /// `[rows, heads, head_dim]`.
    pub out: *mut c_void,
    /// `[rows, heads, head_dim]`.
    pub q: *const c_void,
    pub key_cache: *const c_void,
    pub value_cache: *const c_void,
    /// The plan's `indices`.
    pub indices: *const u32,
    /// `plan.scratch_len()` floats (null when that is 0).
    pub scratch: *mut f32,
}

fn kernels_for(element: Element) -> Result<Kernels, String> {
    ffi::kernels(element).ok_or_else(|| format!("no {element:?} kernels in this build"))
}

/// Attention of every row of `plan`: the decode kernel over its rows, flash over its tiles.
///
/// # Safety
/// Every address must hold what the plan says, on the device the kernels run on.
pub unsafe fn attention(
    element: Element,
    plan: &AttentionPlan,
    a: &AttentionAddresses,
    stream: Stream,
) -> Result<(), String> {
    let k = kernels_for(element)?;
    let s = &plan.shape;
    let o = plan.offsets();
    let at = |offset: usize| a.indices.add(offset);
    if plan.decode_rows > 0 {
        let parts = plan.decode_rows * s.heads * plan.partitions;
        let (part_out, part_max, part_sum) = if plan.partitions > 1 {
            let out = a.scratch;
            let max = out.add(parts * s.head_dim);
            (out, max, max.add(parts))
        } else {
            (
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        ffi::launched(
            (k.paged_attention)(
                a.out,
                part_out,
                part_max,
                part_sum,
                a.q,
                a.key_cache,
                a.value_cache,
                at(o.block_tables),
                at(o.row_seq),
                at(o.context_lens),
                at(o.decode),
                plan.decode_rows as i32,
                s.heads as i32,
                s.kv_heads as i32,
                s.head_dim as i32,
                s.block_size as i32,
                plan.max_blocks as i32,
                plan.partition as i32,
                plan.partitions as i32,
                plan.scale(),
                s.window as i32,
                stream,
            ),
            "paged_attention",
        )?;
    }
    if plan.tiles > 0 {
        let flash = k
            .flash_attention
            .ok_or("flash_attention: planned for a dtype without it")?;
        ffi::launched(
            flash(
                a.out,
                a.q,
                a.key_cache,
                a.value_cache,
                at(o.block_tables),
                at(o.context_lens),
                at(o.tiles),
                plan.tiles as i32,
                s.heads as i32,
                s.kv_heads as i32,
                s.head_dim as i32,
                s.block_size as i32,
                plan.max_blocks as i32,
                plan.scale(),
                s.window as i32,
                stream,
            ),
            "flash_attention",
        )?;
    }
    Ok(())
}

/// Writes each row's keys and values (`[rows, kv_heads, head_dim]`) to its slot.
///
/// # Safety
/// As [`attention`].
pub unsafe fn reshape_and_cache(
    element: Element,
    plan: &AttentionPlan,
    key: *const c_void,
    value: *const c_void,
    key_cache: *mut c_void,
    value_cache: *mut c_void,
    indices: *const u32,
    stream: Stream,
) -> Result<(), String> {
    let k = kernels_for(element)?;
    let s = &plan.shape;
    ffi::launched(
        (k.reshape_and_cache)(
            key,
            value,
            key_cache,
            value_cache,
            indices.add(plan.offsets().slots),
            plan.rows as i32,
            s.kv_heads as i32,
            s.head_dim as i32,
            s.block_size as i32,
            stream,
        ),
        "reshape_and_cache",
    )
}

/// The fused q/k/v projection's rows (`[rows, (heads + 2 kv_heads) head_dim]`) with rotary
/// embedding (`cos`, `sin`: f32 `[rows, head_dim / 2]`): q into `q_out`, k and v into the cache.
///
/// # Safety
/// As [`attention`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn qkv_rope_cache(
    element: Element,
    plan: &AttentionPlan,
    q_out: *mut c_void,
    key_cache: *mut c_void,
    value_cache: *mut c_void,
    qkv: *const c_void,
    cos: *const f32,
    sin: *const f32,
    indices: *const u32,
    stream: Stream,
) -> Result<(), String> {
    let k = kernels_for(element)?;
    let s = &plan.shape;
    ffi::launched(
        (k.qkv_rope_cache)(
            q_out,
            key_cache,
            value_cache,
            qkv,
            cos,
            sin,
            indices.add(plan.offsets().slots),
            plan.rows as i32,
            s.heads as i32,
            s.kv_heads as i32,
            s.head_dim as i32,
            s.block_size as i32,
            stream,
        ),
        "qkv_rope_cache",
    )
}

/// `sum = x + delta; h = rmsnorm(sum) * weight`, rows of `width`; `sum` may be `x`.
///
/// # Safety
/// As [`attention`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn add_rms_norm(
    element: Element,
    sum: *mut c_void,
    x: *const c_void,
    delta: *const c_void,
    weight: *const c_void,
    h: *mut c_void,
    rows: usize,
    width: usize,
    eps: f32,
    stream: Stream,
) -> Result<(), String> {
    let k = kernels_for(element)?;
    ffi::launched(
        (k.add_rms_norm)(
            sum,
            x,
            delta,
            weight,
            h,
            rows as i32,
            width as i32,
            eps,
            stream,
        ),
        "add_rms_norm",
    )
}

/// `out = silu(gate) * up` for rows `[gate | up]` of `2 * width`.
///
/// # Safety
/// As [`attention`].
pub unsafe fn silu_mul(
    element: Element,
    out: *mut c_void,
    gate_up: *const c_void,
    rows: usize,
    width: usize,
    stream: Stream,
) -> Result<(), String> {
    let k = kernels_for(element)?;
    ffi::launched(
        (k.silu_mul)(out, gate_up, rows as i32, width as i32, stream),
        "silu_mul",
    )
}

/// The `k` highest logits of each of `rows` f32 rows of `vocab`, ranked, into `values` and
/// `ids` (`[rows, k]`).
///
/// # Safety
/// As [`attention`].
pub unsafe fn top_k(
    values: *mut f32,
    ids: *mut u32,
    logits: *const f32,
    rows: usize,
    vocab: usize,
    k: usize,
    stream: Stream,
) -> Result<(), String> {
    if k == 0 || k > vocab.min(ffi::TOP_K_MAX) {
        return Err(format!(
            "top_k: k = {k} outside 1..={}",
            vocab.min(ffi::TOP_K_MAX)
        ));
    }
    ffi::launched(
        ffi::ferro_top_k_f32(
            values,
            ids,
            logits,
            rows as i32,
            vocab as i32,
            k as i32,
            stream,
        ),
        "top_k",
    )
}
