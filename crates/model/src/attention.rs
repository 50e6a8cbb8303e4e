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
    let group = num_heads / num_kv_heads;
    let mut out = vec![0.0f32; queries.len()];
    let attend = pick_attend();
    // One work item per (token, KV head): the group of query heads that share a KV head read
    // each key and value once between them.
    out.par_chunks_mut(group * head_dim)
        .enumerate()
        .for_each(|(item, out)| {
            let (t, kv_head) = (item / num_kv_heads, item % num_kv_heads);
            let position = tokens.positions[t] as usize;
            let first = sliding_window.map_or(0, |w| (position + 1).saturating_sub(w));
            let work = Work {
                layer,
                slots: &tokens.seq_slots[tokens.seq_of_token[t]][first..=position],
                queries: &queries[item * group * head_dim..][..group * head_dim],
                kv_offset: kv_head * head_dim,
                width: num_kv_heads * head_dim,
                head_dim,
            };
            attend(&work, out);
        });
    out
}

/// One work item: `queries` holds the group's heads back to back, as does `out`.
struct Work<'a> {
    layer: &'a LayerCache,
    slots: &'a [usize],
    queries: &'a [f32],
    kv_offset: usize,
    width: usize,
    head_dim: usize,
}

type Attend = fn(&Work<'_>, &mut [f32]);

/// The same loops compiled twice: for AVX2 + FMA when the CPU has them (checked at run
/// time, so the binary still runs anywhere), and for the baseline.
fn pick_attend() -> Attend {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn attend_avx2(work: &Work<'_>, out: &mut [f32]) {
            attend(work, out)
        }
        // Safety: only reached where the CPU has AVX2 and FMA.
        return |work, out| unsafe { attend_avx2(work, out) };
    }
    attend
}

#[inline(always)]
fn attend(work: &Work<'_>, out: &mut [f32]) {
    let Work {
        layer,
        slots,
        queries,
        kv_offset,
        width,
        head_dim,
    } = *work;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let n = slots.len();
    let group = queries.len() / head_dim;
    let mut scores = vec![0f32; group * n];
    for (j, &slot) in slots.iter().enumerate() {
        let k = &layer.keys[slot * width + kv_offset..][..head_dim];
        for (g, q) in queries.chunks_exact(head_dim).enumerate() {
            scores[g * n + j] = dot(q, k) * scale;
        }
    }
    for row in scores.chunks_exact_mut(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        row.iter_mut().for_each(|s| *s /= sum);
    }
    for (j, &slot) in slots.iter().enumerate() {
        let v = &layer.values[slot * width + kv_offset..][..head_dim];
        for (g, out) in out.chunks_exact_mut(head_dim).enumerate() {
            let weight = scores[g * n + j];
            for (o, &x) in out.iter_mut().zip(v) {
                *o += weight * x;
            }
        }
    }
}

/// A dot product in sixteen lanes, so the compiler keeps several vector FMAs in flight
/// instead of one scalar chain.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    // A tree, not a chain of sixteen dependent adds.
    for i in 0..8 {
        lanes[i] += lanes[i + 8];
    }
    for i in 0..4 {
        lanes[i] += lanes[i + 4];
    }
    (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]) + tail
}
