//! vLLM's /tokenize and /detokenize: the ids a prompt, or a chat with its tools, becomes as
//! generation would read it, and the text of ids.

use crate::error::{parse, ApiError, OpenAiError};
use crate::openai::{chat_messages, Message};
use crate::state::AppState;
use crate::tools::Tools;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct TokenizeBody {
    model: String,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    tools: Option<Vec<Value>>,
}

/// vLLM's `/tokenize`: the ids a prompt, or a chat with its tools, becomes, exactly as
/// generation would read it.
pub async fn tokenize(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, OpenAiError> {
    tokenize_inner(state, body).await.map_err(ApiError::openai)
}

async fn tokenize_inner(state: AppState, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: TokenizeBody = parse(&body)?;
    let tools = Tools::parse(body.tools.as_deref(), None, None)?;
    let lease = state.model(&body.model, None).await?;
    let loaded = lease.loaded();
    let (template, tokenizer) = (&loaded.model.chat_template, &loaded.model.tokenizer);
    let tokens = match (&body.prompt, &body.messages) {
        (Some(prompt), None) => tokenizer.encode_prompt(prompt)?,
        (None, Some(messages)) => {
            let offered = crate::tools::offered(tools.as_ref());
            if !offered.is_empty() {
                Tools::syntax(loaded)?;
            }
            template.encode_with_tools(tokenizer, &chat_messages(messages)?, offered)?
        }
        _ => return Err(ApiError::bad_request("give either `prompt` or `messages`")),
    };
    Ok(Json(
        json!({"count": tokens.len(), "max_model_len": loaded.context(), "tokens": tokens}),
    ))
}

#[derive(Deserialize)]
struct DetokenizeBody {
    model: String,
    tokens: Vec<u32>,
}

/// vLLM's `/detokenize`: the text of token ids (special tokens left out).
pub async fn detokenize(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, OpenAiError> {
    async {
        let body: DetokenizeBody = parse(&body)?;
        let lease = state.model(&body.model, None).await?;
        let loaded = lease.loaded();
        let vocab = loaded.model.config().vocab_size;
        if body.tokens.iter().any(|&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                "tokens",
                format!("token ids must be below {vocab}"),
            ));
        }
        Ok(Json(
            json!({"prompt": loaded.model.tokenizer.decode(&body.tokens)?}),
        ))
    }
    .await
    .map_err(ApiError::openai)
}
