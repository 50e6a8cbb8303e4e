//! Paged attention behind one interface, with one implementation per way of computing it:
//!
//! - [`native`]: our CPU kernels over host memory (the CPU default);
//! - [`generic`]: candle tensor ops only (gather by block table, matmul, masked softmax), so it
//!   runs unchanged on the CPU and on CUDA: CI tests its logic, and it is the GPU's safety net;
//! - `cuda`: our CUDA kernels (`crates/kernels`, `kernels/*.cu`), with the `cuda` feature.
//!
//! Each implementation owns its KV layout: it allocates the cache's tensors and reads and
//! writes them. Per step, [`Attention::prepare`] turns the batch's placement in the cache
//! ([`StepLayout`]) into whatever inputs it needs on the device, once; every layer then runs
//! [`StepAttention::forward`] with them.

#[cfg(feature = "cuda")]
mod cuda;
mod generic;
mod native;

use crate::batch::SeqChunk;
use crate::error::{ModelError, Result};
use crate::linear::split;
use crate::rope::RopeRows;
use candle_core::{DType, Device, Tensor};
use candle_nn::rotary_emb::rope_thd;

pub use generic::Generic;
pub use native::Native;

/// Shapes of the attention heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub sliding_window: Option<usize>,
}

impl HeadShape {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Elements of one token's keys (or values): `kv_heads * head_dim`.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The first position a query at `position` sees.
    pub fn first_visible(&self, position: usize) -> usize {
        self.sliding_window
            .map_or(0, |w| (position + 1).saturating_sub(w))
    }
}

/// One layer's keys and values, in the layout of the implementation that allocated them.
pub struct LayerKv {
    pub keys: Tensor,
    pub values: Tensor,
}

/// Which implementation computes attention (`--attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKind {
    /// Native kernels on the CPU, our CUDA kernels on a GPU.
    #[default]
    Auto,
    Native,
    Generic,
    Cuda,
}

impl std::str::FromStr for AttentionKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            "cuda" => Ok(Self::Cuda),
            _ => Err(format!(
                "unknown attention `{s}` (auto, native, generic, cuda)"
            )),
        }
    }
}

/// Which attention implementation, and the KV cache's element type (`--kv-cache-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttentionSpec {
    pub kind: AttentionKind,
    /// `None`: f16 for the native kernels (as llama.cpp), the model's dtype elsewhere.
    pub kv_dtype: Option<DType>,
}

impl From<AttentionKind> for AttentionSpec {
    fn from(kind: AttentionKind) -> Self {
        Self {
            kind,
            kv_dtype: None,
        }
    }
}

