//! Ollama's two embedding routes: `POST /api/embed` (`input` a string or a list of strings;
//! `truncate`, on by default; `dimensions`; `keep_alive`; answers `embeddings` with durations
//! and `prompt_eval_count`) and the older `POST /api/embeddings` (`prompt` → `embedding`).

use super::{EmbedAsk, Inputs};
use crate::error::{parse, ApiError, OllamaError};
use crate::keep_alive::KeepAlive;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct EmbedBody {
    model: String,
    input: Value,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    keep_alive: Option<Value>,
    /// Model options: an encoder has none that change its vectors; accepted, as Ollama does.
    #[serde(default, rename = "options")]
    _options: Option<Value>,
}

#[derive(Deserialize)]
struct LegacyBody {
    model: String,
    prompt: String,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default, rename = "options")]
    _options: Option<Value>,
}

pub async fn embed_route(state: AppState, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: EmbedBody = parse(&body)?;
    let inputs = match body.input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(ApiError::invalid(
                    "input",
                    format!("input[{i}] is {other}, not a string"),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(ApiError::invalid(
                "input",
                format!("input must be a string or a list of strings, got {other}"),
            ))
        }
    };
    let ask = EmbedAsk {
        model: body.model.clone(),
        inputs: Inputs::Texts(inputs),
        truncate: body.truncate.unwrap_or(true),
        dimensions: body.dimensions,
        keep_alive: keep_alive(body.keep_alive.as_ref())?,
        field: "input",
        route: "/api/embed",
    };
    let done = super::embed(&state, ask).await?;
    Ok(Json(json!({
        "model": body.model,
        "embeddings": done.vectors,
        "total_duration": done.total_duration.as_nanos() as u64,
        "load_duration": done.load_duration.as_nanos() as u64,
        "prompt_eval_count": done.prompt_tokens,
    })))
}

pub async fn embed(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, OllamaError> {
    embed_route(state, body).await.map_err(ApiError::ollama)
}

pub async fn embeddings(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, OllamaError> {
    legacy(state, body).await.map_err(ApiError::ollama)
}

async fn legacy(state: AppState, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: LegacyBody = parse(&body)?;
    let ask = EmbedAsk {
        model: body.model,
        inputs: Inputs::Texts(vec![body.prompt]),
        truncate: true,
        dimensions: None,
        keep_alive: keep_alive(body.keep_alive.as_ref())?,
        field: "prompt",
        route: "/api/embeddings",
    };
    let mut done = super::embed(&state, ask).await?;
    Ok(Json(
        json!({"embedding": done.vectors.pop().unwrap_or_default()}),
    ))
}

fn keep_alive(value: Option<&Value>) -> Result<Option<KeepAlive>, ApiError> {
    value
        .map(KeepAlive::from_json)
        .transpose()
        .map_err(|e| ApiError::invalid("keep_alive", format!("keep_alive: {e}")))
}
