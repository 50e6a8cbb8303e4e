//! Paged attention with our CUDA kernels (`crates/kernels`). Layout: vLLM's, as the kernels
//! define it (`key_cache_shape`, `value_cache_shape`). Each step is planned once
//! (`ferrollama_kernels::AttentionPlan`): prompt chunks go to the tensor-core kernel in tiles,
//! decoding rows to the CUDA-core kernel, and every index array goes up in one upload. The
//! joined q/k/v projection takes one fused kernel (rotary embedding, q out, k and v into the
//! cache) before attention.

use super::{Attention, HeadShape, LayerKv, StepAttention, StepLayout};
use crate::error::Result;
use crate::rope::RopeRows;
use candle_core::{DType, Device, Tensor};
use ferrollama_kernels::{
    key_cache_shape, value_cache_shape, AttentionPlan, AttentionShape, AttentionStep, SeqRows,
};

pub struct Cuda {
    shape: HeadShape,
    dtype: DType,
    device: Device,
    /// Decode thread blocks that keep this GPU busy (twice its multiprocessors).
    thread_blocks: usize,
}

impl Cuda {
    pub fn new(shape: HeadShape, dtype: DType, device: Device) -> Result<Self> {
        let thread_blocks = match &device {
            Device::Cuda(cuda) => {
                AttentionStep::thread_blocks(&ferrollama_kernels::gpu_info(cuda)?)
            }
            _ => 1,
        };
        Ok(Self {
            shape,
            dtype,
            device,
            thread_blocks,
        })
    }
}

impl Attention for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn kv_dtype(&self) -> DType {
        self.dtype
    }

    fn allocate(&self, num_blocks: usize, block_size: usize) -> Result<LayerKv> {
        let HeadShape {
            num_kv_heads,
            head_dim,
            ..
        } = self.shape;
        let keys = key_cache_shape(num_blocks, num_kv_heads, head_dim, block_size, self.dtype);
        let values = value_cache_shape(num_blocks, num_kv_heads, head_dim, block_size);
        Ok(LayerKv {
            keys: Tensor::zeros(keys, self.dtype, &self.device)?,
            values: Tensor::zeros(values, self.dtype, &self.device)?,
        })
    }

    fn prepare<'a>(&'a self, step: &'a StepLayout) -> Result<Box<dyn StepAttention + 'a>> {
        let shape = AttentionShape {
            heads: self.shape.num_heads,
            kv_heads: self.shape.num_kv_heads,
            head_dim: self.shape.head_dim,
            block_size: step.block_size,
            window: self.shape.sliding_window.unwrap_or(0),
        };
        let seqs: Vec<SeqRows> = step
            .seqs
            .iter()
            .map(|s| SeqRows {
                first_row: s.first_row,
                cached: s.cached,
                new: s.new,
                block_table: &s.block_table,
            })
            .collect();
        // Tensor cores take 16-bit floats; where the build has kernels for the dtype.
        let flash = self.dtype != DType::F32;
        let plan = AttentionPlan::new(shape, &seqs, flash, self.thread_blocks);
        Ok(Box::new(CudaStep {
            step: AttentionStep::new(plan, &self.device)?,
        }))
    }
}

struct CudaStep {
    step: AttentionStep,
}

impl StepAttention for CudaStep {
    fn forward(&self, kv: &LayerKv, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.step.write_cache(k, v, &kv.keys, &kv.values)?;
        let out = self.step.attention(q, &kv.keys, &kv.values)?;
        let (n, heads, head_dim) = out.dims3()?;
        Ok(out.reshape((n, heads * head_dim))?)
    }

    fn forward_qkv(
        &self,
        kv: &LayerKv,
        qkv: &Tensor,
        _shape: &HeadShape,
        rope: &RopeRows,
    ) -> Result<Tensor> {
        let q = self
            .step
            .qkv_rope_cache(qkv, &rope.cos, &rope.sin, &kv.keys, &kv.values)?;
        let out = self.step.attention(&q, &kv.keys, &kv.values)?;
        let (n, heads, head_dim) = out.dims3()?;
        Ok(out.reshape((n, heads * head_dim))?)
    }
}
