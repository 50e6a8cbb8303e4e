//! The one place a model name from a request is matched to the loaded model. The model store
//! (pulls, several models) will grow from here.

use ferrollama_model::{ChatTemplate, LoadedModel, ModelConfig};

#[derive(Debug, Clone)]
pub struct ModelNames {
    /// The name the model is listed under.
    pub primary: String,
    /// Every name it answers to, the primary first.
    pub all: Vec<String>,
}

impl ModelNames {
    /// `name` from `--name`, else the file name without extension; the model's path; and for
    /// Mistral-7B-Instruct, Ollama's names for it.
    pub fn new(name: Option<&str>, reference: &str, model: &LoadedModel) -> Self {
        let path = std::path::Path::new(reference);
        let derived = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| reference.to_string());
        let primary = name.map(str::to_string).unwrap_or(derived);
        let mut all = vec![primary.clone(), reference.to_string()];
        if is_mistral_7b_instruct(model) {
            all.extend(["mistral:instruct", "mistral", "mistral:latest"].map(String::from));
        }
        all.dedup();
        Self { primary, all }
    }

    pub fn matches(&self, requested: &str) -> bool {
        self.all.iter().any(|n| n == requested)
    }
}

fn is_mistral_7b_instruct(model: &LoadedModel) -> bool {
    let c = model.config();
    let shape = ModelConfig::named("mistral-7b").expect("known shape");
    matches!(model.chat_template, ChatTemplate::MistralInstruct)
        && (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads)
            == (
                shape.hidden_size,
                shape.num_layers,
                shape.num_heads,
                shape.num_kv_heads,
            )
}
