//! Paged attention on the CPU, over host memory: each new token attends causally over its own
//! sequence, reading keys and values from the sequence's cache blocks (the new tokens' own keys
//! are written there first, so prefill, continued prefill and decode are one code path).
//! Layout: keys and values are f32 `[slots, kv_heads * head_dim]`, slot `block * block_size + i`.

use super::{Attention, HeadShape, LayerKv, StepAttention, StepLayout};
use crate::error::{ModelError, Result};
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor};
use rayon::prelude::*;

pub struct Native {
    shape: HeadShape,
}

impl Native {
    pub fn new(shape: HeadShape) -> Self {
        Self { shape }
    }
}

impl Attention for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn allocate(&self, num_blocks: usize, block_size: usize) -> Result<LayerKv> {
        let shape = (num_blocks * block_size, self.shape.kv_width());
        Ok(LayerKv {
            keys: Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
            values: Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
        })
    }

    fn prepare<'a>(&'a self, step: &'a StepLayout) -> Result<Box<dyn StepAttention + 'a>> {
        let mut seq_of_token = Vec::with_capacity(step.num_tokens());
        let mut seq_slots = Vec::with_capacity(step.seqs.len());
        for (i, seq) in step.seqs.iter().enumerate() {
            seq_of_token.extend(std::iter::repeat_n(i, seq.new));
            seq_slots.push(
                (0..seq.context_len())
                    .map(|p| step.slot(seq, p) as usize)
                    .collect(),
            );
        }
        Ok(Box::new(NativeStep {
            step,
            seq_of_token,
            seq_slots,
        }))
    }
}

/// Where each new token of a step sits: its sequence, and the slot of every position its
/// sequence has up to and including it (its own slot is in `step.slots`).
struct NativeStep<'a> {
    step: &'a StepLayout,
    seq_of_token: Vec<usize>,
    seq_slots: Vec<Vec<usize>>,
}

impl StepAttention for NativeStep<'_> {
    fn forward(&self, kv: &LayerKv, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let n = self.step.num_tokens();
        let width = self.step.shape.kv_width();
        let write = WriteSlots {
            slots: &self.step.slots,
            width,
        };
        kv.keys.inplace_op2(&k.contiguous()?, &write)?;
        kv.values.inplace_op2(&v.contiguous()?, &write)?;
        let q = q.contiguous()?;
        let out = {
            let (keys, _) = kv.keys.storage_and_layout();
            let (values, _) = kv.values.storage_and_layout();
            let (queries, q_layout) = q.storage_and_layout();
            let queries = &cpu_f32(&queries)?[q_layout.start_offset()..][..q.elem_count()];
            paged_attention(
                cpu_f32(&keys)?,
                cpu_f32(&values)?,
                self,
                queries,
                self.step.shape,
            )
        };
        let s = self.step.shape;
        Ok(Tensor::from_vec(
            out,
            (n, s.num_heads * s.head_dim),
            &Device::Cpu,
        )?)
    }
}

fn cpu_f32(storage: &Storage) -> Result<&[f32]> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu.as_slice::<f32>()?),
        _ => Err(ModelError::Unsupported(
            "native attention needs f32 tensors on the CPU".into(),
        )),
    }
}

/// Copies the rows of a `[tokens, width]` tensor into the cache slots of those tokens.
struct WriteSlots<'a> {
    slots: &'a [u32],
    width: usize,
}

impl InplaceOp2 for WriteSlots<'_> {
    fn name(&self) -> &'static str {
        "write-kv-slots"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        _: &Layout,
        rows: &CpuStorage,
        rows_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(cache), CpuStorage::F32(rows)) = (cache, rows) else {
            candle_core::bail!("write-kv-slots: f32 only")
        };
        let rows = &rows[rows_layout.start_offset()..];
        let w = self.width;
        for (t, &slot) in self.slots.iter().enumerate() {
            let slot = slot as usize;
            cache[slot * w..(slot + 1) * w].copy_from_slice(&rows[t * w..(t + 1) * w]);
        }
        Ok(())
    }
}

/// Query tokens of one sequence that one work item takes together (a prompt chunk is cut into
/// runs of this many; a decoding token is a run of one).
const RUN: usize = 16;

/// `queries` is `[tokens, heads * head_dim]`; returns the attention output in the same shape.
fn paged_attention(
    keys: &[f32],
    values: &[f32],
    tokens: &NativeStep<'_>,
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
            let last = tokens.step.positions[t0 + n - 1] as usize;
            let rows = (t0..t0 + n)
                .flat_map(|t| {
                    (0..group).map(move |g| {
                        let head = kv_head * group + g;
                        let q = &queries[(t * num_heads + head) * head_dim..][..head_dim];
                        (q, tokens.step.positions[t] as usize)
                    })
                })
                .collect();
            let work = Work {
                keys,
                values,
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
    keys: &'a [f32],
    values: &'a [f32],
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
        &self.keys[self.slots[j] * self.width + self.kv_offset..][..self.head_dim]
    }

    fn value(&self, j: usize) -> &[f32] {
        &self.values[self.slots[j] * self.width + self.kv_offset..][..self.head_dim]
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
