//! Our kernels against plain CPU references (f64) on fresh random inputs, through the same
//! step plan the model uses. Two backends run them:
//! - with `cuda`, the GPU (with none these print SKIPPED and return, unless
//!   FERROLLAMA_REQUIRE_GPU is set, as benches/gpu/check.sh sets it, where a missing GPU fails);
//! - with `emulate`, the host emulator of `kernels/emulator.h`: the same sources and launches on
//!   the CPU, so CI checks every kernel's logic (indices, fragments, barriers) without a GPU. The
//!   emulator runs one thread block at a time, so its cases are smaller.
#![cfg(any(feature = "cuda", feature = "emulate"))]

use ferrollama_kernels::ffi::Element;
use ferrollama_kernels::{AttentionPlan, AttentionShape, SeqRows};

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

/// Rounds through `element`, so references read what the kernels read.
fn rounded(values: &[f32], element: Element) -> Vec<f32> {
    values
        .iter()
        .map(|&v| match element {
            Element::F32 => v,
            Element::F16 => half::f16::from_f32(v).to_f32(),
            Element::Bf16 => half::bf16::from_f32(v).to_f32(),
        })
        .collect()
}

/// Where the tests run.
enum Backend {
    #[cfg(feature = "cuda")]
    Gpu,
    #[cfg(all(feature = "emulate", not(feature = "cuda")))]
    Emulated,
}

fn backend(test: &str) -> Option<Backend> {
    #[cfg(feature = "cuda")]
    return ferrollama_kernels::gpu_or_skip(test).map(|_| Backend::Gpu);
    #[cfg(all(feature = "emulate", not(feature = "cuda")))]
    {
        let _ = test;
        Some(Backend::Emulated)
    }
}

impl Backend {
    fn emulated(&self) -> bool {
        #[cfg(all(feature = "emulate", not(feature = "cuda")))]
        return true;
        #[cfg(feature = "cuda")]
        return false;
    }

    /// The small cases: under the emulator, and on a GPU under compute-sanitizer
    /// (FERROLLAMA_SMALL_KERNEL_TESTS, set by benches/gpu/check.sh), where every access is
    /// checked and big cases take minutes.
    fn small(&self) -> bool {
        self.emulated() || std::env::var_os("FERROLLAMA_SMALL_KERNEL_TESTS").is_some()
    }

    /// The element types this build has kernels for.
    fn elements(&self) -> Vec<Element> {
        let mut elements = vec![Element::F32, Element::F16];
        if ferrollama_kernels::BUILD_HAS_BF16 {
            elements.push(Element::Bf16);
        }
        elements
    }
}

/// The one place that runs a kernel on host data, whichever backend. Values go in and come back
/// as f32; `element` is the type the kernel computes in.
mod run {
    use super::*;

    #[cfg(all(feature = "emulate", not(feature = "cuda")))]
    mod imp {
        use super::*;
        use ferrollama_kernels::emulated::{self as emu, Float};

        fn to<T: Float>(v: &[f32]) -> Vec<T> {
            v.iter().map(|&x| T::from_f32(x)).collect()
        }
        fn back<T: Float>(v: &[T]) -> Vec<f32> {
            v.iter().map(|x| x.to_f32()).collect()
        }

        macro_rules! by_element {
            ($element:expr, $T:ident => $body:expr) => {
                match $element {
                    Element::F32 => {
                        type $T = f32;
                        $body
                    }
                    Element::F16 => {
                        type $T = half::f16;
                        $body
                    }
                    Element::Bf16 => {
                        type $T = half::bf16;
                        $body
                    }
                }
            };
        }

        pub fn attention(
            el: Element,
            plan: &AttentionPlan,
            q: &[f32],
            kc: &[f32],
            vc: &[f32],
        ) -> Vec<f32> {
            by_element!(el, T => back(&emu::attention::<T>(plan, &to(q), &to(kc), &to(vc)).unwrap()))
        }

        pub fn write_cache(
            el: Element,
            plan: &AttentionPlan,
            k: &[f32],
            v: &[f32],
            cache_len: usize,
        ) -> (Vec<f32>, Vec<f32>) {
            by_element!(el, T => {
                let (mut kc, mut vc) = (to::<T>(&vec![0.0; cache_len]), to::<T>(&vec![0.0; cache_len]));
                emu::reshape_and_cache::<T>(plan, &to(k), &to(v), &mut kc, &mut vc).unwrap();
                (back(&kc), back(&vc))
            })
        }

