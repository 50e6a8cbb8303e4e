//! The catalog in `models/catalog/`: one small TOML file per model family saying what its
//! names are, where to get it (the Ollama registry, Hugging Face), its chat template, context
//! length, stop strings and default options. The files are built into the binary.

use ferrollama_model::{LoadedModel, ModelConfig};
use ferrollama_store::ModelName;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::OnceLock;

const FILES: [(&str, &str); 2] = [
    (
        "mistral.toml",
        include_str!("../models/catalog/mistral.toml"),
    ),
    (
        "smollm2.toml",
        include_str!("../models/catalog/smollm2.toml"),
    ),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub family: String,
    /// The names it answers to, whatever file it was loaded from.
    pub names: Vec<String>,
    /// Its exact tag in the Ollama registry.
    pub ollama: String,
    /// Its safetensors repository on Hugging Face.
    pub huggingface: String,
    /// The chat template that serves it, as `ferrollama show` names templates.
    pub template: String,
    pub context_length: usize,
    pub stop: Vec<String>,
    shape: Shape,
    /// Ollama options it gets when a request does not set them.
    #[serde(default)]
    options: Map<String, Value>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Shape {
    hidden_size: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab_size: usize,
}

pub fn entries() -> &'static [Entry] {
    static ENTRIES: OnceLock<Vec<Entry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        FILES
            .iter()
            .map(|(file, text)| {
                toml::from_str(text).unwrap_or_else(|e| panic!("models/catalog/{file}: {e}"))
            })
            .collect()
    })
}

/// The entry a loaded model is: by the name it was asked for, else by its shape and template
/// (a file carries no catalog name).
pub fn entry_for(name: &str, model: &LoadedModel) -> Option<&'static Entry> {
    find(name, model.config(), model.chat_template.name())
}

fn find(name: &str, c: &ModelConfig, template: &str) -> Option<&'static Entry> {
    let shape = Shape {
        hidden_size: c.hidden_size,
        layers: c.num_layers,
        heads: c.num_heads,
        kv_heads: c.num_kv_heads,
        vocab_size: c.vocab_size,
    };
    entries()
        .iter()
        .find(|e| e.names.iter().any(|n| n == name))
        .or_else(|| {
            entries()
                .iter()
                .find(|e| e.shape == shape && e.template == template)
        })
}

/// The entry a name means: one of its names, or its Ollama tag, in any of Ollama's forms.
pub fn by_name(name: &ModelName) -> Option<&'static Entry> {
    entries().iter().find(|e| {
        e.names
            .iter()
            .chain([&e.ollama])
            .any(|n| ModelName::parse(n).is_ok_and(|n| &n == name))
    })
}

impl Entry {
    /// Its stop strings and default options, as one Ollama `options` object.
    pub fn defaults(&self) -> Map<String, Value> {
        let mut defaults = self.options.clone();
        defaults.insert("stop".into(), Value::from(self.stop.clone()));
        defaults
    }
}

#[cfg(test)]
mod tests {
    use super::{entries, find};
    use ferrollama_model::ModelConfig;
    use ferrollama_store::ModelName;

    #[test]
    fn a_file_is_known_by_its_shape_and_template_or_by_name() {
        let mistral = ModelConfig::named("mistral-7b").unwrap();
        let found = find("/models/anything.gguf", &mistral, "mistral-instruct").unwrap();
        assert_eq!(found.family, "mistral");
        assert!(found.defaults()["stop"]
            .as_array()
            .is_some_and(|s| s.len() == 2));
        assert!(
            find("/models/anything.gguf", &mistral, "jinja").is_none(),
            "another template"
        );
        let tiny = ModelConfig::named("tiny").unwrap();
        assert!(find("/models/tiny.gguf", &tiny, "mistral-instruct").is_none());
        assert_eq!(
            find("smollm2:135m", &tiny, "none").unwrap().family,
            "smollm2"
        );
        let by = |n: &str| super::by_name(&ModelName::parse(n).unwrap()).map(|e| e.family.as_str());
        assert_eq!(by("mistral"), Some("mistral"), "mistral is mistral:latest");
        assert_eq!(
            by("registry.ollama.ai/library/mistral:7b-instruct-v0.3-q4_0"),
            Some("mistral")
        );
        assert_eq!(by("mistral:7b-text"), None);
    }

    #[test]
    fn every_file_parses_and_names_are_unique() {
        let all = entries();
        assert_eq!(all.len(), super::FILES.len());
        let mut names: Vec<&str> = all
            .iter()
            .flat_map(|e| e.names.iter().map(String::as_str))
            .collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "a name in two entries");
        for entry in all {
            for name in entry.names.iter().chain([&entry.ollama]) {
                ModelName::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            assert!(
                !entry.stop.is_empty() && entry.context_length > 0,
                "{}",
                entry.family
            );
        }
        let mistral = all.iter().find(|e| e.family == "mistral").unwrap();
        assert_eq!(mistral.ollama, "mistral:7b-instruct-v0.3-q4_0");
        assert!(mistral.names.iter().any(|n| n == "mistral:instruct"));
        assert_eq!(mistral.huggingface, "mistralai/Mistral-7B-Instruct-v0.3");
        assert_eq!(mistral.context_length, 32768);
    }
}