/// Builds the implementation `spec` names for `device` and `dtype`.
pub fn build(
    spec: AttentionSpec,
    shape: HeadShape,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Attention>> {
    let kind = match (spec.kind, device.is_cuda()) {
        (AttentionKind::Auto, false) => AttentionKind::Native,
        (AttentionKind::Auto, true) => AttentionKind::Cuda,
        (kind, _) => kind,
    };
    // Only the native kernels convert on the way in and out of the cache.
    if kind != AttentionKind::Native && spec.kv_dtype.is_some_and(|kv| kv != dtype) {
        return Err(ModelError::Unsupported(format!(
            "{kind:?} attention keeps its KV cache in the model's dtype ({dtype:?})"
        )));
    }
    match kind {
        AttentionKind::Native if device.is_cpu() && dtype == DType::F32 => Ok(Box::new(
            Native::new(shape, spec.kv_dtype.unwrap_or(DType::F16))?,
        )),
        AttentionKind::Native => Err(ModelError::Unsupported(
            "native attention runs on the CPU in f32 only".into(),
        )),
        AttentionKind::Generic => Ok(Box::new(Generic::new(shape, dtype, device.clone()))),
        #[cfg(feature = "cuda")]
        AttentionKind::Cuda if device.is_cuda() => {
            Ok(Box::new(cuda::Cuda::new(shape, dtype, device.clone())?))
        }
        AttentionKind::Cuda => Err(ModelError::Unsupported(
            "CUDA attention needs a CUDA device and a build with the `cuda` feature".into(),
        )),
        AttentionKind::Auto => unreachable!("resolved above"),
    }
}

/// A way of computing paged attention.
pub trait Attention: Send + Sync {
    fn name(&self) -> &'static str;

    /// The KV cache's element type.
    fn kv_dtype(&self) -> DType;

    /// Allocates one layer's keys and values for `num_blocks` blocks of `block_size` tokens.
    fn allocate(&self, num_blocks: usize, block_size: usize) -> Result<LayerKv>;

    /// Builds this step's inputs (on the device) once, for every layer to use.
    fn prepare<'a>(&'a self, step: &'a StepLayout) -> Result<Box<dyn StepAttention + 'a>>;
}

/// One step's attention, ready to run layer after layer.
pub trait StepAttention {
    /// `q` is `[tokens, heads, head_dim]`, `k` and `v` `[tokens, kv_heads, head_dim]`, rotary
    /// embedding applied. Stores the new keys and values in `kv` first, so a token attends to
    /// itself and to its sequence's earlier tokens alike. Returns `[tokens, heads * head_dim]`.
    fn forward(&self, kv: &LayerKv, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor>;

    /// The same from the joined q/k/v projection `[tokens, (heads + 2 kv_heads) head_dim]`,
    /// before rotary embedding: splits it and rotates q and k (candle ops), then [`forward`].
    /// Implementations with a fused kernel for all of that override it.
    ///
    /// [`forward`]: StepAttention::forward
    fn forward_qkv(
        &self,
        kv: &LayerKv,
        qkv: &Tensor,
        shape: &HeadShape,
        rope: &RopeRows,
    ) -> Result<Tensor> {
        split_rope_forward(self, kv, qkv, shape, rope)
    }
}

/// [`StepAttention::forward_qkv`] in candle ops: split, rotate q and k, then `forward`.
fn split_rope_forward<A: StepAttention + ?Sized>(
    attention: &A,
    kv: &LayerKv,
    qkv: &Tensor,
    shape: &HeadShape,
    rope: &RopeRows,
) -> Result<Tensor> {
    let n = qkv.dim(0)?;
    let (heads, kv_heads, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let [q, k, v]: [Tensor; 3] = split(qkv, &[heads * d, kv_heads * d, kv_heads * d])?
        .try_into()
        .expect("three projections");
    let (cos, sin) = (&rope.cos_in_dtype, &rope.sin_in_dtype);
    let q = rope_thd(&q.reshape((1, n, heads, d))?, cos, sin)?;
    let k = rope_thd(&k.reshape((1, n, kv_heads, d))?, cos, sin)?;
    attention.forward(
        kv,
        &q.reshape((n, heads, d))?,
        &k.reshape((n, kv_heads, d))?,
        &v.reshape((n, kv_heads, d))?,
    )
}

/// Where one sequence's new tokens sit in a step's flat batch and in the cache.
#[derive(Debug, Clone)]
pub struct SeqLayout {
    /// Row of the sequence's first new token in the batch.
    pub first_row: usize,
    /// Tokens already cached before this step.
    pub cached: usize,
    /// New tokens this step.
    pub new: usize,
    /// The sequence's cache blocks, covering `cached + new` positions.
    pub block_table: Vec<u32>,
}

impl SeqLayout {
    pub fn context_len(&self) -> usize {
        self.cached + self.new
    }
}

/// A step's placement in the paged cache, on the host: what every implementation prepares from.
#[derive(Debug, Clone)]
pub struct StepLayout {
    pub shape: HeadShape,
    pub block_size: usize,
    pub seqs: Vec<SeqLayout>,
    /// Per new token: its position in its sequence.
    pub positions: Vec<u32>,
    /// Per new token: its cache slot (`block * block_size + offset`).
    pub slots: Vec<u32>,
}

impl StepLayout {
    pub fn new(shape: HeadShape, block_size: usize, chunks: &[SeqChunk<'_>]) -> Self {
        let mut seqs = Vec::with_capacity(chunks.len());
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        for chunk in chunks {
            seqs.push(SeqLayout {
                first_row: positions.len(),
                cached: chunk.cached,
                new: chunk.tokens.len(),
                block_table: chunk.block_table.to_vec(),
            });
            for p in chunk.cached..chunk.context_len() {
                positions.push(p as u32);
                slots.push(slot(chunk.block_table, block_size, p));
            }
        }
        Self {
            shape,
            block_size,
            seqs,
            positions,
            slots,
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.positions.len()
    }

    /// The slot of `position` in `seq`.
    pub fn slot(&self, seq: &SeqLayout, position: usize) -> u32 {
        slot(&seq.block_table, self.block_size, position)
    }
}

fn slot(block_table: &[u32], block_size: usize, position: usize) -> u32 {
    block_table[position / block_size] * block_size as u32 + (position % block_size) as u32
}
