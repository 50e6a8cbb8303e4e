//! The OpenAI-compatible surface: /v1/chat/completions and /v1/completions (/v1/models is
//! `models.rs`, /v1/embeddings `embeddings/`). Bodies are read into the serving core's ask in
//! `body.rs`; what comes back is written in OpenAI's shapes in `format.rs`.

mod body;
mod format;

pub(crate) use body::{chat_messages, Message};

use crate::error::{parse, ApiError, OpenAiError};
use crate::serving::{collect, serve};
use crate::state::{AppState, Limits};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use body::{ChatBody, CompletionBody, Params};
use format::ResponseMeta;

pub async fn chat_completions(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let answer = async {
        let body: ChatBody = parse(&body)?;
        let ask = body.ask(&state.limits)?;
        respond(&state, ask, &body.params, true).await
    };
    answer.await.map_err(ApiError::openai)
}

pub async fn completions(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let answer = async {
        let body: CompletionBody = parse(&body)?;
        let ask = body.ask(&state.limits)?;
        respond(&state, ask, &body.params, false).await
    };
    answer.await.map_err(ApiError::openai)
}

/// Serves the ask and answers as a stream or a whole response.
async fn respond(
    state: &AppState,
    ask: crate::serving::Ask,
    params: &Params,
    chat: bool,
) -> Result<Response, ApiError> {
    let served = serve(state, ask).await?;
    let meta = ResponseMeta::new(chat, &params.model);
    if params.stream {
        return Ok(format::stream(served, meta, params.include_usage()));
    }
    let per_prompt = served.per_prompt;
    let results = collect(served.outputs, served.choices).await?;
    Ok(format::whole(&meta, &results, per_prompt))
}

/// What a body goes through before any model is involved: parsing and validation (the fuzz
/// targets' entry point, through `crate::fuzzing`).
pub(crate) fn check_bodies(data: &[u8]) {
    let limits = Limits::default();
    if let Ok(body) = parse::<ChatBody>(data) {
        if let Ok(ask) = body.ask(&limits) {
            let _ = ask.options.plan(ask.api, &limits, 2048);
        }
    }
    if let Ok(body) = parse::<CompletionBody>(data) {
        if let Ok(ask) = body.ask(&limits) {
            let _ = ask.options.plan(ask.api, &limits, 2048);
        }
    }
}
