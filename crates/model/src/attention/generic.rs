//! Paged attention in candle tensor ops only, so the same code runs on the CPU (where CI tests
//! it against the native kernels) and on CUDA (where it is the safety net for our kernels).
//! Layout: keys and values are `[slots, kv_heads * head_dim]` in the model's dtype.
//!
//! Each step, sequences form groups that run as one batched matmul each: all decoding
//! sequences (one new token each) together, their keys gathered into rows padded to the
//! longest; every sequence with a prompt chunk on its own. Padding and future positions are
//! masked out before the softmax, which runs in f32.

use super::{Attention, HeadShape, LayerKv, SeqLayout, StepAttention, StepLayout};
use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::ops::softmax_last_dim;

pub struct Generic {
    shape: HeadShape,
    dtype: DType,
    device: Device,
}

impl Generic {
    pub fn new(shape: HeadShape, dtype: DType, device: Device) -> Self {
        Self {
            shape,
            dtype,
            device,
        }
    }
}

impl Attention for Generic {
    fn name(&self) -> &'static str {
        "generic"
    }

    fn kv_dtype(&self) -> DType {
        self.dtype
    }

    fn allocate(&self, num_blocks: usize, block_size: usize) -> Result<LayerKv> {
        let shape = (num_blocks * block_size, self.shape.kv_width());
        Ok(LayerKv {
            keys: Tensor::zeros(shape, self.dtype, &self.device)?,
            values: Tensor::zeros(shape, self.dtype, &self.device)?,
        })
    }

    fn prepare<'a>(&'a self, step: &'a StepLayout) -> Result<Box<dyn StepAttention + 'a>> {
        let n = step.num_tokens();
        let width = self.shape.kv_width();
        // scatter_set wants one index per element: each row repeats its token's slot.
        let write_index = Tensor::new(step.slots.as_slice(), &self.device)?
            .reshape((n, 1))?
            .broadcast_as((n, width))?
            .contiguous()?;

        let (decoding, prompts): (Vec<&SeqLayout>, Vec<&SeqLayout>) =
            step.seqs.iter().partition(|s| s.new == 1);
        let mut groups = Vec::new();
        if !decoding.is_empty() {
            groups.push(Group::new(&decoding, step, &self.device)?);
        }
        for seq in prompts {
            groups.push(Group::new(&[seq], step, &self.device)?);
        }
        // Group outputs come concatenated in group order; put them back in batch order.
        let concat_order: Vec<u32> = groups
            .iter()
            .flat_map(|g| g.seqs.iter().flat_map(|s| s.first_row..s.first_row + s.new))
            .map(|row| row as u32)
            .collect();
        let mut restore = vec![0u32; n];
        for (i, &row) in concat_order.iter().enumerate() {
            restore[row as usize] = i as u32;
        }
        let identity = restore.iter().enumerate().all(|(i, &r)| r as usize == i);
        let restore = if identity {
            None
        } else {
            Some(Tensor::new(restore, &self.device)?)
        };
        Ok(Box::new(GenericStep {
            attention: self,
            write_index,
            groups,
            restore,
        }))
    }
}

/// Sequences that run as one batched matmul.
struct Group<'a> {
    seqs: Vec<&'a SeqLayout>,
    /// New tokens per sequence (1 for the decoding group).
    q_len: usize,
    /// Keys per sequence after padding.
    keys: usize,
    /// The query rows: a range of the batch for one sequence, else each sequence's row.
    rows: Rows,
    /// `[seqs * keys]` cache slots to gather (padding repeats a real slot).
    gather: Tensor,
    /// `[seqs, 1, 1, q_len, keys]`, f32: 0 where a query sees a key, -inf elsewhere.
    mask: Tensor,
}

enum Rows {
    Range(usize, usize),
    Index(Tensor),
}