        pub fn qkv_rope_cache(
            el: Element,
            plan: &AttentionPlan,
            qkv: &[f32],
            cos: &[f32],
            sin: &[f32],
            cache_len: usize,
        ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            by_element!(el, T => {
                let (mut kc, mut vc) = (to::<T>(&vec![0.0; cache_len]), to::<T>(&vec![0.0; cache_len]));
                let q = emu::qkv_rope_cache::<T>(plan, &to(qkv), cos, sin, &mut kc, &mut vc).unwrap();
                (back(&q), back(&kc), back(&vc))
            })
        }

        pub fn add_rms_norm(
            el: Element,
            x: &[f32],
            delta: &[f32],
            weight: &[f32],
            eps: f32,
        ) -> (Vec<f32>, Vec<f32>) {
            by_element!(el, T => {
                let mut x = to::<T>(x);
                let h = emu::add_rms_norm::<T>(&mut x, &to(delta), &to(weight), eps).unwrap();
                (back(&x), back(&h))
            })
        }

        pub fn silu_mul(el: Element, gate_up: &[f32], width: usize) -> Vec<f32> {
            by_element!(el, T => back(&emu::silu_mul::<T>(&to(gate_up), width).unwrap()))
        }

        pub fn mma(el: Element, a: &[f32], b: &[f32]) -> Vec<f32> {
            by_element!(el, T => emu::mma_check::<T>(&to(a), &to(b)).unwrap())
        }

        pub fn top_k(logits: &[f32], vocab: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
            emu::top_k(logits, vocab, k).unwrap()
        }
    }

    #[cfg(feature = "cuda")]
    mod imp {
        use super::*;
        use candle_core::{DType, Device, Tensor};
        use ferrollama_kernels::{key_cache_shape, value_cache_shape, AttentionStep};

        fn device() -> Device {
            Device::new_cuda(0).unwrap()
        }
        fn dtype(el: Element) -> DType {
            match el {
                Element::F32 => DType::F32,
                Element::F16 => DType::F16,
                Element::Bf16 => DType::BF16,
            }
        }
        fn up(v: &[f32], shape: &[usize], el: Element) -> Tensor {
            Tensor::from_slice(v, shape, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype(el))
                .unwrap()
                .to_device(&device())
                .unwrap()
        }
        fn down(t: &Tensor) -> Vec<f32> {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        }
        fn caches(el: Element, plan: &AttentionPlan, kc: &[f32], vc: &[f32]) -> (Tensor, Tensor) {
            let s = &plan.shape;
            let blocks = kc.len() / (s.kv_heads * s.head_dim * s.block_size);
            let k = key_cache_shape(blocks, s.kv_heads, s.head_dim, s.block_size, dtype(el));
            let v = value_cache_shape(blocks, s.kv_heads, s.head_dim, s.block_size);
            (
                up(kc, &[k.0, k.1, k.2, k.3, k.4], el),
                up(vc, &[v.0, v.1, v.2, v.3], el),
            )
        }

        pub fn attention(
            el: Element,
            plan: &AttentionPlan,
            q: &[f32],
            kc: &[f32],
            vc: &[f32],
        ) -> Vec<f32> {
            let s = &plan.shape;
            let (kc, vc) = caches(el, plan, kc, vc);
            let step = AttentionStep::new(plan.clone(), &device()).unwrap();
            let q = up(q, &[plan.rows, s.heads, s.head_dim], el);
            down(&step.attention(&q, &kc, &vc).unwrap())
        }

        pub fn write_cache(
            el: Element,
            plan: &AttentionPlan,
            k: &[f32],
            v: &[f32],
            cache_len: usize,
        ) -> (Vec<f32>, Vec<f32>) {
            let s = &plan.shape;
            let zeros = vec![0.0; cache_len];
            let (kc, vc) = caches(el, plan, &zeros, &zeros);
            let step = AttentionStep::new(plan.clone(), &device()).unwrap();
            let shape = [plan.rows, s.kv_heads, s.head_dim];
            step.write_cache(&up(k, &shape, el), &up(v, &shape, el), &kc, &vc)
                .unwrap();
            (down(&kc), down(&vc))
        }

        pub fn qkv_rope_cache(
            el: Element,
            plan: &AttentionPlan,
            qkv: &[f32],
            cos: &[f32],
            sin: &[f32],
            cache_len: usize,
        ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            let s = &plan.shape;
            let zeros = vec![0.0; cache_len];
            let (kc, vc) = caches(el, plan, &zeros, &zeros);
            let step = AttentionStep::new(plan.clone(), &device()).unwrap();
            let qkv = up(
                qkv,
                &[plan.rows, (s.heads + 2 * s.kv_heads) * s.head_dim],
                el,
            );
            let half = [plan.rows, s.head_dim / 2];
            let (cos, sin) = (up(cos, &half, Element::F32), up(sin, &half, Element::F32));
            let q = step.qkv_rope_cache(&qkv, &cos, &sin, &kc, &vc).unwrap();
            (down(&q), down(&kc), down(&vc))
        }

