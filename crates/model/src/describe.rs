//! What a model is, read once from its files' headers (no weight is loaded): architecture,
//! format, parameter count, quantization, shape, and for an embedding model its pooling. One
//! description serves `/api/show`, `/api/tags`, `/api/ps`, `/v1/models` and `ferrollama show`.
//! Architectures are named as GGUF's `general.architecture` names them, whichever the format.

use crate::error::{ModelError, Result};
use crate::pooling::{sentence_transformers_head, Pooling};
use crate::weights::{GgufFile, RandomDType};
use crate::{ModelConfig, ModelSource};
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// `llama` (Mistral and Llama alike, as llama.cpp's converter names them), `bert`, ...
    pub architecture: String,
    /// `gguf`, `safetensors` or `random`.
    pub format: &'static str,
    /// Elements of every weight.
    pub parameters: u64,
    /// llama.cpp's file type for a GGUF (`Q4_0`, `Q4_K_M`); the weights' dtype otherwise.
    pub quantization: String,
    /// The shape by GGUF's key names under the architecture (`context_length`,
    /// `embedding_length`, `block_count`, `attention.head_count`, ...), those it gives.
    pub shape: Vec<(&'static str, u64)>,
    /// How an embedding model pools its tokens; `None` for a model that generates.
    pub pooling: Option<Pooling>,
}

/// Encoder families as GGUF `general.architecture` names them (config.json's `model_type`
/// through [`family_of_model_type`]). `bert` and `nomic-bert` run; the others are known as
/// embedding models, so that a request for one is told it is not supported yet rather than
/// that it cannot embed.
pub(crate) const ENCODER_FAMILIES: [&str; 4] =
    ["bert", "nomic-bert", "jina-bert-v2", "xlm-roberta"];

/// A config.json `model_type` by llama.cpp's name for the architecture, so that one family
/// has one name in either format (`nomic_bert` is `nomic-bert`).
pub(crate) fn family_of_model_type(model_type: &str) -> &str {
    match model_type {
        "nomic_bert" => "nomic-bert",
        "xlm-roberta" | "xlm_roberta" => "xlm-roberta",
        other => other,
    }
}

/// The shape's keys, GGUF's name under the architecture and config.json's (the usual name,
/// then GPT-2's, which nomic-bert's config uses).
const SHAPE: [(&str, &[&str]); 7] = [
    (
        "context_length",
        &["max_position_embeddings", "n_positions"],
    ),
    ("embedding_length", &["hidden_size", "n_embd"]),
    ("block_count", &["num_hidden_layers", "n_layer"]),
    ("feed_forward_length", &["intermediate_size", "n_inner"]),
    ("attention.head_count", &["num_attention_heads", "n_head"]),
    ("attention.head_count_kv", &["num_key_value_heads"]),
    ("vocab_size", &["vocab_size"]),
];

impl Description {
    pub fn of(source: &ModelSource) -> Result<Self> {
        match source {
            ModelSource::Gguf(path) => Ok(Self::of_gguf(&GgufFile::open(path)?)),
            ModelSource::Safetensors(dir) => Self::of_safetensors(dir),
            ModelSource::Random { shape, dtype, .. } => {
                Ok(Self::of_random(&ModelConfig::named(shape)?, *dtype))
            }
        }
    }

    /// What nothing could be read of (a store entry whose file is missing).
    pub fn unknown() -> Self {
        Self {
            architecture: "unknown".into(),
            format: "gguf",
            parameters: 0,
            quantization: "unknown".into(),
            shape: Vec::new(),
            pooling: None,
        }
    }

