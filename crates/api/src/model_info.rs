//! What the APIs say about a model (`/api/tags`, `/api/show`, `/api/ps`, `/v1/models`):
//! worked out once when it loads, and kept for a model given at start-up while it is unloaded.

use crate::names::ModelNames;
use ferrollama_model::LoadedModel;
use serde_json::{json, Map, Value};
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub names: ModelNames,
    /// Size of the weights on disk.
    pub size_bytes: u64,
    /// Its manifest's sha256 (hex) when it came from the store.
    pub digest: String,
    pub modified: SystemTime,
    /// Ollama's `details`.
    pub details: Value,
    /// `/api/show`'s `model_info`.
    pub model_info: Value,
    /// The chat template it uses.
    pub template: String,
    /// Its default options as Ollama's `show` prints them: `stop "[INST]"`, one per line.
    pub parameters: String,
    pub on_gpu: bool,
    /// Its template can offer tools (Ollama's `tools` capability).
    pub tools: bool,
}

impl ModelInfo {
    pub fn describe(
        model: &LoadedModel,
        names: ModelNames,
        size_bytes: u64,
        digest: String,
        modified: SystemTime,
        quantization: &str,
        defaults: &Map<String, Value>,
    ) -> Self {
        let c = model.config();
        let parameters = (c.vocab_size * c.hidden_size * if c.tie_word_embeddings { 1 } else { 2 })
            + c.num_layers
                * (c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
                    + c.num_heads * c.head_dim * c.hidden_size
                    + 3 * c.hidden_size * c.intermediate_size);
        Self {
            names,
            size_bytes,
            digest,
            modified,
            details: details("llama", parameters as u64, quantization),
            model_info: json!({
                "general.architecture": "llama",
                "llama.context_length": c.max_position_embeddings,
                "llama.embedding_length": c.hidden_size,
                "llama.block_count": c.num_layers,
                "llama.attention.head_count": c.num_heads,
                "llama.attention.head_count_kv": c.num_kv_heads,
                "llama.vocab_size": c.vocab_size,
            }),
            template: model.chat_template.name().to_string(),
            parameters: modelfile_parameters(defaults),
            on_gpu: model.model.device().is_cuda(),
            tools: model.chat_template.tool_syntax(&model.tokenizer).is_some(),
        }
    }
}

impl ModelInfo {
    /// One model in /api/tags (and the start of one in /api/ps).
    pub fn tag(&self) -> Value {
        let name = &self.names.primary;
        json!({"name": name, "model": name, "modified_at": crate::clock::rfc3339(self.modified),
               "size": self.size_bytes, "digest": self.digest, "details": self.details})
    }

    /// Unix seconds, OpenAI's `created`.
    pub fn created(&self) -> u64 {
        crate::clock::unix_seconds(self.modified)
    }
}

/// Options as Modelfile `PARAMETER` lines, the way `ollama show` prints them.
pub(crate) fn modelfile_parameters(options: &Map<String, Value>) -> String {
    let mut lines = Vec::new();
    for (key, value) in options {
        let values = match value {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        lines.extend(values.iter().map(|v| format!("{key:<30} {v}")));
    }
    lines.join("\n")
}

/// Ollama's `details` of a model: its format, family, size in parameters and quantization.
pub(crate) fn details(architecture: &str, parameters: u64, quantization: &str) -> Value {
    json!({"parent_model": "", "format": "gguf", "family": architecture, "families": [architecture],
           "parameter_size": ferrollama_model::weights::parameter_size(parameters), "quantization_level": quantization})
}
