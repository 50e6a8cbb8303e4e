//! Our CUDA kernels against plain CPU references on fresh random inputs. They need a GPU: with
//! none they print SKIPPED and return, unless FERROLLAMA_REQUIRE_GPU is set (the GPU check
//! script sets it), where a missing GPU fails them.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use ferrollama_kernels::{
    gpu_or_skip as gpu, key_cache_shape, reshape_and_cache, value_cache_shape, PagedAttention,
};

/// xorshift64*: fresh inputs per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }
    /// `0..n` shuffled.
    fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

/// The dtypes this build has kernels for, each with its tolerance (relative to the largest
/// reference value) and its seed.
fn dtypes() -> Vec<(DType, f32)> {
    let mut dtypes = vec![(DType::F32, 1e-5), (DType::F16, 2e-3)];
    if ferrollama_kernels::BUILD_HAS_BF16 {
        dtypes.push((DType::BF16, 2e-3));
    }
    dtypes
}

/// Rounds through `dtype` on the CPU, so the reference reads what the GPU reads.
fn rounded(values: Vec<f32>, dtype: DType) -> Vec<f32> {
    let n = values.len();
    Tensor::from_vec(values, n, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn upload(values: &[f32], shape: &[usize], dtype: DType, device: &Device) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn download(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Where element `d` of key head `h` of slot `offset` in `block` lives (see the .cu file).
fn key_index(block: usize, h: usize, d: usize, offset: usize, s: &Shape, x: usize) -> usize {
    (((block * s.kv_heads + h) * (s.head_dim / x) + d / x) * s.block_size + offset) * x + d % x
}

fn value_index(block: usize, h: usize, d: usize, offset: usize, s: &Shape) -> usize {
    ((block * s.kv_heads + h) * s.head_dim + d) * s.block_size + offset
}

struct Shape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    blocks: usize,
}

#[test]
fn reshape_and_cache_puts_every_element_in_its_slot() {
    let Some(device) = gpu("reshape_and_cache") else {
        return;
    };
    let s = Shape {
        heads: 8,
        kv_heads: 2,
        head_dim: 64,
        block_size: 16,
        blocks: 9,
    };
    for (seed, (dtype, _)) in dtypes().into_iter().enumerate() {
        let mut rng = Rng::new(seed as u64 + 1);
        let tokens = 37;
        let width = s.kv_heads * s.head_dim;
        let (keys, values) = (rng.vec(tokens * width), rng.vec(tokens * width));
        // Distinct slots, scattered over the blocks.
        let slots: Vec<u32> = rng.permutation(s.blocks * s.block_size)[..tokens].to_vec();
        let x = 16 / dtype.size_in_bytes();
        let key_shape = key_cache_shape(s.blocks, s.kv_heads, s.head_dim, s.block_size, dtype);
        let value_shape = value_cache_shape(s.blocks, s.kv_heads, s.head_dim, s.block_size);
        let key_cache = Tensor::zeros(key_shape, dtype, &device).unwrap();
        let value_cache = Tensor::zeros(value_shape, dtype, &device).unwrap();
        let shape = [tokens, s.kv_heads, s.head_dim];
        reshape_and_cache(
            &upload(&keys, &shape, dtype, &device),
            &upload(&values, &shape, dtype, &device),
            &key_cache,
            &value_cache,
            &Tensor::new(slots.as_slice(), &device).unwrap(),
        )
        .unwrap();
        let (kc, vc) = (download(&key_cache), download(&value_cache));
        let (keys, values) = (rounded(keys, dtype), rounded(values, dtype));
        let mut expected_k = vec![0f32; kc.len()];
        let mut expected_v = vec![0f32; vc.len()];
        for (t, &slot) in slots.iter().enumerate() {
            let (block, offset) = (slot as usize / s.block_size, slot as usize % s.block_size);
            for h in 0..s.kv_heads {
                for d in 0..s.head_dim {
                    let i = t * width + h * s.head_dim + d;
                    expected_k[key_index(block, h, d, offset, &s, x)] = keys[i];
                    expected_v[value_index(block, h, d, offset, &s)] = values[i];
                }
            }
        }
        assert_eq!(kc, expected_k, "{dtype:?} keys");
        assert_eq!(vc, expected_v, "{dtype:?} values");
        eprintln!("reshape_and_cache {dtype:?}: {tokens} tokens exact");
    }
}

/// Softmax attention in f64 over the same cache layout.
#[allow(clippy::too_many_arguments)]
fn reference(
    s: &Shape,
    x: usize,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    tables: &[Vec<u32>],
    row_seq: &[u32],
    context_lens: &[u32],
    window: usize,
) -> Vec<f32> {
    let scale = 1.0 / (s.head_dim as f64).sqrt();
    let group = s.heads / s.kv_heads;
    let mut out = vec![0f32; q.len()];
    for (row, (&seq, &context)) in row_seq.iter().zip(context_lens).enumerate() {
        let table = &tables[seq as usize];
        let context = context as usize;
        let first = if window > 0 {
            context.saturating_sub(window)
        } else {
            0
        };
        for head in 0..s.heads {
            let h = head / group;
            let q = &q[(row * s.heads + head) * s.head_dim..][..s.head_dim];
            let at = |j: usize| (table[j / s.block_size] as usize, j % s.block_size);
            let scores: Vec<f64> = (first..context)
                .map(|j| {
                    let (block, offset) = at(j);
                    (0..s.head_dim)
                        .map(|d| q[d] as f64 * kc[key_index(block, h, d, offset, s, x)] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..s.head_dim {
                let v: f64 = (first..context)
                    .zip(&weights)
                    .map(|(j, w)| {
                        let (block, offset) = at(j);
                        w * vc[value_index(block, h, d, offset, s)] as f64
                    })
                    .sum();
                out[(row * s.heads + head) * s.head_dim + d] = (v / total) as f32;
            }
        }
    }
    out
}

/// Rows of very different lengths (one key, a block's worth, past one 512-key partition,
/// past two), GQA, scattered block tables, several sequences, with and without a window.
#[test]
fn paged_attention_matches_the_reference() {
    let Some(device) = gpu("paged_attention") else {
        return;
    };
    for (head_dim, heads, kv_heads) in [(128, 32, 8), (64, 9, 3), (16, 4, 2)] {
        for window in [0, 300] {
            for (seed, (dtype, tolerance)) in dtypes().into_iter().enumerate() {
                let s = Shape {
                    heads,
                    kv_heads,
                    head_dim,
                    block_size: 16,
                    blocks: 200,
                };
                let mut rng = Rng::new((seed * 31 + head_dim + window) as u64);
                let x = 16 / dtype.size_in_bytes();
                // Four sequences of these lengths, each with its own scattered blocks.
                let lengths = [1usize, 16, 700, 1300];
                let order = rng.permutation(s.blocks);
                let mut next = 0;
                let tables: Vec<Vec<u32>> = lengths
                    .iter()
                    .map(|&len| {
                        let n = len.div_ceil(s.block_size);
                        next += n;
                        order[next - n..next].to_vec()
                    })
                    .collect();
                // Rows: each sequence's last position (decode), and a run of the longest
                // sequence's positions (a prompt chunk seeing its own keys).
                let mut row_seq: Vec<u32> = (0..4).collect();
                let mut context_lens: Vec<u32> = lengths.iter().map(|&l| l as u32).collect();
                for p in 1290..1300u32 {
                    row_seq.push(3);
                    context_lens.push(p);
                }
                let rows = row_seq.len();
                let key_shape = key_cache_shape(s.blocks, kv_heads, head_dim, 16, dtype);
                let value_shape = value_cache_shape(s.blocks, kv_heads, head_dim, 16);
                let n_cache = s.blocks * kv_heads * head_dim * 16;
                let kc = rounded(rng.vec(n_cache), dtype);
                let vc = rounded(rng.vec(n_cache), dtype);
                // Scaled so that scores spread: a peaked softmax is the harder case.
                let q: Vec<f32> = rng
                    .vec(rows * heads * head_dim)
                    .iter()
                    .map(|v| v * 3.0)
                    .collect();
                let q = rounded(q, dtype);
                let max_blocks = tables.iter().map(Vec::len).max().unwrap();
                let flat: Vec<u32> = tables
                    .iter()
                    .flat_map(|t| {
                        t.iter()
                            .copied()
                            .chain(std::iter::repeat(0))
                            .take(max_blocks)
                    })
                    .collect();
                let attention = PagedAttention {
                    block_tables: Tensor::from_vec(flat, (4, max_blocks), &device).unwrap(),
                    row_seq: Tensor::new(row_seq.as_slice(), &device).unwrap(),
                    context_lens: Tensor::new(context_lens.as_slice(), &device).unwrap(),
                    max_keys: 1300,
                    scale: 1.0 / (head_dim as f32).sqrt(),
                    window,
                };
                let k5 = [
                    key_shape.0,
                    key_shape.1,
                    key_shape.2,
                    key_shape.3,
                    key_shape.4,
                ];
                let v4 = [value_shape.0, value_shape.1, value_shape.2, value_shape.3];
                let out = attention
                    .forward(
                        &upload(&q, &[rows, heads, head_dim], dtype, &device),
                        &upload(&kc, &k5, dtype, &device),
                        &upload(&vc, &v4, dtype, &device),
                    )
                    .unwrap();
                assert_eq!(out.dims(), [rows, heads, head_dim]);
                let got = download(&out);
                let want = reference(
                    &s,
                    x,
                    &q,
                    &kc,
                    &vc,
                    &tables,
                    &row_seq,
                    &context_lens,
                    window,
                );
                assert!(
                    got.iter().all(|v| v.is_finite()),
                    "an output element was not written"
                );
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (at, err) = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs() / scale)
                    .enumerate()
                    .fold(
                        (0, 0f32),
                        |best, (i, e)| if e > best.1 { (i, e) } else { best },
                    );
                eprintln!(
                    "paged_attention {dtype:?} head_dim {head_dim} heads {heads}/{kv_heads} window {window}: worst relative error {err:.2e} at {at}"
                );
                assert!(
                    err <= tolerance,
                    "{dtype:?}: {err} > {tolerance} at element {at}"
                );
            }
        }
    }
}
