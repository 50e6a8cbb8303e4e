//! Errors at the HTTP edge, in each API's own shape: OpenAI's
//! `{"error":{"message","type","param","code"}}` on /v1, Ollama's `{"error":"..."}` on /api.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollama_engine::{EngineError, Field};
use serde_json::json;
use std::borrow::Cow;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field it is about (`temperature`, `prompt[1]`, `input[3]`).
    pub param: Option<Cow<'static, str>>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid(param: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            param: None,
        }
    }

    /// 503: the server cannot take the request now (a full queue, a shutdown); the response
    /// carries Retry-After.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            param: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            param: None,
        }
    }

    pub fn openai(self) -> OpenAiError {
        OpenAiError(self)
    }

    pub fn ollama(self) -> OllamaError {
        OllamaError(self)
    }
}

impl ApiError {
    /// An engine's refusal; `prompt` is the request's name for the prompt it is about (the
    /// serving core knows it: `messages`, `prompt`, `prompt[2]`), `max_tokens` its name for
    /// the token budget.
    pub fn engine(e: EngineError, prompt: String, max_tokens: &'static str) -> Self {
        let message = e.to_string();
        match e.field() {
            Some(Field::Prompt) => Self::invalid(prompt, message),
            Some(Field::MaxTokens) => Self::invalid(max_tokens, message),
            Some(Field::Sampling(name)) => Self::invalid(name, message),
            None if matches!(e, EngineError::QueueFull { .. }) => Self::unavailable(message),
            None => Self::internal(message),
        }
    }
}

impl From<ferrollama_model::ModelError> for ApiError {
    fn from(e: ferrollama_model::ModelError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

/// A request body as JSON; any failure (syntax, types, invalid UTF-8) is a 400.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

pub struct OpenAiError(pub ApiError);

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (kind, code) = match e.status {
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("model_not_found")),
            StatusCode::UNAUTHORIZED => ("authentication_error", Some("invalid_api_key")),
            s if s.is_server_error() => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        let body =
            json!({"error": {"message": e.message, "type": kind, "param": e.param, "code": code}});
        with_retry_after(e.status, (e.status, Json(body)).into_response())
    }
}

pub struct OllamaError(pub ApiError);

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let status = self.0.status;
        with_retry_after(
            status,
            (status, Json(json!({"error": self.0.message}))).into_response(),
        )
    }
}

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

fn with_retry_after(status: StatusCode, mut response: Response) -> Response {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS.into());
    }
    response
}
