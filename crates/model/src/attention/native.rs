//! Paged attention on the CPU, over host memory: each new token attends causally over its own
//! sequence, reading keys and values from the sequence's cache blocks (the new tokens' own keys
//! are written there first, so prefill, continued prefill and decode are one code path).
//!
//! The cache is f16 by default, as llama.cpp's is: half the memory, so the pool holds twice the
//! tokens, and half the bytes for decode to read. Its layout is the one the kernel reads, per
//! block and KV head:
//! - keys `[num_blocks, kv_heads, head_dim, block_size]`: transposed, so the block's keys for
//!   one dimension are one row of lanes, and scores need no horizontal sums (vLLM's layout);
//! - values `[num_blocks, kv_heads, block_size, head_dim]`: one row per token, for the
//!   weighted sum.

use super::{Attention, HeadShape, LayerKv, StepAttention, StepLayout};
use crate::error::{ModelError, Result};
use crate::rope::RopeRows;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor};
use half::f16;
use std::sync::OnceLock;

pub struct Native {
    shape: HeadShape,
    kv_dtype: DType,
}

impl Native {
    /// `kv_dtype` is the cache's element type: f16 or f32.
    pub fn new(shape: HeadShape, kv_dtype: DType) -> Result<Self> {
        match kv_dtype {
            DType::F16 | DType::F32 => Ok(Self { shape, kv_dtype }),
            other => Err(ModelError::Unsupported(format!(
                "native attention keeps its KV cache in f16 or f32, not {other:?}"
            ))),
        }
    }
}

impl Attention for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    fn allocate(&self, num_blocks: usize, block_size: usize) -> Result<LayerKv> {
        let HeadShape {
            num_kv_heads,
            head_dim,
            ..
        } = self.shape;
        let keys = (num_blocks, num_kv_heads, head_dim, block_size);
        let values = (num_blocks, num_kv_heads, block_size, head_dim);
        Ok(LayerKv {
            keys: Tensor::zeros(keys, self.kv_dtype, &Device::Cpu)?,
            values: Tensor::zeros(values, self.kv_dtype, &Device::Cpu)?,
        })
    }

    fn prepare<'a>(&'a self, step: &'a StepLayout) -> Result<Box<dyn StepAttention + 'a>> {
        let mut seq_of_token = Vec::with_capacity(step.num_tokens());
        for (i, seq) in step.seqs.iter().enumerate() {
            seq_of_token.extend(std::iter::repeat_n(i, seq.new));
        }
        Ok(Box::new(NativeStep { step, seq_of_token }))
    }
}

/// Which sequence each new token of a step belongs to.
struct NativeStep<'a> {
    step: &'a StepLayout,
    seq_of_token: Vec<usize>,
}