        pub fn add_rms_norm(
            el: Element,
            x: &[f32],
            delta: &[f32],
            weight: &[f32],
            eps: f32,
        ) -> (Vec<f32>, Vec<f32>) {
            let width = weight.len();
            let shape = [x.len() / width, width];
            let (sum, h) = ferrollama_kernels::add_rms_norm(
                &up(x, &shape, el),
                &up(delta, &shape, el),
                &up(weight, &[width], el),
                eps,
            )
            .unwrap();
            (down(&sum), down(&h))
        }

        pub fn silu_mul(el: Element, gate_up: &[f32], width: usize) -> Vec<f32> {
            down(
                &ferrollama_kernels::silu_mul(&up(
                    gate_up,
                    &[gate_up.len() / (2 * width), 2 * width],
                    el,
                ))
                .unwrap(),
            )
        }

        pub fn mma(el: Element, a: &[f32], b: &[f32]) -> Vec<f32> {
            down(
                &ferrollama_kernels::mma_check(&up(a, &[16, 16], el), &up(b, &[16, 8], el))
                    .unwrap(),
            )
        }

        pub fn top_k(logits: &[f32], vocab: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
            let shape = [logits.len() / vocab, vocab];
            let (values, ids) =
                ferrollama_kernels::top_k(&up(logits, &shape, Element::F32), k).unwrap();
            (
                down(&values),
                ids.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
            )
        }
    }

    pub use imp::*;
}

/// The worst error relative to the largest reference value, and where.
fn worst(got: &[f32], want: &[f32]) -> (usize, f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g.is_finite() {
                (g - w).abs() / scale
            } else {
                f32::INFINITY
            }
        })
        .enumerate()
        .fold(
            (0, 0f32),
            |best, (i, e)| if e > best.1 { (i, e) } else { best },
        )
}

/// One unit in the last place of `element`, relative.
fn ulp(element: Element) -> f32 {
    match element {
        Element::F32 => 1.2e-7,
        Element::F16 => 9.8e-4,
        Element::Bf16 => 7.9e-3,
    }
}

#[test]
fn mma_fragments_match_a_plain_matmul() {
    let Some(backend) = backend("mma_fragments") else {
        return;
    };
    let mut rng = Rng::new(7);
    for el in backend
        .elements()
        .into_iter()
        .filter(|&e| e != Element::F32)
    {
        let paths: &[bool] = if backend.emulated() && el == Element::F16 {
            &[false, true]
        } else {
            &[false]
        };
        for &sm75 in paths {
            #[cfg(all(feature = "emulate", not(feature = "cuda")))]
            ferrollama_kernels::emulated::emulate_sm75_mma(sm75);
            let a = rounded(&rng.vec(256), el);
            let b = rounded(&rng.vec(128), el);
            let c = run::mma(el, &a, &b);
            let want: Vec<f32> = (0..128)
                .map(|i| {
                    let (row, col) = (i / 8, i % 8);
                    (0..16)
                        .map(|k| a[row * 16 + k] as f64 * b[k * 8 + col] as f64)
                        .sum::<f64>() as f32
                })
                .collect();
            let (at, err) = worst(&c, &want);
            eprintln!(
                "mma {el:?}{}: worst relative error {err:.2e} at {at}",
                if sm75 { " (sm_75 form)" } else { "" }
            );
            assert!(err < 1e-5, "{el:?}: {err} at ({}, {})", at / 8, at % 8);
        }
        #[cfg(all(feature = "emulate", not(feature = "cuda")))]
        ferrollama_kernels::emulated::emulate_sm75_mma(false);
    }
}

