//! Ollama's own API: /api/generate and /api/chat (NDJSON streaming by default) here; bodies
//! are read into the serving core's ask in `body.rs`, answers written in `format.rs`;
//! /api/tags, /api/show, /api/ps, /api/version and `GET /` in `info.rs`.

mod body;
mod format;
mod info;

pub use info::{ps, root, show, tags, version};

use crate::clock;
use crate::error::{parse, ApiError, OllamaError};
use crate::keep_alive::KeepAlive;
use crate::serving::{serve, Ask};
use crate::state::{AppState, Limits};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use body::{ChatBody, GenerateBody, LoadOnly};
use serde_json::json;

pub async fn generate(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let answer = async {
        let body: GenerateBody = parse(&body)?;
        respond(&state, body.ask()?, body.common.stream, false).await
    };
    answer.await.map_err(ApiError::ollama)
}

pub async fn chat(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let answer = async {
        let body: ChatBody = parse(&body)?;
        respond(&state, body.ask()?, body.common.stream, true).await
    };
    answer.await.map_err(ApiError::ollama)
}

/// Serves the ask (streamed unless `stream` is false), or loads its model.
async fn respond(
    state: &AppState,
    ask: Result<Ask, LoadOnly>,
    stream: Option<bool>,
    chat: bool,
) -> Result<Response, ApiError> {
    let ask = match ask {
        Ok(ask) => ask,
        Err(load) => return load_or_unload(state, load, chat).await,
    };
    let shape = format::Shape {
        model: ask.model.clone(),
        chat,
    };
    let served = serve(state, ask).await?;
    if stream.unwrap_or(true) {
        Ok(format::stream(served, shape))
    } else {
        format::whole(served, shape).await
    }
}

/// Ollama's answer to a request with nothing to generate: load the model, or with
/// `keep_alive: 0` unload it.
async fn load_or_unload(
    state: &AppState,
    load: LoadOnly,
    chat: bool,
) -> Result<Response, ApiError> {
    let reason = if load.keep_alive.is_some_and(KeepAlive::is_zero) {
        state.residents.expire(&load.model);
        "unload"
    } else {
        drop(state.model(&load.model, load.keep_alive).await?);
        "load"
    };
    let mut body = json!({"model": load.model, "created_at": clock::now_rfc3339(), "done": true, "done_reason": reason});
    if chat {
        body["message"] = json!({"role": "assistant", "content": ""});
    } else {
        body["response"] = json!("");
    }
    Ok(Json(body).into_response())
}

/// What a body goes through before any model is involved: parsing and validation (the fuzz
/// targets' entry point, through `crate::fuzzing`).
pub(crate) fn check_bodies(data: &[u8]) {
    let limits = Limits::default();
    let check = |ask: Result<Result<Ask, LoadOnly>, ApiError>| {
        if let Ok(Ok(ask)) = ask {
            let _ = ask.options.plan(ask.api, &limits, 2048);
        }
    };
    if let Ok(body) = parse::<GenerateBody>(data) {
        check(body.ask());
    }
    if let Ok(body) = parse::<ChatBody>(data) {
        check(body.ask());
    }
}