impl StepAttention for NativeStep<'_> {
    /// Splits the joined projection and rotates q and k in one pass over it, with the same
    /// arithmetic as candle's `rope_thd`, so the results are bit for bit the same. Candle's way
    /// is eight ops, each making a tensor (decode loop A/B, 1.3B Q4_0, 2 cores: 1.01–1.02×).
    fn forward_qkv(
        &self,
        kv: &LayerKv,
        qkv: &Tensor,
        shape: &HeadShape,
        rope: &RopeRows,
    ) -> Result<Tensor> {
        // `rope.cos` and `rope.sin` are f32 whatever the model computes in.
        if qkv.dtype() != DType::F32 {
            return super::split_rope_forward(self, kv, qkv, shape, rope);
        }
        let n = qkv.dim(0)?;
        let (heads, kv_heads, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        let (q_width, kv_width) = (heads * d, kv_heads * d);
        let mut q = Vec::with_capacity(n * q_width);
        let mut k = Vec::with_capacity(n * kv_width);
        let mut v = Vec::with_capacity(n * kv_width);
        {
            let qkv = qkv.contiguous()?;
            let (qkv, qkv_layout) = qkv.storage_and_layout();
            let (cos, cos_layout) = rope.cos.storage_and_layout();
            let (sin, sin_layout) = rope.sin.storage_and_layout();
            let rows = f32_elements(&qkv, qkv_layout)?;
            let (cos, sin) = (
                f32_elements(&cos, cos_layout)?,
                f32_elements(&sin, sin_layout)?,
            );
            let half = d / 2;
            for (t, row) in rows.chunks_exact(q_width + 2 * kv_width).enumerate() {
                let (cos, sin) = (&cos[t * half..][..half], &sin[t * half..][..half]);
                rotate_into(&row[..q_width], cos, sin, &mut q);
                rotate_into(&row[q_width..][..kv_width], cos, sin, &mut k);
                v.extend_from_slice(&row[q_width + kv_width..]);
            }
        }
        self.forward(
            kv,
            &Tensor::from_vec(q, (n, heads, d), &Device::Cpu)?,
            &Tensor::from_vec(k, (n, kv_heads, d), &Device::Cpu)?,
            &Tensor::from_vec(v, (n, kv_heads, d), &Device::Cpu)?,
        )
    }

    fn forward(&self, kv: &LayerKv, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let n = self.step.num_tokens();
        let shape = self.step.shape;
        let block_size = self.step.block_size;
        let write = |transposed| WriteSlots {
            slots: &self.step.slots,
            block_size,
            shape,
            transposed,
        };
        kv.keys
            .inplace_op2(&k.to_dtype(DType::F32)?.contiguous()?, &write(true))?;
        kv.values
            .inplace_op2(&v.to_dtype(DType::F32)?.contiguous()?, &write(false))?;
        let q = q.to_dtype(DType::F32)?.contiguous()?;
        let out = {
            let (keys, _) = kv.keys.storage_and_layout();
            let (values, _) = kv.values.storage_and_layout();
            let (queries, q_layout) = q.storage_and_layout();
            let queries = f32_elements(&queries, q_layout)?;
            match (cpu(&keys)?, cpu(&values)?) {
                (CpuStorage::F16(keys), CpuStorage::F16(values)) => {
                    paged_attention(keys, values, self, queries)
                }
                (CpuStorage::F32(keys), CpuStorage::F32(values)) => {
                    paged_attention(keys, values, self, queries)
                }
                _ => {
                    return Err(ModelError::Unsupported(
                        "native attention: keys and values must both be f16 or both f32".into(),
                    ))
                }
            }
        };
        Ok(Tensor::from_vec(
            out,
            (n, shape.num_heads * shape.head_dim),
            &Device::Cpu,
        )?)
    }
}

/// Heads of `x` (each `cos.len() * 2` wide) rotated as `rope_thd` does, appended to `out`:
/// `x1 cos - x2 sin` in the first half of a head, `x1 sin + x2 cos` in the second.
fn rotate_into(x: &[f32], cos: &[f32], sin: &[f32], out: &mut Vec<f32>) {
    for head in x.chunks_exact(2 * cos.len()) {
        let (x1, x2) = head.split_at(cos.len());
        let pairs = || x1.iter().zip(x2).zip(cos.iter().zip(sin));
        out.extend(pairs().map(|((a, b), (c, s))| a * c - b * s));
        out.extend(pairs().map(|((a, b), (c, s))| a * s + b * c));
    }
}

/// The elements of a contiguous f32 tensor on the CPU, in order, from its storage.
fn f32_elements<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(ModelError::Unsupported(
            "native attention: a strided input".into(),
        ));
    };
    Ok(&cpu(storage)?.as_slice::<f32>()?[start..end])
}

fn cpu(storage: &Storage) -> Result<&CpuStorage> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu),
        _ => Err(ModelError::Unsupported(
            "native attention needs its tensors on the CPU".into(),
        )),
    }
}

/// What the cache can hold: f16 or f32, read back in whole blocks as f32.
trait KvElement: Copy + Send + Sync {
    fn from_f32(x: f32) -> Self;
    /// `dst = src` as f32 (SIMD conversion for f16).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl KvElement for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
}

