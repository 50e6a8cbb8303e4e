//! `POST /v1/embeddings`, OpenAI's shape: `input` as a string, a list of strings, a list of
//! token ids or a list of such lists; `encoding_format` float or base64; `dimensions`.
//! Over-long inputs are refused unless the extra field `truncate` is true (vLLM's servers take
//! extra fields the same way).

use super::{embed, EmbedAsk, Inputs};
use crate::error::{parse, ApiError, OpenAiError};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Body {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    truncate: bool,
    /// OpenAI's end-user id: accepted and not used.
    #[serde(default, rename = "user")]
    _user: Option<String>,
}

pub async fn embeddings(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, OpenAiError> {
    answer(state, body).await.map_err(ApiError::openai)
}

async fn answer(state: AppState, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: Body = parse(&body)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be float or base64, got {other:?}"),
            ))
        }
    };
    let ask = EmbedAsk {
        model: body.model.clone(),
        inputs: inputs(body.input)?,
        truncate: body.truncate,
        dimensions: body.dimensions,
        keep_alive: None,
        field: "input",
        route: "/v1/embeddings",
    };
    let done = embed(&state, ask).await?;
    let data: Vec<Value> = done
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens},
    })))
}

/// OpenAI's four forms of `input`; anything else (mixed lists, nesting deeper, floats) is
/// refused, naming where.
fn inputs(input: Value) -> Result<Inputs, ApiError> {
    let shape = "input must be a string, a list of strings, a list of token ids, or a list of lists of token ids";
    let token = |v: &Value, at: &str| {
        v.as_i64().ok_or_else(|| {
            ApiError::invalid("input", format!("{at} is {v}, not a token id; {shape}"))
        })
    };
    match input {
        Value::String(s) => Ok(Inputs::Texts(vec![s])),
        Value::Array(items) => match items.first() {
            None => Ok(Inputs::Texts(Vec::new())),
            Some(Value::String(_)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    other => Err(ApiError::invalid(
                        "input",
                        format!("input[{i}] is {other}, not a string; {shape}"),
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Inputs::Texts),
            Some(Value::Number(_)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| token(v, &format!("input[{i}]")))
                .collect::<Result<_, _>>()
                .map(|ids| Inputs::Tokens(vec![ids])),
            Some(Value::Array(_)) => items
                .iter()
                .enumerate()
                .map(|(i, list)| match list {
                    Value::Array(ids) => ids
                        .iter()
                        .enumerate()
                        .map(|(j, v)| token(v, &format!("input[{i}][{j}]")))
                        .collect(),
                    other => Err(ApiError::invalid(
                        "input",
                        format!("input[{i}] is {other}, not a list of token ids; {shape}"),
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Inputs::Tokens),
            Some(other) => Err(ApiError::invalid(
                "input",
                format!("input[0] is {other}; {shape}"),
            )),
        },
        other => Err(ApiError::invalid(
            "input",
            format!("input is {other}; {shape}"),
        )),
    }
}
