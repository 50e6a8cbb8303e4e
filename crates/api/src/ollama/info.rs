//! Ollama's listing and description endpoints: /api/tags, /api/ps, /api/show,
//! /api/version and `GET /`.

use crate::clock;
use crate::error::{parse, ApiError, OllamaError};
use crate::model_info::ModelInfo;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Deserialize)]
struct ShowBody {
    #[serde(alias = "name")]
    model: String,
}

/// Every model in the store, then one served from a file, which the store does not hold.
pub async fn tags(State(state): State<AppState>) -> Result<Json<Value>, OllamaError> {
    let mut models = crate::models::store_models(&state)
        .await
        .map_err(ApiError::ollama)?;
    let outside: Vec<ModelInfo> = state
        .residents
        .loader()
        .listed()
        .into_iter()
        .filter(|info| !models.iter().any(|m| info.names.matches(&m.names.primary)))
        .collect();
    models.extend(outside);
    Ok(Json(
        json!({"models": models.iter().map(ModelInfo::tag).collect::<Vec<_>>()}),
    ))
}

/// The loaded model, with when it will be unloaded.
pub async fn ps(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .residents
        .running()
        .map(|running| {
            let info = &running.loaded.info;
            // Kept until the server stops: Ollama shows the far future (now + 2^63 ns).
            let expires_at = running.expires_at.unwrap_or_else(|| {
                std::time::SystemTime::now() + Duration::from_nanos(i64::MAX as u64)
            });
            let mut entry = info.tag();
            entry["expires_at"] = json!(clock::rfc3339(expires_at));
            entry["size_vram"] = json!(if info.on_gpu { info.size_bytes } else { 0 });
            entry
        })
        .into_iter()
        .chain(state.encoders.ps_entries())
        .collect();
    Json(json!({ "models": models }))
}

/// What Ollama's `show` says, without loading the model: from the loaded one or one listed
/// outside the store when the name is theirs, else from the store's GGUF header.
pub async fn show(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, OllamaError> {
    let body: ShowBody = parse(&body).map_err(ApiError::ollama)?;
    let known = state
        .residents
        .running()
        .map(|r| r.loaded.info.clone())
        .into_iter()
        .chain(state.residents.loader().listed())
        .find(|info| info.names.matches(&body.model))
        .or_else(|| state.encoders.info(&body.model));
    let info = match known {
        Some(info) => info,
        None => crate::models::store_info(&state, &body.model)
            .await
            .map_err(ApiError::ollama)?,
    };
    Ok(Json(json!({
        "modelfile": format!("FROM {}\n", info.names.primary),
        "parameters": info.parameters,
        "template": info.template,
        "details": info.details(),
        "model_info": info.model_info(),
        "capabilities": info.capabilities(),
        "modified_at": clock::rfc3339(info.modified),
    })))
}

pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

pub async fn root() -> &'static str {
    "Ollama is running"
}
