//! The one place a model reference from the command line becomes files: a path (a GGUF file
//! or a safetensors directory), `random:<shape>[:<f32|f16|q8_0|q4_0>]`, a name in the
//! Ollama store (`mistral:instruct`, `hf.co/org/repo:Q4_0`), served from its blob in place, or
//! a safetensors repo pulled into the Hugging Face cache (`hf.co/org/repo`).

use anyhow::{bail, Context};
use ferrollama_model::weights::RandomDType;
use ferrollama_model::ModelSource;
use ferrollama_store::hugging_face::is_hugging_face;
use ferrollama_store::{HuggingFace, ModelName, Store};
use std::path::{Path, PathBuf};

/// The Mistral v3 tokenizer that random-weight models use (their vocabulary is Mistral's):
/// in the checkout the binary was built from, else in the current directory's (a binary
/// copied to another machine runs from a checkout there).
fn default_random_tokenizer() -> PathBuf {
    let in_repo = "models/fixtures/tiny-mistral/tokenizer.json";
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join(in_repo);
    if built_from.exists() {
        built_from
    } else {
        PathBuf::from(in_repo)
    }
}

pub fn resolve(reference: &str) -> anyhow::Result<ModelSource> {
    if let Some(spec) = reference.strip_prefix("random:") {
        let mut parts = spec.split(':');
        let shape = parts.next().unwrap_or_default().to_string();
        let dtype: RandomDType = match parts.next() {
            Some(d) => d.parse().map_err(anyhow::Error::msg)?,
            None => RandomDType::Q4_0,
        };
        if parts.next().is_some() {
            bail!("expected random:<shape>[:<dtype>], got `{reference}`");
        }
        return Ok(ModelSource::Random {
            shape,
            seed: 0,
            dtype,
            tokenizer: default_random_tokenizer(),
        });
    }
    let path = Path::new(reference);
    if path.exists() {
        return ModelSource::from_path(path).with_context(|| format!("cannot load `{reference}`"));
    }
    if let Some(name) = store_name(reference) {
        let store = Store::from_env();
        return match store.model_file(&name) {
            Ok(blob) => ModelSource::from_path(&blob)
                .with_context(|| format!("cannot load `{reference}` ({})", blob.display())),
            Err(_) if is_hugging_face(&name) => hugging_face(&name, &store),
            Err(e) => bail!(
                "{e} (store: {}); or give a GGUF file, a safetensors directory, or random:<shape>",
                store.root().display()
            ),
        };
    }
    bail!("model `{reference}` not found: give a GGUF file, a safetensors directory, a name in the Ollama store, or random:<shape>")
}

/// A Hugging Face name the store lacks: a safetensors snapshot in the HF cache, if pulled.
fn hugging_face(name: &ModelName, store: &Store) -> anyhow::Result<ModelSource> {
    let hub = HuggingFace::from_env();
    match hub.cached_snapshot(name) {
        Some(dir) => ModelSource::from_path(&dir)
            .with_context(|| format!("cannot load `{name}` ({})", dir.display())),
        None => bail!(
            "model \"{name}\" is neither in the store ({}) nor in the Hugging Face cache; \
             `ferrollama pull {name}` first",
            store.root().display()
        ),
    }
}

/// The store name `reference` means, when it is not a path on disk: `./x` and `/x` are
/// always paths.
pub fn store_name(reference: &str) -> Option<ModelName> {
    let is_path = Path::new(reference).exists() || reference.starts_with(['.', '/']);
    if is_path || reference.starts_with("random:") {
        return None;
    }
    ModelName::parse(reference).ok()
}
