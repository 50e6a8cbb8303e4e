//! The HTTP layer: OpenAI-compatible `/v1` (SSE streaming) and Ollama's `/api` (NDJSON
//! streaming) over one engine. Handlers parse and validate, render chat templates, tokenize,
//! and turn engine events into each API's shapes; they never touch tensors.
//!
//! Where things are: routes here; the serving core both APIs share (one typed ask, options →
//! sampling, prompt preparation, submission, typed outputs) in `serving/`, under the thin
//! protocol adapters `openai/` and `ollama/`; the model store's routes and
//! `/v1/models` in `models.rs`, which model is loaded
//! (and when it is unloaded) in `resident.rs`, model names in `names.rs`, error shapes in
//! `error.rs`; structured output in `structured.rs`, tools asked for in `tools.rs` and read
//! back in `tool_calls.rs`, vLLM's `/tokenize` in `tokenize.rs`; embeddings (both APIs, and
//! the embedding models loaded beside the generating one) in `embeddings/`.

pub mod clock;
mod embeddings;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod keep_alive;
mod metrics;
mod model_info;
mod models;
mod names;
mod ollama;
mod openai;
mod request_log;
mod resident;
mod serving;
mod state;
mod structured;
mod tokenize;
mod tool_calls;
mod tools;

pub use embeddings::encoders::Encoders;
pub use keep_alive::KeepAlive;
pub use metrics::Metrics;
pub use model_info::ModelInfo;
pub use names::ModelNames;
pub use resident::{Loaded, ModelLoader, Residents};
pub use state::{AppState, Limits};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use subtle::ConstantTimeEq;

/// Largest request body: long prompts fit, memory-exhausting ones do not.
pub const MAX_BODY_BYTES: usize = 8 << 20;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(ollama::root).head(ollama::root))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embeddings::openai::embeddings))
        .route("/api/embed", post(embeddings::ollama::embed))
        .route("/api/embeddings", post(embeddings::ollama::embeddings))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*id}", get(models::get_model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/pull", post(models::pull))
        .route("/api/delete", axum::routing::delete(models::delete))
        .route("/api/copy", post(models::copy))
        .route("/api/version", get(ollama::version))
        .route("/ferrollama/stats", get(stats))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_draining,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_store_changes,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The loaded engine's state (running and waiting sequences, KV blocks): for tests and
/// operators. All zero while no model is loaded.
async fn stats(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let s = state
        .residents
        .running()
        .map(|r| r.loaded.engine.stats())
        .unwrap_or_default();
    axum::Json(serde_json::json!({
        "running": s.running, "waiting": s.waiting, "free_blocks": s.free_blocks,
        "total_blocks": s.total_blocks, "preemptions": s.preemptions, "steps": s.steps,
    }))
}

/// Prometheus's text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let engine = state.residents.running().map(|r| r.loaded.engine.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(engine),
    )
        .into_response()
}

/// Counts every answered request by its route (the pattern, not the path: ids stay out of
/// label values) and status.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.request(&route, response.status().as_u16());
    response
}

/// Liveness: the process answers.
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 when requests can be served now; 503 while a model loads, the server
/// drains for shutdown, or the loaded model's engine thread has died.
async fn ready(State(state): State<AppState>) -> Response {
    let (status, why) = if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.residents.is_loading() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    } else if state
        .residents
        .running()
        .is_some_and(|r| !r.loaded.engine.is_alive())
    {
        (StatusCode::SERVICE_UNAVAILABLE, "engine stopped")
    } else {
        (StatusCode::OK, "ready")
    };
    (status, axum::Json(serde_json::json!({ "status": why }))).into_response()
}

/// Once shutdown begins, new work is refused (503, in the API's shape) while running
/// requests finish; health and readiness still answer.
async fn refuse_while_draining(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if state.is_draining() && !matches!(path, "/health" | "/ready" | "/") {
        let error = ApiError::unavailable("the server is shutting down");
        return if path.starts_with("/v1") {
            error.openai().into_response()
        } else {
            error.ollama().into_response()
        };
    }
    next.run(request).await
}

async fn not_found(request: Request) -> Response {
    let message = format!("no route for {} {}", request.method(), request.uri().path());
    let error = ApiError {
        status: StatusCode::NOT_FOUND,
        message,
        param: None,
    };
    if request.uri().path().starts_with("/v1") {
        error.openai().into_response()
    } else {
        error.ollama().into_response()
    }
}

/// Ollama's endpoints that change the store.
const STORE_CHANGES: [&str; 5] = [
    "/api/pull",
    "/api/delete",
    "/api/copy",
    "/api/create",
    "/api/push",
];

/// With `--read-only`, the endpoints that change the store answer 403, with or without a key.
async fn refuse_store_changes(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if state.read_only && (STORE_CHANGES.contains(&path) || path.starts_with("/api/blobs/")) {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!("{path} is refused: this server is read-only (--read-only)"),
            param: None,
        }
        .ollama()
        .into_response();
    }
    next.run(request).await
}

/// With an API key configured, every request needs `Authorization: Bearer <key>`. Without
/// one, any header is accepted (the AI Gateway sends `Bearer None`).
async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time: how long a wrong key takes says nothing about the key.
        let matches = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(key.as_bytes())));
        if !matches {
            let error = ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong API key".into(),
                param: None,
            };
            return if request.uri().path().starts_with("/v1") {
                error.openai().into_response()
            } else {
                error.ollama().into_response()
            };
        }
    }
    next.run(request).await
}