impl<'a> Group<'a> {
    fn new(seqs: &[&'a SeqLayout], step: &StepLayout, device: &Device) -> Result<Self> {
        let shape = step.shape;
        let q_len = seqs
            .iter()
            .map(|s| s.new)
            .max()
            .expect("a group has sequences");
        // Each sequence's keys start where its first new token's view starts.
        let start = |s: &SeqLayout| shape.first_visible(s.cached);
        let keys = seqs
            .iter()
            .map(|s| s.context_len() - start(s))
            .max()
            .expect("a group has sequences");
        let mut gather = Vec::with_capacity(seqs.len() * keys);
        let mut mask = Vec::with_capacity(seqs.len() * q_len * keys);
        for s in seqs {
            let first_key = start(s);
            for j in 0..keys {
                let position = (first_key + j).min(s.context_len() - 1);
                gather.push(step.slot(s, position));
            }
            for i in 0..q_len {
                let query = s.cached + i;
                for j in 0..keys {
                    let key = first_key + j;
                    let visible = key <= query && key >= shape.first_visible(query);
                    mask.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let rows = if seqs.len() == 1 {
            Rows::Range(seqs[0].first_row, seqs[0].new)
        } else {
            let rows: Vec<u32> = seqs.iter().map(|s| s.first_row as u32).collect();
            Rows::Index(Tensor::new(rows, device)?)
        };
        Ok(Self {
            seqs: seqs.to_vec(),
            q_len,
            keys,
            rows,
            gather: Tensor::new(gather, device)?,
            mask: Tensor::from_vec(mask, (seqs.len(), 1, 1, q_len, keys), device)?,
        })
    }
}

struct GenericStep<'a> {
    attention: &'a Generic,
    write_index: Tensor,
    groups: Vec<Group<'a>>,
    restore: Option<Tensor>,
}

impl StepAttention for GenericStep<'_> {
    fn forward(&self, kv: &LayerKv, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let HeadShape {
            num_heads,
            num_kv_heads,
            head_dim,
            ..
        } = self.attention.shape;
        let group = self.attention.shape.group();
        let n = q.dim(0)?;
        let width = num_kv_heads * head_dim;
        kv.keys
            .scatter_set(&self.write_index, &k.reshape((n, width))?.contiguous()?, 0)?;
        kv.values
            .scatter_set(&self.write_index, &v.reshape((n, width))?.contiguous()?, 0)?;
        let scale = 1.0 / (head_dim as f64).sqrt();

        let mut outputs = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let seqs = g.seqs.len();
            let q = match &g.rows {
                Rows::Range(first, len) => q.narrow(0, *first, *len)?,
                Rows::Index(rows) => q.index_select(rows, 0)?,
            };
            // [seqs, heads, q_len, d] -> [seqs, kv_heads, group * q_len, d]: the query heads
            // of one KV head side by side, so one matmul serves the group.
            let q = q
                .reshape((seqs, g.q_len, num_heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((seqs, num_kv_heads, group * g.q_len, head_dim))?;
            let gathered = |cache: &Tensor| -> Result<Tensor> {
                Ok(cache
                    .index_select(&g.gather, 0)?
                    .reshape((seqs, g.keys, num_kv_heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (keys, values) = (gathered(&kv.keys)?, gathered(&kv.values)?);
            let scores = (q.matmul(&keys.t()?)?.to_dtype(DType::F32)? * scale)?
                .reshape((seqs, num_kv_heads, group, g.q_len, g.keys))?
                .broadcast_add(&g.mask)?;
            let probs = softmax_last_dim(&scores)?
                .to_dtype(self.attention.dtype)?
                .reshape((seqs, num_kv_heads, group * g.q_len, g.keys))?;
            let out = probs
                .matmul(&values)?
                .reshape((seqs, num_heads, g.q_len, head_dim))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((seqs * g.q_len, num_heads * head_dim))?;
            outputs.push(out);
        }
        let out = Tensor::cat(&outputs, 0)?;
        Ok(match &self.restore {
            Some(order) => out.index_select(order, 0)?,
            None => out,
        })
    }
}