    pub fn of_gguf(file: &GgufFile) -> Self {
        let architecture = file
            .string("general.architecture")
            .unwrap_or("unknown")
            .to_string();
        let mut shape: Vec<(&'static str, u64)> = SHAPE
            .iter()
            .filter_map(|(key, _)| Some((*key, file.uint(&format!("{architecture}.{key}"))?)))
            .collect();
        if !shape.iter().any(|(k, _)| *k == "vocab_size") {
            if let Some(tokens) = file.array("tokenizer.ggml.tokens") {
                shape.push(("vocab_size", tokens.len() as u64));
            }
        }
        let pooling = ENCODER_FAMILIES.contains(&architecture.as_str()).then(|| {
            file.uint(&format!("{architecture}.pooling_type"))
                .and_then(|code| Pooling::of_gguf(code).ok().flatten())
                .unwrap_or(Pooling::Mean)
        });
        Self {
            parameters: file.parameters(),
            quantization: file.quantization(),
            format: "gguf",
            shape,
            pooling,
            architecture,
        }
    }

    fn of_safetensors(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        let model_type = config["model_type"].as_str().unwrap_or("unknown");
        let class = config["architectures"][0].as_str();
        let architecture = match crate::Architecture::of_hf(class, Some(model_type)) {
            Ok(decoder) => decoder.name(),
            Err(_) => family_of_model_type(model_type),
        };
        let shape = SHAPE
            .iter()
            .filter_map(|(key, hf)| Some((*key, hf.iter().find_map(|k| config[*k].as_u64())?)))
            .collect();
        let pooling = ENCODER_FAMILIES
            .contains(&architecture)
            .then(|| sentence_transformers_head(dir).map(|(pooling, _)| pooling))
            .transpose()?;
        let (parameters, quantization) = safetensors_weights(dir)?;
        Ok(Self {
            architecture: architecture.to_string(),
            format: "safetensors",
            parameters,
            quantization,
            shape,
            pooling,
        })
    }

    fn of_random(c: &ModelConfig, dtype: RandomDType) -> Self {
        let embeddings = c.vocab_size * c.hidden_size * if c.tie_word_embeddings { 1 } else { 2 };
        let per_layer = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
            + c.num_heads * c.head_dim * c.hidden_size
            + 3 * c.hidden_size * c.intermediate_size;
        let shape = [
            c.max_position_embeddings,
            c.hidden_size,
            c.num_layers,
            c.intermediate_size,
            c.num_heads,
            c.num_kv_heads,
            c.vocab_size,
        ];
        Self {
            architecture: c.architecture.name().into(),
            format: "random",
            parameters: (embeddings + c.num_layers * per_layer) as u64,
            quantization: format!("{dtype:?}"),
            shape: SHAPE
                .iter()
                .zip(shape)
                .map(|((key, _), v)| (*key, v as u64))
                .collect(),
            pooling: None,
        }
    }

    /// One number of the shape.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.shape.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The parameter count as Ollama writes it (`7.2B`, `22.7M`).
    pub fn parameter_size(&self) -> String {
        crate::weights::parameter_size(self.parameters)
    }
}

/// Elements of every tensor in a directory's safetensors files, read from their headers, and
/// the dtype that holds the most of them.
fn safetensors_weights(dir: &Path) -> Result<(u64, String)> {
    let mut by_dtype: Vec<(String, u64)> = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        for (dtype, elements) in safetensors_header(&path)? {
            match by_dtype.iter_mut().find(|(d, _)| *d == dtype) {
                Some((_, n)) => *n += elements,
                None => by_dtype.push((dtype, elements)),
            }
        }
    }
    let total = by_dtype.iter().map(|(_, n)| n).sum();
    let main = by_dtype
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or_else(|| "unknown".to_string(), |(d, _)| d.clone());
    Ok((total, main))
}

/// (dtype, elements) of each tensor in one safetensors file: its 8-byte length, then JSON.
fn safetensors_header(path: &Path) -> Result<Vec<(String, u64)>> {
    use std::io::Read;
    let bad = |why: &str| ModelError::Config(format!("{}: {why}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| ModelError::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad("a header over 100 MB"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| ModelError::io(path, e))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(&e.to_string()))?;
    Ok(header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(_, t)| {
            let dtype = t["dtype"].as_str()?.to_string();
            let elements = t["shape"]
                .as_array()?
                .iter()
                .try_fold(1u64, |n, d| n.checked_mul(d.as_u64()?))?;
            Some((dtype, elements))
        })
        .collect())
}