#[cfg(all(feature = "emulate", not(feature = "cuda")))]
#[test]
fn the_emulator_rounds_as_the_device_does() {
    use ferrollama_kernels::emulated::*;
    let mut rng = Rng::new(3);
    let mut values: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        65504.0,
        65520.0,
        65519.0,
        1e-8,
        6e-8,
        2.98e-8,
        5.96e-8,
        -3e-5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.0e38,
    ];
    for _ in 0..200_000 {
        let bits = rng.next() as u32;
        let v = f32::from_bits(bits);
        if !v.is_nan() {
            values.push(v);
        }
        values.push(rng.unit() * 10f32.powi(rng.below(12) as i32 - 8));
    }
    for v in values {
        assert_eq!(
            emulated_f16_bits(v),
            half::f16::from_f32(v).to_bits(),
            "f16 of {v:e}"
        );
        assert_eq!(
            emulated_bf16_bits(v),
            half::bf16::from_f32(v).to_bits(),
            "bf16 of {v:e}"
        );
    }
    for bits in 0..=u16::MAX {
        let h = half::f16::from_bits(bits);
        if !h.is_nan() {
            assert_eq!(emulated_f16_value(bits), h.to_f32(), "f16 bits {bits:#x}");
        }
    }
}

/// Where element `d` of key head `h` of slot `offset` in `block` lives (see the .cu file).
fn key_index(
    block: usize,
    h: usize,
    d: usize,
    offset: usize,
    s: &AttentionShape,
    x: usize,
) -> usize {
    (((block * s.kv_heads + h) * (s.head_dim / x) + d / x) * s.block_size + offset) * x + d % x
}

fn value_index(block: usize, h: usize, d: usize, offset: usize, s: &AttentionShape) -> usize {
    ((block * s.kv_heads + h) * s.head_dim + d) * s.block_size + offset
}

fn pack(el: Element) -> usize {
    16 / el.size()
}

/// A batch of sequences: (cached, new) each, with scattered blocks from a pool of `blocks`.
struct Batch {
    tables: Vec<Vec<u32>>,
    seqs: Vec<(usize, usize)>,
    blocks: usize,
}

impl Batch {
    fn new(rng: &mut Rng, seqs: &[(usize, usize)], block_size: usize) -> Self {
        let needed: Vec<usize> = seqs
            .iter()
            .map(|(c, n)| (c + n).div_ceil(block_size))
            .collect();
        let blocks = needed.iter().sum::<usize>() + 3;
        let order = rng.permutation(blocks);
        let mut next = 0;
        let tables = needed
            .iter()
            .map(|&n| {
                next += n;
                order[next - n..next].to_vec()
            })
            .collect();
        Self {
            tables,
            seqs: seqs.to_vec(),
            blocks,
        }
    }

    fn rows(&self) -> usize {
        self.seqs.iter().map(|s| s.1).sum()
    }

    fn plan(&self, shape: AttentionShape, flash: bool) -> AttentionPlan {
        let mut first_row = 0;
        let rows: Vec<SeqRows> = self
            .seqs
            .iter()
            .zip(&self.tables)
            .map(|(&(cached, new), table)| {
                let r = SeqRows {
                    first_row,
                    cached,
                    new,
                    block_table: table,
                };
                first_row += new;
                r
            })
            .collect();
        AttentionPlan::new(shape, &rows, flash, 1)
    }

    /// (sequence, position) of every row, in batch order.
    fn row_positions(&self) -> Vec<(usize, usize)> {
        self.seqs
            .iter()
            .enumerate()
            .flat_map(|(i, &(cached, new))| (cached..cached + new).map(move |p| (i, p)))
            .collect()
    }
}

#[test]
fn reshape_and_cache_puts_every_element_in_its_slot() {
    let Some(backend) = backend("reshape_and_cache") else {
        return;
    };
    let s = AttentionShape {
        heads: 8,
        kv_heads: 2,
        head_dim: 64,
        block_size: 16,
        window: 0,
    };
    for (seed, el) in backend.elements().into_iter().enumerate() {
        let mut rng = Rng::new(seed as u64 + 1);
        let batch = Batch::new(&mut rng, &[(5, 30), (0, 1), (40, 6)], s.block_size);
        let plan = batch.plan(s, false);
        let width = s.kv_heads * s.head_dim;
        let tokens = batch.rows();
        let keys = rounded(&rng.vec(tokens * width), el);
        let values = rounded(&rng.vec(tokens * width), el);
        let cache_len = batch.blocks * s.block_size * width;
        let (kc, vc) = run::write_cache(el, &plan, &keys, &values, cache_len);
        let mut expected_k = vec![0f32; cache_len];
        let mut expected_v = vec![0f32; cache_len];
        for (t, (seq, position)) in batch.row_positions().into_iter().enumerate() {
            let block = batch.tables[seq][position / s.block_size] as usize;
            let offset = position % s.block_size;
            for h in 0..s.kv_heads {
                for d in 0..s.head_dim {
                    let i = t * width + h * s.head_dim + d;
                    expected_k[key_index(block, h, d, offset, &s, pack(el))] = keys[i];
                    expected_v[value_index(block, h, d, offset, &s)] = values[i];
                }
            }
        }
        assert_eq!(kc, expected_k, "{el:?} keys");
        assert_eq!(vc, expected_v, "{el:?} values");
        eprintln!("reshape_and_cache {el:?}: {tokens} tokens exact");
    }
}

