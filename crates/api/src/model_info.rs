//! What the APIs say about a model (`/api/tags`, `/api/show`, `/api/ps`, `/v1/models`):
//! worked out once when it loads, and kept for a model given at start-up while it is unloaded.

use crate::names::ModelNames;
use ferrollama_model::{Description, LoadedModel};
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
    /// What the model is, from its files' headers.
    pub description: Description,
    /// The chat template it uses.
    pub template: String,
    /// Its default options as Ollama's `show` prints them: `stop "[INST]"`, one per line.
    pub parameters: String,
    pub on_gpu: bool,
    /// Its template can offer tools (Ollama's `tools` capability).
    pub tools: bool,
}

impl ModelInfo {
    /// A generating model: its template, its default options, whether it takes tools.
    pub fn describe(
        model: &LoadedModel,
        names: ModelNames,
        size_bytes: u64,
        digest: String,
        modified: SystemTime,
        description: Description,
        defaults: &Map<String, Value>,
    ) -> Self {
        Self {
            template: model.chat_template.name().to_string(),
            parameters: modelfile_parameters(defaults),
            on_gpu: model.model.device().is_cuda(),
            tools: model.chat_template.tool_syntax(&model.tokenizer).is_some(),
            ..Self::of_encoder(names, size_bytes, digest, modified, description)
        }
    }

    /// An embedding model: no template, no options, no tools.
    pub fn of_encoder(
        names: ModelNames,
        size_bytes: u64,
        digest: String,
        modified: SystemTime,
        description: Description,
    ) -> Self {
        Self {
            names,
            size_bytes,
            digest,
            modified,
            description,
            template: String::new(),
            parameters: String::new(),
            on_gpu: false,
            tools: false,
        }
    }

    /// Ollama's `details`: format, family, size in parameters and quantization.
    pub fn details(&self) -> Value {
        details(&self.description)
    }

    /// `/api/show`'s `model_info`: GGUF's keys, the shape under the architecture's name.
    pub fn model_info(&self) -> Value {
        let d = &self.description;
        let mut info = json!({
            "general.architecture": d.architecture,
            "general.parameter_count": d.parameters,
            "general.file_type": d.quantization,
        });
        for (key, value) in &d.shape {
            info[format!("{}.{key}", d.architecture)] = json!(value);
        }
        if let Some(pooling) = d.pooling {
            info[format!("{}.pooling_type", d.architecture)] = json!(pooling.name());
        }
        info
    }

    /// Ollama's capabilities: an embedding model embeds; every other model completes, and one
    /// whose template offers tools calls them.
    pub fn capabilities(&self) -> Value {
        if self.description.pooling.is_some() {
            json!(["embedding"])
        } else if self.tools {
            json!(["completion", "tools"])
        } else {
            json!(["completion"])
        }
    }
}

impl ModelInfo {
    /// One model in /api/tags (and the start of one in /api/ps).
    pub fn tag(&self) -> Value {
        let name = &self.names.primary;
        json!({"name": name, "model": name, "modified_at": crate::clock::rfc3339(self.modified),
               "size": self.size_bytes, "digest": self.digest, "details": self.details()})
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
pub(crate) fn details(d: &Description) -> Value {
    json!({"parent_model": "", "format": d.format, "family": d.architecture,
           "families": [d.architecture], "parameter_size": d.parameter_size(),
           "quantization_level": d.quantization})
}
