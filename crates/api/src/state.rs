//! What every handler shares: the resident model, the model store, and the API key.

use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::metrics::Metrics;
use crate::request_log::RequestLog;
use crate::resident::{Lease, Residents};
use ferrollama_store::{Puller, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    /// The loaded model, loading and unloading models as requests name them.
    pub residents: Arc<Residents>,
    /// Embedding models, loaded beside the generating one.
    pub encoders: Arc<crate::embeddings::encoders::Encoders>,
    /// Bearer token required on every request, if set.
    pub api_key: Option<Arc<str>>,
    /// Refuse every store-changing endpoint, whatever the key (read-only replicas).
    pub read_only: bool,
    /// The Ollama store that /api/tags lists and /api/pull, /api/delete, /api/copy change.
    pub store: Store,
    /// Pulls from the Ollama registry and the Hugging Face hub.
    pub puller: Puller,
    /// Set when shutdown begins: new requests get 503 while running ones finish.
    pub draining: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// `--log-prompts`: request log lines carry the prompt's text.
    pub log_prompts: bool,
    /// `--request-timeout`: how long one request may run.
    pub request_timeout: Option<std::time::Duration>,
    pub limits: Limits,
}

/// What one request may ask for, by configuration (`--max-tokens`, `--max-choices`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Ceiling on tokens generated per choice; without it, the context is the limit.
    pub max_tokens: Option<usize>,
    /// Most choices (OpenAI's `n`) per request.
    pub max_choices: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tokens: None,
            max_choices: 8,
        }
    }
}

impl Limits {
    /// A request's token budget under the ceiling: unasked, the ceiling; asked for more than
    /// it, refused (never quietly cut).
    pub fn max_tokens(
        &self,
        asked: Option<usize>,
        param: &'static str,
    ) -> Result<Option<usize>, ApiError> {
        match (asked, self.max_tokens) {
            (Some(n), Some(cap)) if n > cap => Err(ApiError::invalid(
                param,
                format!("{param} must be at most {cap} on this server (--max-tokens), got {n}"),
            )),
            (Some(n), _) => Ok(Some(n)),
            (None, cap) => Ok(cap),
        }
    }
}

impl AppState {
    /// A request's log line, with its prompt's text only under `--log-prompts`.
    pub fn request_log(
        &self,
        route: &'static str,
        model: &str,
        prompt: impl FnOnce() -> String,
    ) -> RequestLog {
        RequestLog::new(route, model, self.log_prompts.then(prompt))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The model a request names, loaded; the lease keeps it loaded until the request ends.
    pub async fn model(
        &self,
        requested: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, ApiError> {
        let lease = self.residents.acquire(requested, keep_alive).await?;
        if !lease.load_duration.is_zero() {
            self.metrics.model_loaded(lease.load_duration);
        }
        Ok(lease)
    }
}
