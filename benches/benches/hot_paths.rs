//! Micro-benchmarks of the hot paths, at Mistral-7B shapes:
//! - quantized matrix × activations (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) for 1, 16 and 64 tokens:
//!   our wide tiles (eight rows × up to four tokens per call), the same kernel one token per
//!   call (what a batch costs without the tile's weight reuse), and candle's;
//! - paged attention of one decoding token over 1k, 2k and 4k cached tokens, f16 and f32 cache;
//! - sampling with top_k/top_p over a 32k vocabulary, and greedy;
//! - incremental detokenization with the Mistral v3 tokenizer.
//!
//! `cargo bench -p ferrollama-bench --bench hot_paths` (add a filter such as `matvec` to run a
//! group). Under `cargo test --benches` each runs once, as a smoke test.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrollama_engine::sampler::{Sampler, SamplingParams};
use ferrollama_model::attention::{Attention, HeadShape, Native, StepLayout};
use ferrollama_model::cpu::quant::{self, QuantMatrix, Tiling};
use ferrollama_model::rng::SplitMix64;
use ferrollama_model::{Detokenizer, ModelConfig, SeqChunk, Tokenizer};
use std::hint::black_box;
use std::path::Path;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect()
}

fn matvec(c: &mut Criterion) {
    let device = Device::Cpu;
    // (name, out_features, in_features): attention q/o, the MLP's up/gate and down.
    let shapes = [
        ("4096x4096", 4096, 4096),
        ("14336x4096", 14336, 4096),
        ("4096x14336", 4096, 14336),
    ];
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let mut group = c.benchmark_group(format!("matvec/{dtype:?}"));
        group.sample_size(10);
        for (name, rows, cols) in shapes {
            let w = Tensor::from_vec(random(rows * cols, 1), (rows, cols), &device).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let ours = QuantMatrix::from_ggml(dtype, &q.data().unwrap(), rows, cols);
            let candle = QMatMul::from_qtensor(q).unwrap();
            for tokens in [1usize, 16, 64] {
                let x = random(tokens * cols, 2);
                let xt = Tensor::from_vec(x.clone(), (tokens, cols), &device).unwrap();
                group.throughput(Throughput::Elements((rows * cols * tokens) as u64));
                let id = format!("{name}/tokens={tokens}");
                group.bench_function(BenchmarkId::new("ours", &id), |b| {
                    b.iter(|| quant::matmul_tiled(&ours, black_box(&x), tokens, Tiling::Auto))
                });
                if tokens > 1 {
                    group.bench_function(BenchmarkId::new("ours-one-token-per-call", &id), |b| {
                        b.iter(|| {
                            quant::matmul_tiled(&ours, black_box(&x), tokens, Tiling::OneToken)
                        })
                    });
                }
                group.bench_function(BenchmarkId::new("candle", &id), |b| {
                    b.iter(|| candle.forward(black_box(&xt)).unwrap())
                });
            }
        }
        group.finish();
    }
}

fn attention(c: &mut Criterion) {
    let config = ModelConfig {
        architecture: ferrollama_model::Architecture::Llama,
        num_layers: 1,
        ..ModelConfig::named("mistral-7b").unwrap()
    };
    let shape = HeadShape {
        num_heads: config.num_heads,
        num_kv_heads: config.num_kv_heads,
        head_dim: config.head_dim,
        sliding_window: None,
    };
    let mut group = c.benchmark_group("paged_attention/decode");
    group.sample_size(20);
    for kv_dtype in [DType::F16, DType::F32] {
        for context in [1024usize, 2048, 4096] {
            let block_size = 16;
            let blocks = context / block_size;
            let attention = Native::new(shape, kv_dtype).unwrap();
            let kv = attention.allocate(blocks, block_size).unwrap();
            // Any values will do: fill both in the layout the implementation allocated.
            let fill = |t: &Tensor, seed| {
                let data = Tensor::from_vec(random(t.elem_count(), seed), t.shape(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(kv_dtype)
                    .unwrap();
                t.slice_set(&data, 0, 0).unwrap();
            };
            fill(&kv.keys, 3);
            fill(&kv.values, 4);
            let width = shape.kv_width();
            // Blocks in reverse order: a real table is not contiguous either.
            let table: Vec<u32> = (0..blocks as u32).rev().collect();
            let token = [1u32];
            let chunk = SeqChunk {
                tokens: &token,
                cached: context - 1,
                block_table: &table,
            };
            let layout = StepLayout::new(shape, block_size, &[chunk]);
            let step = attention.prepare(&layout).unwrap();
            let q = Tensor::from_vec(
                random(config.num_heads * config.head_dim, 5),
                (1, config.num_heads, config.head_dim),
                &Device::Cpu,
            )
            .unwrap();
            let kv_new = |seed| {
                Tensor::from_vec(
                    random(width, seed),
                    (1, config.num_kv_heads, config.head_dim),
                    &Device::Cpu,
                )
                .unwrap()
            };
            let (k, v) = (kv_new(6), kv_new(7));
            group.throughput(Throughput::Elements(context as u64));
            group.bench_function(BenchmarkId::new(format!("{kv_dtype:?}"), context), |b| {
                b.iter(|| step.forward(&kv, black_box(&q), &k, &v).unwrap())
            });
        }
    }
    group.finish();
}

fn sampling(c: &mut Criterion) {
    let logits = random(32768, 6);
    let context: Vec<u32> = (0..512).collect();
    let mut group = c.benchmark_group("sampling/32k");
    let cases = [
        ("top_k40_top_p0.9", SamplingParams::default()),
        ("greedy", SamplingParams::greedy()),
    ];
    for (name, params) in cases {
        let mut sampler = Sampler::new(SamplingParams {
            seed: Some(7),
            ..params
        });
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut row = logits.clone();
                sampler.sample(&mut row, &context, 64)
            })
        });
    }
    group.finish();
}

fn detokenization(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/fixtures/tiny-mistral/tokenizer.json");
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    let text = "Paged attention keeps keys and values in fixed blocks, so a server can batch \
                many requests without copying caches. Ünïcödé, emoji 🦀, and code: fn main() {}";
    let ids = tokenizer.encode(&text.repeat(4)).unwrap();
    let mut group = c.benchmark_group("detokenize");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("incremental", |b| {
        b.iter(|| {
            let mut detok = Detokenizer::new();
            let mut out = String::new();
            for &id in &ids {
                if let Some(piece) = detok.push(&tokenizer, id).unwrap() {
                    out.push_str(&piece);
                }
            }
            out
        })
    });
    group.finish();
}

criterion_group!(benches, matvec, attention, sampling, detokenization);
criterion_main!(benches);