/// Softmax attention in f64 over the same cache layout: each row sees its sequence's keys up to
/// its own position, the last `window` of them when windowed.
fn reference(
    s: &AttentionShape,
    x: usize,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    batch: &Batch,
) -> Vec<f32> {
    let scale = 1.0 / (s.head_dim as f64).sqrt();
    let group = s.heads / s.kv_heads;
    let mut out = vec![0f32; q.len()];
    for (row, (seq, position)) in batch.row_positions().into_iter().enumerate() {
        let table = &batch.tables[seq];
        let context = position + 1;
        let first = if s.window > 0 {
            context.saturating_sub(s.window)
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

/// One attention case: random q and caches for `batch`, the plan's kernels against the reference.
fn check_attention(
    label: &str,
    el: Element,
    s: AttentionShape,
    batch: &Batch,
    plan: &AttentionPlan,
    tolerance: f32,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let n_cache = batch.blocks * s.kv_heads * s.head_dim * s.block_size;
    let kc = rounded(&rng.vec(n_cache), el);
    let vc = rounded(&rng.vec(n_cache), el);
    // Scaled so that scores spread: a peaked softmax is the harder case.
    let q: Vec<f32> = rng
        .vec(plan.rows * s.heads * s.head_dim)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let q = rounded(&q, el);
    let got = run::attention(el, plan, &q, &kc, &vc);
    let want = reference(&s, pack(el), &q, &kc, &vc, batch);
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{label}: an output element was not written"
    );
    let (at, err) = worst(&got, &want);
    eprintln!(
        "{label}: {} decode rows, {} flash tiles, partitions {}x{}: worst relative error {err:.2e} at {at}",
        plan.decode_rows, plan.tiles, plan.partitions, plan.partition
    );
    assert!(
        err <= tolerance,
        "{label}: {err} > {tolerance} at element {at}"
    );
}

/// The CUDA-core kernel: rows of very different lengths (one key, a block's worth, past a
/// partition, past several), GQA, scattered block tables, several sequences, with and without
/// a window, one partition and many.
#[test]
fn paged_attention_matches_the_reference() {
    let Some(backend) = backend("paged_attention") else {
        return;
    };
    // (head_dim, heads, kv_heads); the emulator takes smaller ones.
    let shapes: &[(usize, usize, usize)] = if backend.small() {
        &[(128, 8, 2), (64, 9, 3), (16, 4, 2), (80, 2, 1), (256, 2, 1)]
    } else {
        &[
            (128, 32, 8),
            (64, 9, 3),
            (16, 4, 2),
            (80, 32, 32),
            (256, 8, 1),
        ]
    };
    let long = if backend.small() { 700 } else { 1300 };
    for &(head_dim, heads, kv_heads) in shapes {
        for window in [0, 300] {
            for (seed, el) in backend.elements().into_iter().enumerate() {
                let s = AttentionShape {
                    heads,
                    kv_heads,
                    head_dim,
                    block_size: 16,
                    window,
                };
                let mut rng = Rng::new((seed * 31 + head_dim + window) as u64);
                // Four decoding sequences, and the longest one's last ten positions as rows
                // of a fifth "sequence" over the same blocks (a chunk seeing its own keys).
                let mut batch =
                    Batch::new(&mut rng, &[(0, 1), (15, 1), (599, 1), (long - 1, 1)], 16);
                batch.seqs.push((long - 10, 10));
                batch.tables.push(batch.tables[3].clone());
                let tolerance = if el == Element::F32 {
                    1e-5
                } else {
                    2.0 * ulp(el)
                };
                for forced in [None, Some(64)] {
                    let mut plan = batch.plan(s, false);
                    if let Some(p) = forced {
                        plan = plan
                            .with_partition(p, long.min(if window > 0 { window } else { long }));
                    }
                    let label = format!("paged_attention {el:?} {head_dim}/{heads}/{kv_heads} window {window} partition {}", plan.partition);
                    check_attention(&label, el, s, &batch, &plan, tolerance, seed as u64 + 99);
                }
            }
        }
    }
}

/// The tensor-core prompt kernel: prompts of 1, 17, 500 and 2,100 rows, whole and as a chunk
/// after cached keys, beside decode rows in the same step, with and without a window.
#[test]
fn flash_attention_matches_the_reference() {
    let Some(backend) = backend("flash_attention") else {
        return;
    };
    let shapes: &[(usize, usize, usize, &[usize])] = if backend.small() {
        &[
            (16, 4, 2, &[1, 17, 500, 2100]),
            (128, 8, 2, &[17, 100]),
            (64, 9, 3, &[70]),
            (32, 2, 2, &[40]),
        ]
    } else {
        &[
            (128, 32, 8, &[1, 17, 500, 2100]),
            (64, 9, 3, &[17, 500, 2100]),
            (16, 4, 2, &[17, 500]),
            (32, 8, 8, &[100]),
        ]
    };
    for &(head_dim, heads, kv_heads, prompts) in shapes {
        for &prompt in prompts {
            for (window, cached) in [(0, 0), (0, 37), (300, 0), (300, 250)] {
                for (seed, el) in backend
                    .elements()
                    .into_iter()
                    .enumerate()
                    .filter(|(_, e)| *e != Element::F32)
                {
                    let paths: &[bool] = if backend.emulated() && el == Element::F16 && prompt < 200
                    {
                        &[false, true]
                    } else {
                        &[false]
                    };
                    for &sm75 in paths {
                        #[cfg(all(feature = "emulate", not(feature = "cuda")))]
                        ferrollama_kernels::emulated::emulate_sm75_mma(sm75);
                        let s = AttentionShape {
                            heads,
                            kv_heads,
                            head_dim,
                            block_size: 16,
                            window,
                        };
                        let mut rng = Rng::new((seed * 17 + prompt + cached + window) as u64);
                        // The prompt (chunk), a decoding sequence beside it, and a short second prompt.
                        let batch = Batch::new(&mut rng, &[(cached, prompt), (44, 1), (3, 5)], 16);
                        let plan = batch.plan(s, true);
                        assert!(plan.tiles > 0 || prompt == 1);
                        // P is rounded to the element type before P V: about one ulp per term.
                        let tolerance = 3.0 * ulp(el);
                        let label = format!(
                            "flash_attention {el:?}{} {head_dim}/{heads}/{kv_heads} prompt {prompt} after {cached} window {window}",
                            if sm75 { " (sm_75 mma)" } else { "" }
                        );
                        check_attention(&label, el, s, &batch, &plan, tolerance, seed as u64 + 5);
                    }
                    #[cfg(all(feature = "emulate", not(feature = "cuda")))]
                    ferrollama_kernels::emulated::emulate_sm75_mma(false);
                }
            }
        }
    }
}

#[test]
fn qkv_rope_cache_rotates_and_stores() {
    let Some(backend) = backend("qkv_rope_cache") else {
        return;
    };
    let s = AttentionShape {
        heads: 8,
        kv_heads: 2,
        head_dim: 64,
        block_size: 16,
        window: 0,
    };
    for (seed, el) in backend.elements().into_iter().enumerate() {
        let mut rng = Rng::new(seed as u64 + 40);
        let batch = Batch::new(&mut rng, &[(3, 20), (0, 1)], s.block_size);
        let plan = batch.plan(s, false);
        let rows = batch.rows();
        let (d, half) = (s.head_dim, s.head_dim / 2);
        let width = (s.heads + 2 * s.kv_heads) * d;
        let qkv = rounded(&rng.vec(rows * width), el);
        let angles: Vec<f32> = rng.vec(rows * half).iter().map(|a| a * 40.0).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let cache_len = batch.blocks * s.block_size * s.kv_heads * d;
        let (q, kc, vc) = run::qkv_rope_cache(el, &plan, &qkv, &cos, &sin, cache_len);
        let rotate = |row: usize, head: usize, i: usize| -> (f32, f32) {
            let x = &qkv[row * width + head * d..];
            let (c, s) = (cos[row * half + i] as f64, sin[row * half + i] as f64);
            let (x1, x2) = (x[i] as f64, x[i + half] as f64);
            ((x1 * c - x2 * s) as f32, (x1 * s + x2 * c) as f32)
        };
        let mut want_q = vec![0f32; q.len()];
        let mut want_k = vec![0f32; cache_len];
        let mut want_v = vec![0f32; cache_len];
        for (row, (seq, position)) in batch.row_positions().into_iter().enumerate() {
            let block = batch.tables[seq][position / s.block_size] as usize;
            let offset = position % s.block_size;
            for head in 0..s.heads + s.kv_heads {
                for i in 0..half {
                    let (y1, y2) = rotate(row, head, i);
                    if head < s.heads {
                        want_q[(row * s.heads + head) * d + i] = y1;
                        want_q[(row * s.heads + head) * d + i + half] = y2;
                    } else {
                        let h = head - s.heads;
                        want_k[key_index(block, h, i, offset, &s, pack(el))] = y1;
                        want_k[key_index(block, h, i + half, offset, &s, pack(el))] = y2;
                    }
                }
            }
            for h in 0..s.kv_heads {
                for e in 0..d {
                    want_v[value_index(block, h, e, offset, &s)] =
                        qkv[row * width + (s.heads + s.kv_heads + h) * d + e];
                }
            }
        }
        for (name, got, want) in [
            ("q", &q, &want_q),
            ("keys", &kc, &want_k),
            ("values", &vc, &want_v),
        ] {
            let (at, err) = worst(got, want);
            eprintln!("qkv_rope_cache {el:?} {name}: worst relative error {err:.2e}");
            assert!(err <= 2.0 * ulp(el), "{el:?} {name}: {err} at {at}");
        }
    }
}

#[test]
fn add_rms_norm_and_silu_mul_match_the_reference() {
    let Some(backend) = backend("add_rms_norm") else {
        return;
    };
    for (seed, el) in backend.elements().into_iter().enumerate() {
        let mut rng = Rng::new(seed as u64 + 70);
        let (rows, width) = (5, 300);
        let x = rounded(&rng.vec(rows * width), el);
        let delta = rounded(&rng.vec(rows * width), el);
        let weight = rounded(&rng.vec(width), el);
        let eps = 1e-5;
        let (sum, h) = run::add_rms_norm(el, &x, &delta, &weight, eps);
        let want_sum = rounded(
            &x.iter().zip(&delta).map(|(a, b)| a + b).collect::<Vec<_>>(),
            el,
        );
        assert_eq!(
            sum, want_sum,
            "{el:?}: the residual is x + delta, rounded once"
        );
        let mut want_h = Vec::new();
        for row in want_sum.chunks(width) {
            let rms = (row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / width as f64
                + eps as f64)
                .sqrt();
            want_h.extend(
                row.iter()
                    .zip(&weight)
                    .map(|(v, w)| (*v as f64 / rms * *w as f64) as f32),
            );
        }
        let (at, err) = worst(&h, &want_h);
        eprintln!("add_rms_norm {el:?}: worst relative error {err:.2e}");
        assert!(err <= 2.0 * ulp(el), "{el:?}: {err} at {at}");

        let gate_up = rounded(
            &rng.vec(rows * 2 * width)
                .iter()
                .map(|v| v * 6.0)
                .collect::<Vec<_>>(),
            el,
        );
        let out = run::silu_mul(el, &gate_up, width);
        let want: Vec<f32> = gate_up
            .chunks(2 * width)
            .flat_map(|row| {
                let (g, u) = row.split_at(width);
                g.iter()
                    .zip(u)
                    .map(|(g, u)| (*g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let (at, err) = worst(&out, &want);
        eprintln!("silu_mul {el:?}: worst relative error {err:.2e}");
        assert!(err <= 2.0 * ulp(el), "{el:?}: {err} at {at}");
    }
}

/// Not a check: the attention kernels' speed for benches/gpu/check.sh, timed with CUDA events
/// over 20 launches after 3 warm ones, at Mistral-7B's heads (32 over 8 KV heads, 128 wide):
/// decode attention for batch 16 x 3,000 keys, 64 x 1,000 and 1 x 3,000 (GB/s of the KV bytes
/// it reads; the roofline is the device copy bandwidth the check measures), and prompt attention
/// for one 2,000-token prompt (TFLOP/s counting the causal half).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "a measurement, run by benches/gpu/check.sh"]
fn attention_kernel_benchmark() {
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::{DType, Device, Tensor};
    use ferrollama_kernels::{gpu_info, key_cache_shape, value_cache_shape, AttentionStep};
    let Some(device) = ferrollama_kernels::gpu_or_skip("attention_kernel_benchmark") else {
        return;
    };
    let Device::Cuda(cuda) = &device else {
        unreachable!()
    };
    let stream = cuda.cuda_stream();
    let thread_blocks = AttentionStep::thread_blocks(&gpu_info(cuda).unwrap());
    let mut dtypes = vec![DType::F16];
    if ferrollama_kernels::BUILD_HAS_BF16 {
        dtypes.push(DType::BF16);
    }
    let s = AttentionShape {
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        block_size: 16,
        window: 0,
    };
    // (sequences, cached keys before the new rows, new rows each)
    let cases: [(usize, usize, usize); 4] =
        [(16, 2999, 1), (64, 999, 1), (1, 2999, 1), (1, 0, 2000)];
    for dtype in dtypes {
        for (seqs, cached, new) in cases {
            let blocks_each = (cached + new).div_ceil(s.block_size);
            let tables: Vec<Vec<u32>> = (0..seqs)
                .map(|i| ((i * blocks_each) as u32..((i + 1) * blocks_each) as u32).collect())
                .collect();
            let rows: Vec<SeqRows> = tables
                .iter()
                .enumerate()
                .map(|(i, t)| SeqRows {
                    first_row: i * new,
                    cached,
                    new,
                    block_table: t,
                })
                .collect();
            let plan = AttentionPlan::new(s, &rows, true, thread_blocks);
            let blocks = seqs * blocks_each;
            let k = key_cache_shape(blocks, s.kv_heads, s.head_dim, s.block_size, dtype);
            let v = value_cache_shape(blocks, s.kv_heads, s.head_dim, s.block_size);
            let random = |shape: &[usize]| {
                Tensor::randn(0f32, 1f32, shape, &device)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let kc = random(&[k.0, k.1, k.2, k.3, k.4]);
            let vc = random(&[v.0, v.1, v.2, v.3]);
            let q = random(&[plan.rows, s.heads, s.head_dim]);
            let (tiles, decode_rows, partitions) = (plan.tiles, plan.decode_rows, plan.partitions);
            let step = AttentionStep::new(plan, &device).unwrap();
            for _ in 0..3 {
                step.attention(&q, &kc, &vc).unwrap();
            }
            let iterations = 20;
            let start = stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .unwrap();
            for _ in 0..iterations {
                step.attention(&q, &kc, &vc).unwrap();
            }
            let end = stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .unwrap();
            end.synchronize().unwrap();
            let seconds = start.elapsed_ms(&end).unwrap() as f64 / 1e3 / iterations as f64;
            let context = cached + new;
            if new == 1 {
                let bytes =
                    (seqs * context * s.kv_heads * s.head_dim * 2 * dtype.size_in_bytes()) as f64;
                println!(
                    "decode attention {dtype:?} batch {seqs} x context {context}: {:.1} us, {:.0} GB/s of KV ({decode_rows} rows, {partitions} partitions)",
                    seconds * 1e6,
                    bytes / seconds / 1e9
                );
            } else {
                let flops = 4.0 * (new * new) as f64 / 2.0 * (s.heads * s.head_dim) as f64;
                println!(
                    "prompt attention {dtype:?} {new} rows: {:.1} us, {:.1} TFLOP/s ({tiles} tiles)",
                    seconds * 1e6,
                    flops / seconds / 1e12
                );
            }
        }
    }
}

#[test]
fn top_k_ranks_like_the_sampler() {
    let Some(backend) = backend("top_k") else {
        return;
    };
    let mut rng = Rng::new(91);
    // Rows with many equal logits (the k-th line runs through ties), infinities, negative
    // zeros; Mistral's vocabulary and small ones; k from 1 to the most a launch returns.
    let vocab_sizes: &[usize] = if backend.small() {
        &[5, 300, 32768]
    } else {
        &[5, 300, 32768, 131072]
    };
    for &vocab in vocab_sizes {
        for k in [1, 2, 7, 40, 104, 256] {
            let k = k.min(vocab);
            let rows = 3;
            let logits: Vec<f32> = (0..rows * vocab)
                .map(|i| match rng.below(40) {
                    0 => f32::NEG_INFINITY,
                    1 => f32::INFINITY,
                    2 => -0.0,
                    3 => 0.0,
                    4..=20 => (rng.below(9) as f32 - 4.0) * 0.25, // ties
                    _ => rng.unit() * 10.0 + (i % 3) as f32,
                })
                .collect();
            let (values, ids) = run::top_k(&logits, vocab, k);
            for r in 0..rows {
                let row = &logits[r * vocab..(r + 1) * vocab];
                let mut want: Vec<u32> = (0..vocab as u32).collect();
                want.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
                want.truncate(k);
                assert_eq!(
                    &ids[r * k..(r + 1) * k],
                    &want[..],
                    "vocab {vocab}, k {k}, row {r}"
                );
                let want_values: Vec<u32> =
                    want.iter().map(|&i| row[i as usize].to_bits()).collect();
                let got_values: Vec<u32> = values[r * k..(r + 1) * k]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert_eq!(got_values, want_values, "vocab {vocab}, k {k}, row {r}");
            }
        }
    }
}
