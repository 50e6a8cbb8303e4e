//! Paged attention on the CPU: each new token attends causally over its own sequence, reading
//! keys and values from the sequence's cache blocks (the new tokens' own keys are written there
//! first, so prefill, continued prefill and decode are one code path).

use crate::batch::SeqChunk;
use crate::kv_cache::{KvCache, LayerCache};
use rayon::prelude::*;

/// Shapes of the attention heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub sliding_window: Option<usize>,
}

/// Where each new token of a batch sits: its cache slot and its position.
pub struct TokenSlots {
    pub slots: Vec<usize>,
    pub positions: Vec<u32>,
    /// For each token, the slot of every position its sequence has up to and including it.
    seq_of_token: Vec<usize>,
    seq_slots: Vec<Vec<usize>>,
}

impl TokenSlots {
    pub fn new(cache: &KvCache, seqs: &[SeqChunk<'_>]) -> Self {
        let mut slots = Vec::new();
        let mut positions = Vec::new();
        let mut seq_of_token = Vec::new();
        let mut seq_slots = Vec::with_capacity(seqs.len());
        for (i, seq) in seqs.iter().enumerate() {
            let all: Vec<usize> = (0..seq.context_len())
                .map(|p| cache.slot(seq.block_table, p))
                .collect();
            for p in seq.cached..seq.context_len() {
                slots.push(all[p]);
                positions.push(p as u32);
                seq_of_token.push(i);
            }
            seq_slots.push(all);
        }
        Self {
            slots,
            positions,
            seq_of_token,
            seq_slots,
        }
    }
}

/// Stores the new tokens' keys and values (`[tokens, kv_heads * head_dim]`, row-major).
pub fn write_kv(
    layer: &mut LayerCache,
    width: usize,
    tokens: &TokenSlots,
    keys: &[f32],
    values: &[f32],
) {
    for (t, &slot) in tokens.slots.iter().enumerate() {
        let (dst, src) = (slot * width..(slot + 1) * width, t * width..(t + 1) * width);
        layer.keys[dst.clone()].copy_from_slice(&keys[src.clone()]);
        layer.values[dst].copy_from_slice(&values[src]);
    }
}

/// `queries` is `[tokens, heads * head_dim]`; returns the attention output in the same shape.
pub fn paged_attention(
    layer: &LayerCache,
    tokens: &TokenSlots,
    queries: &[f32],
    shape: HeadShape,
) -> Vec<f32> {
    let HeadShape {
        num_heads,
        num_kv_heads,
        head_dim,
        sliding_window,
    } = shape;
    let width = num_kv_heads * head_dim;
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0.0f32; queries.len()];
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(item, out)| {
            let (t, head) = (item / num_heads, item % num_heads);
            let q = &queries[item * head_dim..(item + 1) * head_dim];
            let position = tokens.positions[t] as usize;
            let first = sliding_window.map_or(0, |w| (position + 1).saturating_sub(w));
            let slots = &tokens.seq_slots[tokens.seq_of_token[t]][first..=position];
            let kv_offset = (head / group) * head_dim;

            let mut scores: Vec<f32> = slots
                .iter()
                .map(|&slot| {
                    let k = &layer.keys[slot * width + kv_offset..][..head_dim];
                    dot(q, k) * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            for (&slot, &weight) in slots.iter().zip(&scores) {
                let v = &layer.values[slot * width + kv_offset..][..head_dim];
                let w = weight / sum;
                for (o, &x) in out.iter_mut().zip(v) {
                    *o += w * x;
                }
            }
        });
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
