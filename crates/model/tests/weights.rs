//! Weight formats without a committed fixture: K-quant GGUFs (Q4_K_M mixes Q4_K, Q5_K and Q6_K,
//! which need rows of 256) and seeded random weights.

mod common;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use common::*;
use ferrollama_model::weights::{
    GgufFile, GgufWeights, Param, RandomDType, RandomWeights, WeightSource,
};
use ferrollama_model::{
    load, AttentionKind, Batch, LoadOptions, Logits, Model, ModelConfig, ModelSource, SeqChunk,
};

fn small_config() -> ModelConfig {
    ModelConfig {
        architecture: ferrollama_model::Architecture::Llama,
        vocab_size: 512,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        max_position_embeddings: 256,
        // GGUF stores it as f32.
        rms_norm_eps: 1e-5f32 as f64,
        ..ModelConfig::named("mistral-7b").unwrap()
    }
}

fn logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_kv_cache(BLOCK_SIZE, 4).unwrap();
    let mut batch = Batch::new(vec![SeqChunk {
        tokens,
        cached: 0,
        block_table: &[0, 1, 2, 3],
    }]);
    batch.logits = Logits::All;
    model
        .forward(&batch, &mut cache)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// llama.cpp's converter layout for Q and K rows (what `GgufWeights` undoes).
fn permute_for_gguf(w: &Tensor, heads: usize) -> Tensor {
    let rows = w.dim(0).unwrap();
    let d = rows / heads;
    let order: Vec<u32> = (0..rows)
        .map(|r| {
            let (h, within) = (r / d, r % d);
            let (pair, part) = (within / 2, within % 2);
            (h * d + part * (d / 2) + pair) as u32
        })
        .collect();
    w.index_select(&Tensor::new(order, &Device::Cpu).unwrap(), 0)
        .unwrap()
}

#[test]
fn k_quant_gguf_loads_and_tracks_f32() {
    let config = small_config();
    let mut source = RandomWeights::new(&config, 7, RandomDType::F32, &Device::Cpu);
    let reference = Model::load(
        &config,
        &mut source,
        &Device::Cpu,
        DType::F32,
        AttentionKind::Native,
        &mut |_, _| {},
    )
    .unwrap();

    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for param in Param::all(config.num_layers) {
        let qtensor = match param {
            Param::OutputNorm | Param::AttnNorm(_) | Param::FfnNorm(_) => {
                QTensor::quantize(&source.vector(param).unwrap(), GgmlDType::F32).unwrap()
            }
            _ => {
                let QMatMul::Tensor(w) = source.matrix(param).unwrap() else {
                    unreachable!()
                };
                let w = match param {
                    Param::Q(_) => permute_for_gguf(&w, config.num_heads),
                    Param::K(_) => permute_for_gguf(&w, config.num_kv_heads),
                    _ => w,
                };
                // Q4_K_M: Q6_K for the head and V, Q4_K elsewhere, and (as llama.cpp's
                // quantizer does for some layers) one layer's V in Q5_K.
                let dtype = match param {
                    Param::Output | Param::V(0) => GgmlDType::Q6K,
                    Param::V(_) => GgmlDType::Q5K,
                    _ => GgmlDType::Q4K,
                };
                QTensor::quantize(&w, dtype).unwrap()
            }
        };
        tensors.push((
            ferrollama_model::Architecture::Llama.gguf_name(param),
            qtensor,
        ));
    }
    use gguf_file::Value;
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(256)),
        ("llama.feed_forward_length", Value::U32(512)),
        ("llama.block_count", Value::U32(2)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(1e6)),
        ("llama.context_length", Value::U32(256)),
        ("llama.vocab_size", Value::U32(512)),
    ];
    let path = std::env::temp_dir().join(format!("ferrollama-kquant-{}.gguf", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
    drop(file);

    let gguf = std::sync::Arc::new(GgufFile::open(&path).unwrap());
    let loaded_config = gguf.config().unwrap();
    assert_eq!(loaded_config, config);
    let cpu = Device::Cpu;
    let quantized = Model::load(
        &config,
        &mut GgufWeights::new(gguf.clone(), &config, &cpu),
        &cpu,
        DType::F32,
        AttentionKind::Native,
        &mut |_, _| {},
    )
    .unwrap();
    let mut dequantized_weights = Dequantized(GgufWeights::new(gguf, &config, &cpu));
    let dequantized = Model::load(
        &config,
        &mut dequantized_weights,
        &cpu,
        DType::F32,
        AttentionKind::Native,
        &mut |_, _| {},
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();

    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 512) as u32).collect();
    let worst = |a: &Model, b: &Model| {
        let (a, b) = (logits(a, &tokens), logits(b, &tokens));
        a.iter()
            .zip(&b)
            .map(|(x, y)| cosine(x, y))
            .fold(1.0, f64::min)
    };
    // The quantized kernels compute what the dequantized weights say, up to 8-bit activations.
    let kernels = worst(&quantized, &dequantized);
    assert!(
        kernels > 0.999,
        "Q4_K/Q5_K/Q6_K matmuls against their own f32 weights: cosine {kernels}"
    );
    // And the file holds the model we wrote, up to 4-bit rounding of uniform random weights
    // (a layout or permutation mistake gives cosine near 0).
    let weights = worst(&dequantized, &reference);
    assert!(
        weights > 0.9,
        "Q4_K_M weights against the f32 originals: cosine {weights}"
    );
}

/// Serves every matrix dequantized to f32: the exact math the quantized weights stand for.
struct Dequantized<W>(W);

impl<W: WeightSource> WeightSource for Dequantized<W> {
    fn matrix(&mut self, param: Param) -> ferrollama_model::Result<QMatMul> {
        Ok(match self.0.matrix(param)? {
            QMatMul::QTensor(q) => QMatMul::Tensor(q.dequantize(&Device::Cpu)?),
            other => other,
        })
    }
    fn vector(&mut self, param: Param) -> ferrollama_model::Result<Tensor> {
        self.0.vector(param)
    }
    fn contains(&self, param: Param) -> bool {
        self.0.contains(param)
    }
}

#[test]
fn random_weights_are_seeded() {
    let source = |seed, dtype| ModelSource::Random {
        shape: "tiny".into(),
        seed,
        dtype,
        tokenizer: tiny_dir().join("tokenizer.json"),
    };
    let run = |seed, dtype| {
        let model = load(&source(seed, dtype), &LoadOptions::cpu(), &mut |_, _| {}).unwrap();
        assert_eq!(model.config(), &ModelConfig::named("tiny").unwrap());
        logits(&model.model, &[1, 3, 23325, 4])
    };
    assert_eq!(run(1, RandomDType::F32), run(1, RandomDType::F32));
    assert_ne!(run(1, RandomDType::F32), run(2, RandomDType::F32));
    let q4 = run(1, RandomDType::Q4_0);
    assert!(q4.iter().flatten().all(|x| x.is_finite()));
    assert!(cosine(&q4[3], &run(1, RandomDType::F32)[3]) > 0.9);
}
