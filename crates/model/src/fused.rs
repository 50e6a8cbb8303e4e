//! A layer's elementwise steps between its matmuls: one kernel each on CUDA (`crates/kernels`,
//! computing in f32 and rounding once), SwiGLU in one pass on the CPU in f32
//! (`cpu::elementwise`), candle ops elsewhere.

use crate::cpu::elementwise;
use crate::error::Result;
use crate::linear::split;
use candle_core::{DType, Storage, Tensor};
use candle_nn::ops::{rms_norm, silu};

/// `(x + delta, rmsnorm(x + delta) * weight)`: the residual add and the next norm.
pub fn add_rms_norm(
    x: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return Ok(ferrollama_kernels::add_rms_norm(x, delta, weight, eps)?);
    }
    let x = (x + delta)?;
    let h = rms_norm(&x, weight, eps)?;
    Ok((x, h))
}

/// SwiGLU of the joined gate/up projection `[tokens, 2 width]`: `silu(gate) * up`.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if gate_up.device().is_cuda() {
        return Ok(ferrollama_kernels::silu_mul(gate_up)?);
    }
    let width = gate_up.dim(1)? / 2;
    if gate_up.dtype() == DType::F32 && gate_up.is_contiguous() {
        let (storage, layout) = gate_up.storage_and_layout();
        if let Storage::Cpu(cpu) = &*storage {
            let all = &cpu.as_slice::<f32>()?[layout.start_offset()..][..gate_up.elem_count()];
            let out = elementwise::silu_mul(all, width);
            return Ok(Tensor::from_vec(
                out,
                (gate_up.dim(0)?, width),
                gate_up.device(),
            )?);
        }
    }
    let [gate, up]: [Tensor; 2] = split(gate_up, &[width, width])?
        .try_into()
        .expect("two halves");
    Ok((silu(&gate)? * up)?)
}
