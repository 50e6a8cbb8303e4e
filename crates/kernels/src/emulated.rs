//! The kernels run by the host emulator (`kernels/emulator.h`, feature `emulate`): the same
//! .cu sources and the same launches (`launch.rs`) as on a GPU, over host memory. For tests on
//! machines without a GPU; never for serving.

use crate::ffi::{self, Element};
use crate::launch::{self, AttentionAddresses};
use crate::plan::AttentionPlan;
use std::ffi::c_void;

/// The element types: f32, and f16 and bf16 as `half` stores them (the same bits as CUDA's).
pub trait Float: Copy + Send + 'static {
    const ELEMENT: Element;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Float for f32 {
    const ELEMENT: Element = Element::F32;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Float for half::f16 {
    const ELEMENT: Element = Element::F16;
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl Float for half::bf16 {
    const ELEMENT: Element = Element::Bf16;
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

const NO_STREAM: ffi::Stream = std::ptr::null_mut();

fn check_len(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("{what}: {got} elements, expected {want}"));
    }
    Ok(())
}

/// Attention of every row of `plan`; the output starts as NaN, so an element no kernel writes
/// shows.
pub fn attention<T: Float>(
    plan: &AttentionPlan,
    q: &[T],
    key_cache: &[T],
    value_cache: &[T],
) -> Result<Vec<T>, String> {
    let s = &plan.shape;
    check_len("q", q.len(), plan.rows * s.heads * s.head_dim)?;
    check_len("value_cache", value_cache.len(), key_cache.len())?;
    let mut out = vec![T::from_f32(f32::NAN); q.len()];
    let mut scratch = vec![f32::NAN; plan.scratch_len()];
    let addresses = AttentionAddresses {
        out: out.as_mut_ptr() as *mut c_void,
        q: q.as_ptr() as *const c_void,
        key_cache: key_cache.as_ptr() as *const c_void,
        value_cache: value_cache.as_ptr() as *const c_void,
        indices: plan.indices.as_ptr(),
        scratch: scratch.as_mut_ptr(),
    };
    unsafe { launch::attention(T::ELEMENT, plan, &addresses, NO_STREAM)? };
    Ok(out)
}

/// Writes the rows' keys and values (`[rows, kv_heads, head_dim]`) to their slots.
pub fn reshape_and_cache<T: Float>(
    plan: &AttentionPlan,
    key: &[T],
    value: &[T],
    key_cache: &mut [T],
    value_cache: &mut [T],
) -> Result<(), String> {
    let s = &plan.shape;
    check_len("key", key.len(), plan.rows * s.kv_heads * s.head_dim)?;
    check_len("value", value.len(), key.len())?;
    unsafe {
        launch::reshape_and_cache(
            T::ELEMENT,
            plan,
            key.as_ptr() as *const c_void,
            value.as_ptr() as *const c_void,
            key_cache.as_mut_ptr() as *mut c_void,
            value_cache.as_mut_ptr() as *mut c_void,
            plan.indices.as_ptr(),
            NO_STREAM,
        )
    }
}

/// Rotary q out; rotary k and v into the cache.
pub fn qkv_rope_cache<T: Float>(
    plan: &AttentionPlan,
    qkv: &[T],
    cos: &[f32],
    sin: &[f32],
    key_cache: &mut [T],
    value_cache: &mut [T],
) -> Result<Vec<T>, String> {
    let s = &plan.shape;
    check_len(
        "qkv",
        qkv.len(),
        plan.rows * (s.heads + 2 * s.kv_heads) * s.head_dim,
    )?;
    check_len("cos", cos.len(), plan.rows * s.head_dim / 2)?;
    check_len("sin", sin.len(), cos.len())?;
    let mut q = vec![T::from_f32(f32::NAN); plan.rows * s.heads * s.head_dim];
    unsafe {
        launch::qkv_rope_cache(
            T::ELEMENT,
            plan,
            q.as_mut_ptr() as *mut c_void,
            key_cache.as_mut_ptr() as *mut c_void,
            value_cache.as_mut_ptr() as *mut c_void,
            qkv.as_ptr() as *const c_void,
            cos.as_ptr(),
            sin.as_ptr(),
            plan.indices.as_ptr(),
            NO_STREAM,
        )?;
    }
    Ok(q)
}

/// `x += delta`, in place (as the kernel allows); returns `rmsnorm(x) * weight`.
pub fn add_rms_norm<T: Float>(
    x: &mut [T],
    delta: &[T],
    weight: &[T],
    eps: f32,
) -> Result<Vec<T>, String> {
    let width = weight.len();
    check_len("delta", delta.len(), x.len())?;
    if width == 0 || x.len() % width != 0 {
        return Err(format!("{} elements in rows of {width}", x.len()));
    }
    let mut h = vec![T::from_f32(f32::NAN); x.len()];
    unsafe {
        launch::add_rms_norm(
            T::ELEMENT,
            x.as_mut_ptr() as *mut c_void,
            x.as_ptr() as *const c_void,
            delta.as_ptr() as *const c_void,
            weight.as_ptr() as *const c_void,
            h.as_mut_ptr() as *mut c_void,
            x.len() / width,
            width,
            eps,
            NO_STREAM,
        )?;
    }
    Ok(h)
}

/// `silu(gate) * up` of rows `[gate | up]`, each half `width` wide.
pub fn silu_mul<T: Float>(gate_up: &[T], width: usize) -> Result<Vec<T>, String> {
    if width == 0 || gate_up.len() % (2 * width) != 0 {
        return Err(format!("{} elements in rows of 2 x {width}", gate_up.len()));
    }
    let rows = gate_up.len() / (2 * width);
    let mut out = vec![T::from_f32(f32::NAN); rows * width];
    unsafe {
        launch::silu_mul(
            T::ELEMENT,
            out.as_mut_ptr() as *mut c_void,
            gate_up.as_ptr() as *const c_void,
            rows,
            width,
            NO_STREAM,
        )?;
    }
    Ok(out)
}

/// The `k` highest of each row of `vocab` logits, ranked: (values, ids), `k` per row.
pub fn top_k(logits: &[f32], vocab: usize, k: usize) -> Result<(Vec<f32>, Vec<u32>), String> {
    if vocab == 0 || logits.len() % vocab != 0 {
        return Err(format!("{} logits in rows of {vocab}", logits.len()));
    }
    let rows = logits.len() / vocab;
    let (mut values, mut ids) = (vec![f32::NAN; rows * k], vec![u32::MAX; rows * k]);
    unsafe {
        launch::top_k(
            values.as_mut_ptr(),
            ids.as_mut_ptr(),
            logits.as_ptr(),
            rows,
            vocab,
            k,
            NO_STREAM,
        )?;
    }
    Ok((values, ids))
}

extern "C" {
    fn ferro_mma_check_f16(c: *mut f32, a: *const c_void, b: *const c_void, s: ffi::Stream) -> i32;
    fn ferro_mma_check_bf16(c: *mut f32, a: *const c_void, b: *const c_void, s: ffi::Stream)
        -> i32;
    fn ferro_emulate_k8(on: i32);
    fn ferro_emulated_f16_bits(f: f32) -> u16;
    fn ferro_emulated_bf16_bits(f: f32) -> u16;
    fn ferro_emulated_f16_value(bits: u16) -> f32;
}

/// `a` (16 x 16) times `b` (16 x 8), both row-major, through the kernels' fragment layouts and
/// one emulated mma.sync.
pub fn mma_check<T: Float>(a: &[T], b: &[T]) -> Result<Vec<f32>, String> {
    check_len("a", a.len(), 256)?;
    check_len("b", b.len(), 128)?;
    let mut c = vec![f32::NAN; 128];
    let status = unsafe {
        let (c, a, b) = (
            c.as_mut_ptr(),
            a.as_ptr() as *const c_void,
            b.as_ptr() as *const c_void,
        );
        match T::ELEMENT {
            Element::F16 => ferro_mma_check_f16(c, a, b, NO_STREAM),
            Element::Bf16 => ferro_mma_check_bf16(c, a, b, NO_STREAM),
            Element::F32 => return Err("no f32 mma".into()),
        }
    };
    ffi::launched(status, "mma_check")?;
    Ok(c)
}

/// Runs f16 mma as sm_75 does (two m16n8k8 steps) while set; per OS thread.
pub fn emulate_sm75_mma(on: bool) {
    unsafe { ferro_emulate_k8(on as i32) }
}

/// The emulator's own f16/bf16 rounding, for checking it against `half`.
pub fn emulated_f16_bits(v: f32) -> u16 {
    unsafe { ferro_emulated_f16_bits(v) }
}
pub fn emulated_bf16_bits(v: f32) -> u16 {
    unsafe { ferro_emulated_bf16_bits(v) }
}
pub fn emulated_f16_value(bits: u16) -> f32 {
    unsafe { ferro_emulated_f16_value(bits) }
}