impl KvElement for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        crate::cpu::elementwise::widen_f16(src, dst)
    }
}

/// Stores the rows of a `[tokens, kv_heads * head_dim]` f32 tensor in the cache slots of those
/// tokens: keys transposed within their block, values as rows.
struct WriteSlots<'a> {
    slots: &'a [u32],
    block_size: usize,
    shape: HeadShape,
    transposed: bool,
}

impl WriteSlots<'_> {
    fn write<E: KvElement>(&self, cache: &mut [E], rows: &[f32]) {
        let (heads, dim, bs) = (
            self.shape.num_kv_heads,
            self.shape.head_dim,
            self.block_size,
        );
        for (t, &slot) in self.slots.iter().enumerate() {
            let (block, i) = (slot as usize / bs, slot as usize % bs);
            for h in 0..heads {
                let row = &rows[(t * heads + h) * dim..][..dim];
                let head = (block * heads + h) * dim * bs;
                if self.transposed {
                    for (d, &x) in row.iter().enumerate() {
                        cache[head + d * bs + i] = E::from_f32(x);
                    }
                } else {
                    for (c, &x) in cache[head + i * dim..][..dim].iter_mut().zip(row) {
                        *c = E::from_f32(x);
                    }
                }
            }
        }
    }
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
        let CpuStorage::F32(rows) = rows else {
            candle_core::bail!("write-kv-slots: new keys and values come as f32")
        };
        let rows = &rows[rows_layout.start_offset()..];
        match cache {
            CpuStorage::F16(cache) => self.write(cache, rows),
            CpuStorage::F32(cache) => self.write(cache, rows),
            _ => candle_core::bail!("write-kv-slots: the cache is f16 or f32"),
        }
        Ok(())
    }
}

/// Query tokens of one sequence that one work item takes together (a prompt chunk is cut into
/// runs of this many; a decoding token is a run of one).
const RUN: usize = 16;

