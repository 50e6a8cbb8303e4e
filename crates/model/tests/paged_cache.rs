//! The paged KV cache: a prompt prefilled in one call, in chunks of any size, or mixed into a
//! batch with other sequences' prefills and decodes gives the same logits.

mod common;

use common::*;
use ferrollama_model::{Batch, LoadedModel, Logits, SeqChunk};

fn long_prompt() -> Vec<u32> {
    let refs = json(&tiny_refs("transformers.json"));
    let long = refs["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "long")
        .unwrap();
    let prompt = ids(&long["input_ids"]);
    assert!(
        prompt.len() > 5 * BLOCK_SIZE,
        "the prompt spans several blocks"
    );
    prompt
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= 1e-5 * scale,
        "{what}: max difference {err} (scale {scale})"
    );
}

fn check_chunking(model: &LoadedModel, prompt: &[u32]) {
    let whole = all_logits(model, prompt, prompt.len());
    for chunk in [1, 7, 16] {
        let chunked = all_logits(model, prompt, chunk);
        assert_eq!(chunked.len(), whole.len());
        for (pos, (a, b)) in whole.iter().zip(&chunked).enumerate() {
            assert_close(a, b, &format!("chunks of {chunk}, position {pos}"));
        }
    }
}

#[test]
fn chunked_prefill_equals_one_call_f32() {
    // An f32 cache: candle's f32 matmul may sum a row differently by batch size, and an f16
    // cache would turn that last-bit noise into a rounding step. The quantized model below runs
    // our own kernels, which do not, on the default f16 cache.
    let model = load_model_f32_cache(&tiny_dir(), ferrollama_model::AttentionKind::Native);
    check_chunking(&model, &long_prompt());
}

#[test]
fn chunked_prefill_equals_one_call_quantized() {
    check_chunking(
        &load_model(&tiny_dir().join("tiny-mistral-q4_0.gguf")),
        &long_prompt(),
    );
}

/// Three sequences in one batch: a fresh prefill, a decode step and a continued prefill,
/// each with its own scattered blocks, give the logits they give alone.
#[test]
fn mixed_batch_equals_sequences_alone() {
    let model = load_model(&tiny_dir());
    let prompt = long_prompt();
    let (a, b, c) = (&prompt[..30], &prompt[10..31], &prompt[40..57]);
    // Sequence: tokens already cached, then the new chunk.
    let plans: [(&[u32], usize); 3] = [(a, 0), (b, 20), (c, 10)];

    let alone: Vec<Vec<f32>> = plans
        .iter()
        .map(|&(tokens, _)| all_logits(&model, tokens, tokens.len()).pop().unwrap())
        .collect();

    let mut cache = model.model.new_kv_cache(BLOCK_SIZE, 12).unwrap();
    let tables: [Vec<u32>; 3] = [vec![11, 0], vec![5, 9], vec![2, 7]];
    for (i, &(tokens, cached)) in plans.iter().enumerate() {
        if cached > 0 {
            let warm = Batch::new(vec![SeqChunk {
                tokens: &tokens[..cached],
                cached: 0,
                block_table: &tables[i],
            }]);
            model.model.forward(&warm, &mut cache).unwrap();
        }
    }
    let batch = Batch::new(
        plans
            .iter()
            .zip(&tables)
            .map(|(&(tokens, cached), table)| SeqChunk {
                tokens: &tokens[cached..],
                cached,
                block_table: table,
            })
            .collect(),
    );
    let logits = model
        .model
        .forward(&batch, &mut cache)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(logits.len(), 3);
    for (i, (row, expected)) in logits.iter().zip(&alone).enumerate() {
        assert_close(expected, row, &format!("sequence {i}"));
    }
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let model = load_model(&tiny_dir());
    let mut cache = model.model.new_kv_cache(BLOCK_SIZE, 2).unwrap();
    let tokens = [1u32; 40];
    let too_short = Batch::new(vec![SeqChunk {
        tokens: &tokens,
        cached: 0,
        block_table: &[0, 1],
    }]);
    assert!(
        model.model.forward(&too_short, &mut cache).is_err(),
        "40 tokens do not fit 2 blocks"
    );
    let bad_block = Batch::new(vec![SeqChunk {
        tokens: &tokens[..3],
        cached: 0,
        block_table: &[7],
    }]);
    assert!(
        model.model.forward(&bad_block, &mut cache).is_err(),
        "block 7 does not exist"
    );
    let bad_token = Batch::new(vec![SeqChunk {
        tokens: &[40000],
        cached: 0,
        block_table: &[0],
    }]);
    assert!(
        model.model.forward(&bad_token, &mut cache).is_err(),
        "token outside the vocabulary"
    );
    let mut empty = Batch::new(vec![]);
    empty.logits = Logits::All;
    assert!(model.model.forward(&empty, &mut cache).is_err());
}
