//! The attention implementations against each other on the CPU: the generic path (candle ops,
//! the code that runs unchanged on CUDA) must give the native kernels' logits, over batches
//! that mix prompt chunks, continued prompts and decoding tokens in scattered blocks. Where
//! they are compared with each other, both keep an f32 cache; the native default, f16, is held
//! to its f32 twin separately.

mod common;

use candle_core::{DType, Device};
use common::*;
use ferrollama_model::weights::SafetensorsWeights;
use ferrollama_model::{
    AttentionKind, AttentionSpec, Batch, LoadedModel, Model, ModelConfig, SeqChunk,
};

fn tiny(attention: AttentionKind) -> LoadedModel {
    load_model_f32_cache(&tiny_dir(), attention)
}

#[test]
fn generic_equals_native_on_tiny_mistral_f32() {
    let native = mixed_steps(&tiny(AttentionKind::Native).model);
    let generic = mixed_steps(&tiny(AttentionKind::Generic).model);
    assert_eq!(native.len(), 20 + 7 + 32 + 11);
    let worst = worst_relative(&native, &generic);
    eprintln!("tiny-mistral f32: generic vs native, worst relative logit error {worst:e}");
    assert!(worst <= 1e-5, "{worst}");
}

/// Mistral v0.1's sliding window, on tiny-mistral's weights with a window of 8.
#[test]
fn generic_equals_native_with_a_sliding_window() {
    let base = tiny(AttentionKind::Native);
    let config = ModelConfig {
        architecture: ferrollama_model::Architecture::Llama,
        sliding_window: Some(8),
        ..base.config().clone()
    };
    let load = |kind| {
        let mut weights = SafetensorsWeights::open(
            &tiny_dir(),
            ferrollama_model::Architecture::Llama,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let attention = AttentionSpec {
            kind,
            kv_dtype: Some(DType::F32),
        };
        Model::load(
            &config,
            &mut weights,
            &Device::Cpu,
            DType::F32,
            attention,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let native = mixed_steps(&load(AttentionKind::Native));
    let generic = mixed_steps(&load(AttentionKind::Generic));
    let worst = worst_relative(&native, &generic);
    assert!(worst <= 1e-5, "{worst}");
    // The window matters: without it the same steps give other logits.
    let unwindowed = mixed_steps(&base.model);
    assert!(worst_relative(&native, &unwindowed) > 1e-3);
}

/// SmolLM2 Q4_1 rounds activations to 8 bits inside every matmul, so f32 noise from another
/// summation order can flip a rounding and move logits by up to about 1 (see `TIE` in
/// smollm2.rs). Greedy replies may part only where both top-2 gaps are within that tie, and
/// the logits stay close overall.
#[test]
fn generic_tracks_native_on_smollm2() {
    let native = load_model_f32_cache(&smollm2_gguf(), AttentionKind::Native);
    let generic = load_model_f32_cache(&smollm2_gguf(), AttentionKind::Generic);
    let (a, b) = (mixed_steps(&native.model), mixed_steps(&generic.model));
    let worst = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    eprintln!("smollm2: generic vs native, worst |logit difference| {worst}");
    assert!(worst < 1.5, "{worst}");
    greedy_parts_only_at_ties(&native, &generic, 32, "generic parts from native");
}

/// The dtype a T4 computes in, through the same generic path, on the CPU: tiny-mistral in
/// f16 (weights, activations, KV cache) tracks f32 to f16 precision.
#[test]
fn generic_attention_in_f16_tracks_f32() {
    let source = ferrollama_model::ModelSource::from_path(&tiny_dir()).unwrap();
    let options = ferrollama_model::LoadOptions::cpu()
        .with_attention(AttentionKind::Generic)
        .with_dtype(DType::F16);
    let half = ferrollama_model::load(&source, &options, &mut |_, _| {}).unwrap();
    assert_eq!(half.model.dtype(), DType::F16);
    let full = mixed_steps(&tiny(AttentionKind::Native).model);
    let worst = worst_relative(&full, &mixed_steps(&half.model));
    eprintln!("tiny-mistral f16 vs f32: worst relative logit error {worst:e}");
    assert!(worst < 2e-2, "{worst}");
}

/// The native default: an f16 cache, at half the bytes per block, tracks the f32 cache to f16
/// precision on tiny-mistral (keys and values round to 11 bits; the rest is the same code).
#[test]
fn native_f16_cache_tracks_the_f32_cache() {
    let half = load_model_with(&tiny_dir(), AttentionKind::Native);
    let full = tiny(AttentionKind::Native);
    assert_eq!(half.model.kv_dtype(), DType::F16);
    assert_eq!(full.model.kv_dtype(), DType::F32);
    assert_eq!(
        2 * half.model.kv_block_bytes(BLOCK_SIZE),
        full.model.kv_block_bytes(BLOCK_SIZE)
    );
    let worst = worst_relative(&mixed_steps(&full.model), &mixed_steps(&half.model));
    eprintln!("tiny-mistral: f16 vs f32 KV cache, worst relative logit error {worst:e}");
    assert!(
        worst > 0.0,
        "an f16 cache rounds: the two cannot be identical"
    );
    assert!(worst < 2e-3, "{worst}");
}

/// Greedy SmolLM2 with the f16 cache follows the f32 cache, but where the top two are within
/// the tie of 8-bit activation rounding (see `generic_tracks_native_on_smollm2`).
#[test]
fn native_f16_cache_keeps_smollm2_greedy_replies() {
    let half = load_model_with(&smollm2_gguf(), AttentionKind::Native);
    let full = load_model_f32_cache(&smollm2_gguf(), AttentionKind::Native);
    greedy_parts_only_at_ties(&full, &half, 48, "the f16 cache parts from f32");
}

/// Greedy replies of `a` and `b` to one chat prompt, `n` tokens: where they part, both top-2
/// gaps must be within the tie of 8-bit activation rounding.
fn greedy_parts_only_at_ties(a: &LoadedModel, b: &LoadedModel, n: usize, what: &str) {
    const TIE: f32 = 0.5;
    let messages = [ferrollama_model::ChatMessage::new(
        ferrollama_model::Role::User,
        "Write two sentences about the sea.",
    )];
    let prompt = a.chat_template.encode(&a.tokenizer, &messages).unwrap();
    let (a, b) = (greedy(a, &prompt, n, &[]), greedy(b, &prompt, n, &[]));
    if let Some(step) = a.ids.iter().zip(&b.ids).position(|(x, y)| x != y) {
        let gaps = (top2_gap(&a.logits[step]), top2_gap(&b.logits[step]));
        eprintln!("smollm2: {what} at step {step}, top-2 gaps {gaps:?}");
        assert!(gaps.0 < TIE && gaps.1 < TIE, "a real divergence: {gaps:?}");
    } else {
        eprintln!("smollm2: the same {n} greedy tokens");
    }
}

#[test]
fn a_cache_from_another_attention_is_refused() {
    let native = tiny(AttentionKind::Native);
    let generic = tiny(AttentionKind::Generic);
    let mut cache = native.model.new_kv_cache(BLOCK_SIZE, 4).unwrap();
    let batch = Batch::new(vec![SeqChunk {
        tokens: &[1, 2, 3],
        cached: 0,
        block_table: &[0],
    }]);
    let err = generic.model.forward(&batch, &mut cache).unwrap_err();
    assert!(err.to_string().contains("laid out for `native`"), "{err}");
}