/// `queries` is `[tokens, heads * head_dim]`; returns the attention output in the same shape.
fn paged_attention<E: KvElement>(
    keys: &[E],
    values: &[E],
    tokens: &NativeStep<'_>,
    queries: &[f32],
) -> Vec<f32> {
    let step = tokens.step;
    let HeadShape {
        num_heads,
        num_kv_heads,
        head_dim,
        sliding_window,
    } = step.shape;
    let group = num_heads / num_kv_heads;
    let attend = pick_attend::<E>();
    // Work items: (a run of consecutive tokens of one sequence, a KV head). The query heads
    // of the group, for every token of the run, read each key and value once between them.
    let items: Vec<(usize, usize, usize)> = runs(&tokens.seq_of_token)
        .into_iter()
        .flat_map(|(t0, n)| (0..num_kv_heads).map(move |h| (t0, n, h)))
        .collect();
    let results: Vec<OnceLock<Vec<f32>>> = items.iter().map(|_| OnceLock::new()).collect();
    crate::cpu::team::for_each(items.len(), |i| {
        let (t0, n, kv_head) = items[i];
        let rows = (t0..t0 + n)
            .flat_map(|t| {
                (0..group).map(move |g| {
                    let head = kv_head * group + g;
                    let q = &queries[(t * num_heads + head) * head_dim..][..head_dim];
                    (q, step.positions[t] as usize)
                })
            })
            .collect();
        let work = Work {
            keys,
            values,
            block_table: &step.seqs[tokens.seq_of_token[t0]].block_table,
            block_size: step.block_size,
            rows,
            window: sliding_window,
            kv_head,
            kv_heads: num_kv_heads,
            head_dim,
        };
        let mut out = vec![0f32; n * group * head_dim];
        attend(&work, &mut out);
        results[i].set(out).expect("each item runs once");
    });
    let mut out = vec![0.0f32; queries.len()];
    for (&(t0, n, kv_head), result) in items.iter().zip(&results) {
        let result = result.get().expect("every item ran");
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
/// the keys and values of one KV head of one sequence. `out` gets one `head_dim` row per query
/// row.
struct Work<'a, E> {
    keys: &'a [E],
    values: &'a [E],
    /// The sequence's cache blocks.
    block_table: &'a [u32],
    block_size: usize,
    rows: Vec<(&'a [f32], usize)>,
    window: Option<usize>,
    kv_head: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl<E> Work<'_, E> {
    /// The first position a query at `position` sees.
    fn first(&self, position: usize) -> usize {
        self.window.map_or(0, |w| (position + 1).saturating_sub(w))
    }

    /// Where this head's part of the sequence's `b`-th block starts (both layouts).
    fn head_block(&self, b: usize) -> usize {
        (self.block_table[b] as usize * self.kv_heads + self.kv_head)
            * self.head_dim
            * self.block_size
    }

    /// The block's keys, `[head_dim][block_size]`.
    fn keys_t(&self, b: usize) -> &[E] {
        &self.keys[self.head_block(b)..][..self.head_dim * self.block_size]
    }

    /// The block's values, `[block_size][head_dim]`.
    fn values(&self, b: usize) -> &[E] {
        &self.values[self.head_block(b)..][..self.head_dim * self.block_size]
    }
}

type Attend<E> = fn(&Work<'_, E>, &mut [f32]);

/// The same loops compiled twice: for AVX2 + FMA when the CPU has them (checked at run
/// time, so the binary still runs anywhere), and for the baseline.
fn pick_attend<E: KvElement>() -> Attend<E> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn attend_avx2<E: KvElement>(work: &Work<'_, E>, out: &mut [f32]) {
            attend(work, out)
        }
        // Safety: only reached where the CPU has AVX2 and FMA.
        return |work, out| unsafe { attend_avx2(work, out) };
    }
    attend
}

/// Keys per register tile of the score kernel, and query rows per tile.
const KEYS: usize = 16;
const QUERIES: usize = 4;

/// Every run, a decode step's single token or a prompt chunk's sixteen, takes this one path:
/// the same arithmetic in the same order, so a prompt gives bit-identical activations however
/// it is chunked (a quantized model would otherwise round some of them the other way).
/// Scores come cache block by cache block: the block's transposed keys are widened to f32
/// once, then every four query rows meet each sixteen of them in a 4×16 register tile, with
/// no horizontal sums. Keys a row must not see (later positions, outside the window) are
/// masked.
#[inline(always)]
fn attend<E: KvElement>(work: &Work<'_, E>, out: &mut [f32]) {
    let (head_dim, bs) = (work.head_dim, work.block_size);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let last = work.rows.iter().map(|r| r.1).max().unwrap_or(0);
    let start = work.rows.iter().map(|r| work.first(r.1)).min().unwrap_or(0);
    let n = last + 1 - start;
    let rows = work.rows.len();
    let mut scores = vec![0f32; rows * n];
    let zero = vec![0f32; head_dim];
    // One block widened to f32, its key rows padded to whole tiles of lanes.
    let lanes = bs.next_multiple_of(KEYS);
    let mut block = vec![0f32; head_dim * lanes];
    let mut widened = vec![0f32; if lanes == bs { 0 } else { head_dim * bs }];
    let blocks = start / bs..=last / bs;
    for b in blocks.clone() {
        if lanes == bs {
            E::widen(work.keys_t(b), &mut block);
        } else {
            E::widen(work.keys_t(b), &mut widened);
            for (dst, src) in block.chunks_exact_mut(lanes).zip(widened.chunks_exact(bs)) {
                dst[..bs].copy_from_slice(src);
            }
        }
        // The lanes of this block that some row may see, and the tiles that cover them.
        let first = (b * bs).max(start) - b * bs;
        let end = ((b + 1) * bs).min(last + 1) - b * bs;
        for l0 in (first / KEYS * KEYS..end).step_by(KEYS) {
            let seen = first.max(l0)..end.min(l0 + KEYS);
            for r0 in (0..rows).step_by(QUERIES) {
                let q: [&[f32]; QUERIES] =
                    std::array::from_fn(|i| work.rows.get(r0 + i).map_or(&zero[..], |r| r.0));
                let tile = scores_tile(q, &block, lanes, l0);
                for (i, tile_row) in tile.iter().enumerate().take(rows - r0) {
                    let at = (r0 + i) * n + b * bs + seen.start - start;
                    scores[at..at + seen.len()]
                        .copy_from_slice(&tile_row[seen.start - l0..seen.end - l0]);
                }
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
    let mut values = vec![0f32; bs * head_dim];
    for b in blocks {
        E::widen(work.values(b), &mut values);
        let (lo, hi) = ((b * bs).max(start), ((b + 1) * bs - 1).min(last));
        for j in lo..=hi {
            let v = &values[(j - b * bs) * head_dim..][..head_dim];
            for (r, out) in out.chunks_exact_mut(head_dim).enumerate() {
                let p = scores[r * n + j - start];
                if p != 0.0 {
                    axpy(p, v, out);
                }
            }
        }
    }
}

/// Four query rows against sixteen keys of a transposed block (`[head_dim][lanes]`, from lane
/// `l0`): sixteen lanes per row, one broadcast multiply-add per dimension.
#[inline(always)]
fn scores_tile(
    q: [&[f32]; QUERIES],
    block: &[f32],
    lanes: usize,
    l0: usize,
) -> [[f32; KEYS]; QUERIES] {
    let mut acc = [[0f32; KEYS]; QUERIES];
    for (d, row) in block.chunks_exact(lanes).enumerate() {
        let k: &[f32; KEYS] = row[l0..l0 + KEYS]
            .try_into()
            .expect("a whole tile of lanes");
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
    let sum = crate::cpu::elementwise::exp_shifted(row, max);
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

    /// The fused split and rotation give what candle's ops give, bit for bit: the attention
    /// output and both caches, over a prompt chunk after cached tokens and a decoding token.
    #[test]
    fn fused_qkv_rotation_equals_candles_bit_for_bit() {
        use crate::batch::SeqChunk;
        let shape = HeadShape {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            sliding_window: None,
        };
        let native = Native::new(shape, DType::F16).unwrap();
        let tables = [vec![0u32, 1], vec![3u32, 2]];
        let chunks = [
            SeqChunk {
                tokens: &[1; 5],
                cached: 2,
                block_table: &tables[0],
            },
            SeqChunk {
                tokens: &[2],
                cached: 6,
                block_table: &tables[1],
            },
        ];
        let layout = StepLayout::new(shape, 4, &chunks);
        let step = native.prepare(&layout).unwrap();
        let (n, width) = (6, (4 + 2 * 2) * 8);
        let wave = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 7919 + seed) % 997) as f32 / 31.0).sin())
                .collect()
        };
        let qkv = Tensor::from_vec(wave(n * width, 1), (n, width), &Device::Cpu).unwrap();
        let cos = Tensor::from_vec(wave(n * 4, 2), (n, 4), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(wave(n * 4, 3), (n, 4), &Device::Cpu).unwrap();
        let rope = RopeRows {
            cos_in_dtype: cos.clone(),
            sin_in_dtype: sin.clone(),
            cos,
            sin,
        };
        let (fused_kv, candle_kv) = (
            native.allocate(4, 4).unwrap(),
            native.allocate(4, 4).unwrap(),
        );
        let fused = step.forward_qkv(&fused_kv, &qkv, &shape, &rope).unwrap();
        let candle =
            super::super::split_rope_forward(step.as_ref(), &candle_kv, &qkv, &shape, &rope)
                .unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            t.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&fused), bits(&candle));
        assert_eq!(bits(&fused_kv.keys), bits(&candle_kv.keys));
        assert_eq!(bits(&fused_kv.values), bits(&candle_kv.values));
        // The keys were written (the caches are not both still zero).
        assert!(bits(&fused_kv.keys).iter().any(|&b| b != 0));
    }
}
