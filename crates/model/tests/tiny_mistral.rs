//! tiny-mistral (random weights, real Mistral v3 tokenizer) against Hugging Face transformers
//! and llama.cpp. References: models/make_tiny_mistral.py, models/make_llamacpp_refs.py.

mod common;

use common::*;
use serde_json::Value;

const VOCAB: usize = 32768;

fn prompts(refs: &Value) -> &Vec<Value> {
    refs["prompts"].as_array().unwrap()
}

/// Greedy tokens and last-position logits of one model against transformers' references.
/// With an f32 KV cache, as transformers computes: what remains is float order (the f16
/// default is held to f32 in attention.rs).
fn check_against_transformers(model_path: &std::path::Path, refs_name: &str, logits_name: &str) {
    let model = load_model_f32_cache(model_path, ferrollama_model::AttentionKind::Native);
    let refs = json(&tiny_refs(refs_name));
    let expected_logits = read_f32(&tiny_refs(logits_name));
    assert!(prompts(&refs).len() * VOCAB == expected_logits.len());
    let mut worst = 0f32;
    for (i, prompt) in prompts(&refs).iter().enumerate() {
        let name = prompt["name"].as_str().unwrap();
        let input = ids(&prompt["input_ids"]);
        let expected = ids(&prompt["greedy_ids"]);
        let got = greedy(&model, &input, expected.len(), &[]);

        let reference = &expected_logits[i * VOCAB..(i + 1) * VOCAB];
        let ours = &got.logits[0];
        let max_abs = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        let max_err = reference
            .iter()
            .zip(ours)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            max_err <= 1e-4 * max_abs,
            "{name}: last logits differ by {max_err} (max |logit| {max_abs})"
        );
        assert_eq!(got.ids, expected, "{name}: greedy continuation differs");
        worst = worst.max(max_err / max_abs);
    }
    eprintln!(
        "{refs_name}: worst last-logit error {worst:.2e} x max|logit| over {} prompts",
        prompts(&refs).len()
    );
}

#[test]
fn f32_safetensors_matches_transformers() {
    let refs = json(&tiny_refs("transformers.json"));
    assert!(prompts(&refs).len() >= 8);
    assert!(prompts(&refs)
        .iter()
        .all(|p| p["greedy_ids"].as_array().unwrap().len() == 32));
    check_against_transformers(
        &tiny_dir(),
        "transformers.json",
        "transformers_last_logits.f32",
    );
}

/// Mistral v0.1's sliding window: the same weights with `sliding_window = 8`.
#[test]
fn sliding_window_matches_transformers() {
    let dir = tempdir("sliding");
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::os::unix::fs::symlink(tiny_dir().join(file), dir.join(file)).unwrap();
    }
    let mut config = json(&tiny_dir().join("config.json"));
    config["sliding_window"] = 8.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    check_against_transformers(
        &dir,
        "transformers_sliding.json",
        "transformers_sliding_last_logits.f32",
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrollama-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn gguf_f16_gives_the_f32_greedy_tokens() {
    let f32_model = load_model(&tiny_dir());
    let f16_model = load_model(&tiny_dir().join("tiny-mistral-f16.gguf"));
    let refs = json(&tiny_refs("transformers.json"));
    for prompt in prompts(&refs) {
        let input = ids(&prompt["input_ids"]);
        let a = greedy(&f32_model, &input, 32, &[]);
        let b = greedy(&f16_model, &input, 32, &[]);
        assert_eq!(a.ids, b.ids, "{}", prompt["name"]);
    }
}

/// Quantized GGUFs: logits at every position of each prompt close to llama.cpp's on the same
/// file (llama.cpp computes these with quantized activations too, so cosine, not equality).
#[test]
fn gguf_logits_match_llama_cpp_at_every_position() {
    let refs = json(&tiny_refs("llamacpp.json"));
    let prompt_ids = |name: &str| {
        let prompt = refs["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        ids(&prompt["input_ids"])
    };
    for quant in ["f16", "q8_0", "q4_0"] {
        let entry = &refs["quants"][quant];
        let model = load_model(&tiny_dir().join(entry["gguf"].as_str().unwrap()));
        let expected = read_f16(&tiny_refs(entry["logits_file"].as_str().unwrap()));
        let mut worst = 1.0f64;
        let mut rows = 0;
        for prompt in entry["logits_prompts"].as_array().unwrap() {
            let input = prompt_ids(prompt["name"].as_str().unwrap());
            let offset = prompt["row_offset"].as_u64().unwrap() as usize;
            assert_eq!(input.len() as u64, prompt["n_rows"].as_u64().unwrap());
            for (i, ours) in all_logits(&model, &input, input.len()).iter().enumerate() {
                let theirs = &expected[(offset + i) * VOCAB..(offset + i + 1) * VOCAB];
                worst = worst.min(cosine(ours, theirs));
                rows += 1;
            }
        }
        assert!(rows >= 16, "{quant}: only {rows} positions compared");
        assert!(
            worst >= 0.999,
            "{quant}: worst cosine {worst} against llama.cpp"
        );
        eprintln!("{quant}: worst cosine against llama.cpp over {rows} positions: {worst:.6}");
    }
}
