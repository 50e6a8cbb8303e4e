//! Paged attention with our CUDA kernels (`crates/kernels`). Layout: vLLM's, as the kernels
//! define it (`key_cache_shape`, `value_cache_shape`). Every new token is a query row over its
//! own sequence's blocks, seeing positions up to its own, so prompt chunks and decoding tokens
//! run in one launch.

use super::{Attention, HeadShape, LayerKv, StepAttention, StepLayout};
use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use ferrollama_kernels::{key_cache_shape, reshape_and_cache, value_cache_shape, PagedAttention};

pub struct Cuda {
    shape: HeadShape,
    dtype: DType,
    device: Device,
}

impl Cuda {
    pub fn new(shape: HeadShape, dtype: DType, device: Device) -> Self {
        Self {
            shape,
            dtype,
            device,
        }
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
        let n = step.num_tokens();
        let max_blocks = step
            .seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(1);
        let mut tables = vec![0u32; step.seqs.len() * max_blocks];
        let mut row_seq = Vec::with_capacity(n);
        for (i, seq) in step.seqs.iter().enumerate() {
            tables[i * max_blocks..][..seq.block_table.len()].copy_from_slice(&seq.block_table);
            row_seq.extend(std::iter::repeat_n(i as u32, seq.new));
        }
        let context_lens: Vec<u32> = step.positions.iter().map(|p| p + 1).collect();
        let window = self.shape.sliding_window.unwrap_or(0);
        let max_keys = context_lens
            .iter()
            .map(|&c| {
                if window > 0 {
                    (c as usize).min(window)
                } else {
                    c as usize
                }
            })
            .max()
            .unwrap_or(1);
        let device = &self.device;
        Ok(Box::new(CudaStep {
            slots: Tensor::new(step.slots.as_slice(), device)?,
            attention: PagedAttention {
                block_tables: Tensor::from_vec(tables, (step.seqs.len(), max_blocks), device)?,
                row_seq: Tensor::new(row_seq, device)?,
                context_lens: Tensor::new(context_lens, device)?,
                max_keys,
                scale: 1.0 / (self.shape.head_dim as f32).sqrt(),
                window,
            },
        }))
    }
}

struct CudaStep {
    slots: Tensor,
    attention: PagedAttention,
}

impl StepAttention for CudaStep {
    fn forward(&self, kv: &LayerKv, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        reshape_and_cache(k, v, &kv.keys, &kv.values, &self.slots)?;
        let out = self.attention.forward(q, &kv.keys, &kv.values)?;
        let (n, heads, head_dim) = out.dims3()?;
        Ok(out.reshape((n, heads * head_dim))?)
    }
}
