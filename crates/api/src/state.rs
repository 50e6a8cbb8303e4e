//! What every handler shares: the engine, the loaded model and its names.

use crate::error::ApiError;
use crate::names::ModelNames;
use ferrollama_engine::EngineHandle;
use ferrollama_model::LoadedModel;
use ferrollama_store::{Registry, Store};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub model: Arc<LoadedModel>,
    pub names: Arc<ModelNames>,
    /// Unix seconds when the model was loaded.
    pub created: u64,
    pub load_duration: Duration,
    /// Size of the weights on disk, for /api/tags.
    pub size_bytes: u64,
    /// Bearer token required on every request, if set.
    pub api_key: Option<Arc<str>>,
    /// The served model's digest (hex): its manifest's sha256 when it came from the store.
    pub digest: String,
    /// When its files last changed, for /api/tags.
    pub modified: std::time::SystemTime,
    /// Its quantization as Ollama names it (`Q4_0`, `Q4_K_M`, `F16`).
    pub quantization: String,
    /// The Ollama store that /api/tags lists and /api/pull, /api/delete, /api/copy change.
    pub store: Store,
    pub registry: Registry,
}

impl AppState {
    pub fn check_model(&self, requested: &str) -> Result<(), ApiError> {
        if self.names.matches(requested) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "model \"{requested}\" not found, try pulling it first"
            )))
        }
    }

    pub fn context(&self) -> usize {
        self.engine.context_len()
    }

    /// A prompt that alone exceeds the context is refused, never truncated.
    pub fn check_context(&self, prompt_tokens: usize) -> Result<(), ApiError> {
        let context = self.context();
        if prompt_tokens >= context {
            return Err(ApiError::invalid(
                "messages",
                format!("the prompt has {prompt_tokens} tokens, but the model's context holds {context}; shorten it"),
            ));
        }
        Ok(())
    }
}
