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

/// Query tokens of one sequence that one work item takes together (a prompt chunk is cut into
/// runs of this many; a decoding token is a run of one).
const RUN: usize = 16;

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
    let attend = pick_attend();
    // Work items: (a run of consecutive tokens of one sequence, a KV head). The query heads
    // of the group, for every token of the run, read each key and value once between them.
    let items: Vec<(usize, usize, usize)> = runs(&tokens.seq_of_token)
        .into_iter()
        .flat_map(|(t0, n)| (0..num_kv_heads).map(move |h| (t0, n, h)))
        .collect();
    let results: Vec<Vec<f32>> = items
        .par_iter()
        .map(|&(t0, n, kv_head)| {
            let last = tokens.positions[t0 + n - 1] as usize;
            let rows = (t0..t0 + n)
                .flat_map(|t| {
                    (0..group).map(move |g| {
                        let head = kv_head * group + g;
                        let q = &queries[(t * num_heads + head) * head_dim..][..head_dim];
                        (q, tokens.positions[t] as usize)
                    })
                })
                .collect();
            let work = Work {
                layer,
                slots: &tokens.seq_slots[tokens.seq_of_token[t0]][..=last],
                rows,
                window: sliding_window,
                kv_offset: kv_head * head_dim,
                width: num_kv_heads * head_dim,
                head_dim,
            };
            let mut out = vec![0f32; n * group * head_dim];
            attend(&work, &mut out);
            out
        })
        .collect();
    let mut out = vec![0.0f32; queries.len()];
    for (&(t0, n, kv_head), result) in items.iter().zip(&results) {
        for (i, rows) in result.chunks_exact(group * head_dim).enumerate().take(n) {
            let at = ((t0 + i) * num_heads + kv_head * group) * head_dim;
            out[at..at + group * head_dim].copy_from_slice(rows);
        }
    }
    out
}

/// `(first token, count)` for runs of at most `RUN` consecutive tokens of one sequence.
fn runs(seq_of_token: &[usize]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = 0;
    for t in 1..=seq_of_token.len() {
        if t == seq_of_token.len() || seq_of_token[t] != seq_of_token[start] || t - start == RUN {
            runs.push((start, t - start));
            start = t;
        }
    }
    runs
}

/// One work item: query rows (a vector and its position each, token-major then head) against
/// the keys and values of one KV head. `out` gets one `head_dim` row per query row.
struct Work<'a> {
    layer: &'a LayerCache,
    /// The sequence's slots from position 0 to the last query's.
    slots: &'a [usize],
    rows: Vec<(&'a [f32], usize)>,
    window: Option<usize>,
    kv_offset: usize,
    width: usize,
    head_dim: usize,
}

impl Work<'_> {
    /// The first position a query at `position` sees.
    fn first(&self, position: usize) -> usize {
        self.window.map_or(0, |w| (position + 1).saturating_sub(w))
    }

    fn key(&self, j: usize) -> &[f32] {
        &self.layer.keys[self.slots[j] * self.width + self.kv_offset..][..self.head_dim]
    }

    fn value(&self, j: usize) -> &[f32] {
        &self.layer.values[self.slots[j] * self.width + self.kv_offset..][..self.head_dim]
    }
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

/// Keys per block of the prefill kernel, and query rows per register tile.
const KEYS: usize = 16;
const QUERIES: usize = 4;

/// Every run, a decode step's single token or a prompt chunk's sixteen, takes this one path:
/// the same arithmetic in the same order, so a prompt gives bit-identical activations however
/// it is chunked (a quantized model would otherwise round some of them the other way).
/// Scores come block by block: sixteen keys are
/// transposed once, then every four query rows meet them in a 4×16 register tile, with no
/// horizontal sums. Keys a row must not see (later positions, outside the window) are masked.
#[inline(always)]
fn attend(work: &Work<'_>, out: &mut [f32]) {
    let head_dim = work.head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let last = work.rows.iter().map(|r| r.1).max().unwrap_or(0);
    let start = work.rows.iter().map(|r| work.first(r.1)).min().unwrap_or(0);
    let n = last + 1 - start;
    let rows = work.rows.len();
    let mut scores = vec![0f32; rows * n];
    let zero = vec![0f32; head_dim];
    let mut keys_t = vec![[0f32; KEYS]; head_dim];
    for block in (start..=last).step_by(KEYS) {
        let width = KEYS.min(last + 1 - block);
        for (i, j) in (block..block + width).enumerate() {
            for (d, &x) in work.key(j).iter().enumerate() {
                keys_t[d][i] = x;
            }
        }
        for r0 in (0..rows).step_by(QUERIES) {
            let q: [&[f32]; QUERIES] =
                std::array::from_fn(|i| work.rows.get(r0 + i).map_or(&zero[..], |r| r.0));
            let tile = scores_tile(q, &keys_t);
            for (i, tile_row) in tile.iter().enumerate().take(rows - r0) {
                let at = (r0 + i) * n + block - start;
                scores[at..at + width].copy_from_slice(&tile_row[..width]);
            }
        }
    }
    for (r, row) in scores.chunks_exact_mut(n).enumerate() {
        let position = work.rows[r].1;
        let (lo, hi) = (work.first(position) - start, position - start);
        row.iter_mut().for_each(|s| *s *= scale);
        softmax(&mut row[lo..=hi]);
        row[..lo].fill(0.0);
        row[hi + 1..].fill(0.0);
    }
    for j in start..=last {
        let v = work.value(j);
        for (r, out) in out.chunks_exact_mut(head_dim).enumerate() {
            let p = scores[r * n + j - start];
            if p != 0.0 {
                axpy(p, v, out);
            }
        }
    }
}

/// Four query rows against sixteen transposed keys: sixteen lanes per row, one broadcast
/// multiply-add per dimension.
#[inline(always)]
fn scores_tile(q: [&[f32]; QUERIES], keys_t: &[[f32; KEYS]]) -> [[f32; KEYS]; QUERIES] {
    let mut acc = [[0f32; KEYS]; QUERIES];
    for (d, k) in keys_t.iter().enumerate() {
        for i in 0..QUERIES {
            let x = q[i][d];
            for l in 0..KEYS {
                acc[i][l] += x * k[l];
            }
        }
    }
    acc
}

#[inline(always)]
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in row.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    row.iter_mut().for_each(|s| *s /= sum);
}

/// `out += a · x`
#[inline(always)]
fn axpy(a: f32, x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_sequences_and_at_the_run_length() {
        let mut seq_of_token = vec![0; RUN + 3];
        seq_of_token.extend([1, 2, 2]);
        assert_eq!(
            runs(&seq_of_token),
            vec![(0, RUN), (RUN, 3), (RUN + 3, 1), (RUN + 4, 2)]
        );
        assert!(runs(&[]).is_empty());
    }
}
