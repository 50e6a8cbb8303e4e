//! Errors at the HTTP edge, in each API's own shape: OpenAI's
//! `{"error":{"message","type","param","code"}}` on /v1, Ollama's `{"error":"..."}` on /api.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollama_engine::EngineError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
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

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Stopped => ApiError::internal(e.to_string()),
            EngineError::Sampling(_) => ApiError::bad_request(e.to_string()),
            _ => ApiError::invalid("messages", e.to_string()),
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
        (e.status, Json(body)).into_response()
    }
}

pub struct OllamaError(pub ApiError);

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.0.status, Json(json!({"error": self.0.message}))).into_response()
    }
}
