//! Ollama's own API: /api/generate and /api/chat (NDJSON streaming by default), /api/tags,
//! /api/show, /api/ps, /api/version, and `GET /`.

use crate::clock;
use crate::error::{parse, ApiError, OllamaError};
use crate::generation::{collect, finish_reason, submit_all, Merged, HEARTBEAT};
use crate::keep_alive::KeepAlive;
use crate::model_info::ModelInfo;
use crate::request_log::RequestLog;
use crate::resident::Lease;
use crate::state::{AppState, Limits};
use crate::structured::OutputFormat;
use crate::tool_calls::{Piece, ToolCallReader};
use crate::tools::Tools;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollama_engine::{Event, GenerationRequest, SamplingParams, Timings, Usage};
use ferrollama_model::{ChatMessage, Role, ToolCall, ToolSyntax};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Duration;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Options {
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    num_predict: Option<i64>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<i64>,
    stop: Option<Vec<String>>,
    /// Speculative decoding for this request (ferrollama's own option; `false` turns it off).
    speculative: Option<bool>,
}

#[derive(Deserialize)]
struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    /// Ollama's options; the model's defaults fill what they leave unset.
    #[serde(default)]
    options: Map<String, Value>,
    /// Structured output: `"json"` or a JSON schema.
    #[serde(default)]
    format: Value,
    /// Known, not honoured: refused when non-empty.
    images: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessageBody>,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    /// Ollama's options; the model's defaults fill what they leave unset.
    #[serde(default)]
    options: Map<String, Value>,
    /// Structured output: `"json"` or a JSON schema.
    #[serde(default)]
    format: Value,
    /// Functions the model may call.
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct ChatMessageBody {
    role: String,
    #[serde(default)]
    content: String,
    /// Known, not honoured: refused when non-empty.
    images: Option<Vec<Value>>,
    /// An assistant message's calls (arguments as JSON objects; Ollama gives no ids).
    tool_calls: Option<Vec<OllamaToolCall>>,
    /// The call a tool message answers, from clients that send one.
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct OllamaToolCall {
    function: OllamaFunctionCall,
}

#[derive(Deserialize)]
struct OllamaFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// Ollama fields whose asked-for behaviour (`what`) this server does not have: a 400 naming
/// the field when the list is not empty.
fn refuse_unhonoured(
    param: &'static str,
    what: &str,
    values: Option<&Vec<Value>>,
) -> Result<(), ApiError> {
    match values {
        Some(v) if !v.is_empty() => Err(ApiError::invalid(
            param,
            format!("{param}: {what} not supported by this server"),
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
struct ShowBody {
    #[serde(alias = "name")]
    model: String,
}

impl Options {
    /// Ollama's defaults where the request says nothing.
    fn request(
        &self,
        prompt: Vec<u32>,
        context: usize,
        limits: &Limits,
    ) -> Result<GenerationRequest, ApiError> {
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.map_or(d.top_k, |k| k.max(0) as usize),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: self.repeat_last_n.map_or(d.repeat_last_n, |n| {
                if n < 0 {
                    context
                } else {
                    n as usize
                }
            }),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed.filter(|&s| s >= 0).map(|s| s as u64),
        };
        sampling.validate().map_err(ApiError::bad_request)?;
        let room = context.saturating_sub(prompt.len());
        // num_predict: -1 (or absent) means until the context ends (or the server's ceiling).
        let asked = self.num_predict.filter(|&n| n > 0).map(|n| n as usize);
        let max_tokens = limits.max_tokens(asked, "num_predict")?.unwrap_or(room);
        Ok(GenerationRequest {
            prompt,
            sampling,
            max_tokens: max_tokens.max(1),
            stop: self.stop.clone().unwrap_or_default(),
            ignore_eos: false,
            grammar: None,
            speculative: self.speculative,
        })
    }
}

fn final_fields(load_duration: Duration, usage: &Usage, timings: &Timings, reason: &str) -> Value {
    let ns = |d: Duration| d.as_nanos() as u64;
    let mut fields = json!({
        "done": true,
        "done_reason": reason,
        "total_duration": ns(load_duration + timings.queue + timings.prefill + timings.decode),
        "load_duration": ns(load_duration),
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": ns(timings.prefill),
        "eval_count": usage.generated_tokens,
        "eval_duration": ns(timings.decode),
    });
    // Ollama has no speculation; ours says what it did, when it did anything.
    if usage.drafted_tokens > 0 {
        fields["draft_count"] = json!(usage.drafted_tokens);
        fields["draft_accepted_count"] = json!(usage.accepted_tokens);
    }
    fields
}

/// The request's options over the model's defaults (the catalog's, then its params layer).
fn options(defaults: &Map<String, Value>, given: &Map<String, Value>) -> Result<Options, ApiError> {
    let mut merged = defaults.clone();
    merged.extend(given.clone());
    serde_json::from_value(Value::Object(merged))
        .map_err(|e| ApiError::invalid("options", e.to_string()))
}

fn keep_alive(value: &Option<Value>) -> Result<Option<KeepAlive>, ApiError> {
    value
        .as_ref()
        .map(|v| {
            KeepAlive::from_json(v)
                .map_err(|e| ApiError::invalid("keep_alive", format!("keep_alive: {e}")))
        })
        .transpose()
}

/// Ollama's answer to a request with nothing to generate: load the model, or with
/// `keep_alive: 0` unload it.
async fn load_or_unload(
    state: &AppState,
    model: &str,
    keep_alive: Option<KeepAlive>,
    chat: bool,
) -> Result<Response, ApiError> {
    let reason = if keep_alive.is_some_and(KeepAlive::is_zero) {
        state.residents.expire(model);
        "unload"
    } else {
        drop(state.model(model, keep_alive).await?);
        "load"
    };
    let mut body = json!({"model": model, "created_at": clock::now_rfc3339(), "done": true, "done_reason": reason});
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
    let defaults: Map<String, Value> = [("stop".to_string(), json!(["[INST]"]))]
        .into_iter()
        .collect();
    if let Ok(body) = parse::<GenerateBody>(data) {
        let _ = keep_alive(&body.keep_alive);
        if let Ok(o) = options(&defaults, &body.options) {
            let _ = o.request(vec![1; 8], 2048, &Limits::default());
        }
    }
    if let Ok(body) = parse::<ChatBody>(data) {
        let _ = keep_alive(&body.keep_alive);
        if let Ok(o) = options(&defaults, &body.options) {
            let _ = o.request(vec![1; 8], 2048, &Limits::default());
        }
        for m in &body.messages {
            let _ = m.role.parse::<Role>();
        }
    }
}

pub async fn generate(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    generate_inner(state, body).await.map_err(ApiError::ollama)
}

async fn generate_inner(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let body: GenerateBody = parse(&body)?;
    let keep_alive = keep_alive(&body.keep_alive)?;
    options(&Map::new(), &body.options)?; // a bad request loads nothing
    refuse_unhonoured("images", "images are", body.images.as_ref())?;
    let format = OutputFormat::from_ollama(&body.format)?;
    if body.prompt.is_empty() {
        return load_or_unload(&state, &body.model, keep_alive, false).await;
    }
    let lease = state.model(&body.model, keep_alive).await?;
    let loaded = lease.loaded().clone();
    let prompt = if body.raw {
        loaded.model.tokenizer.encode_prompt(&body.prompt)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &body.system {
            messages.push(ChatMessage::new(Role::System, system.clone()));
        }
        messages.push(ChatMessage::new(Role::User, body.prompt.clone()));
        loaded
            .model
            .chat_template
            .encode(&loaded.model.tokenizer, &messages)?
    };
    let log = state.request_log("/api/generate", &body.model, || {
        let system = body
            .system
            .as_deref()
            .map_or(String::new(), |s| format!("{s}\n"));
        format!("{system}{}", body.prompt)
    });
    drop(loaded);
    let ask = Ask {
        model: body.model,
        options: &body.options,
        format,
        tools: None,
        stream: body.stream,
        chat: false,
    };
    run(&state, lease, prompt, log, ask).await
}

pub async fn chat(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    chat_inner(state, body).await.map_err(ApiError::ollama)
}

async fn chat_inner(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let body: ChatBody = parse(&body)?;
    let keep_alive = keep_alive(&body.keep_alive)?;
    options(&Map::new(), &body.options)?; // a bad request loads nothing
                                          // Ollama's API cannot force a call; `options.tool_choice` (OpenAI's values) can, and
                                          // ollama-python passes options through.
    let tools = Tools::parse(body.tools.as_deref(), body.options.get("tool_choice"), None)?;
    for m in &body.messages {
        refuse_unhonoured("images", "images are", m.images.as_ref())?;
    }
    let format = OutputFormat::from_ollama(&body.format)?;
    if body.messages.is_empty() {
        return load_or_unload(&state, &body.model, keep_alive, true).await;
    }
    let messages = body
        .messages
        .iter()
        .map(|m| {
            let role = m
                .role
                .parse()
                .map_err(|_| ApiError::bad_request(format!("unknown role `{}`", m.role)))?;
            let mut message = ChatMessage::new(role, m.content.clone());
            message.tool_call_id = m.tool_call_id.clone();
            message.tool_calls = m
                .tool_calls
                .iter()
                .flatten()
                .map(|c| ToolCall {
                    id: None,
                    name: c.function.name.clone(),
                    arguments: ToolCall::arguments_from_json(&c.function.arguments),
                })
                .collect();
            Ok(message)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let lease = state.model(&body.model, keep_alive).await?;
    let loaded = lease.loaded().clone();
    let (template, tokenizer) = (&loaded.model.chat_template, &loaded.model.tokenizer);
    let tools = match tools {
        None => None,
        Some(tools) => Some((Tools::syntax(&loaded)?, tools)),
    };
    let offered = crate::tools::offered(tools.as_ref().map(|(_, t)| t));
    let prompt = template.encode_with_tools(tokenizer, &messages, offered)?;
    let log = state.request_log("/api/chat", &body.model, || {
        crate::request_log::transcript(&messages)
    });
    drop(loaded);
    let ask = Ask {
        model: body.model,
        options: &body.options,
        format,
        tools,
        stream: body.stream,
        chat: true,
    };
    run(&state, lease, prompt, log, ask).await
}

/// What an /api/generate or /api/chat request asks for besides its prompt.
struct Ask<'a> {
    model: String,
    options: &'a Map<String, Value>,
    format: Option<OutputFormat>,
    /// Tools offered, with how the model writes its calls.
    tools: Option<(ToolSyntax, Tools)>,
    stream: Option<bool>,
    /// Answer as /api/chat (a message) rather than /api/generate (a response).
    chat: bool,
}

/// What /api/generate and /api/chat share once the prompt is tokenized: it must fit, the
/// options go over the model's defaults, the output format becomes a grammar, and the
/// request is submitted and answered.
async fn run(
    state: &AppState,
    lease: Lease,
    prompt: Vec<u32>,
    log: RequestLog,
    ask: Ask<'_>,
) -> Result<Response, ApiError> {
    let loaded = lease.loaded().clone();
    loaded.check_context(prompt.len())?;
    let mut request =
        options(&loaded.defaults, ask.options)?.request(prompt, loaded.context(), &state.limits)?;
    let mut reader = None;
    request.grammar = match &ask.tools {
        Some((syntax, tools)) => {
            reader = tools.reader(*syntax);
            let text = ask.format.as_ref().map(|f| (f, "format"));
            Some(tools.grammar(&loaded, *syntax, text)?)
        }
        None => ask
            .format
            .map(|f| f.grammar(&loaded, "format"))
            .transpose()?,
    };
    let load_duration = lease.load_duration;
    drop(loaded);
    let merged = submit_all(state, lease, vec![request], 1, log)?;
    let stream = ask.stream.unwrap_or(true);
    respond(load_duration, merged, ask.model, stream, ask.chat, reader).await
}

/// Calls as Ollama writes them: arguments as JSON objects.
fn ollama_calls(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

/// One JSON object per token (NDJSON) with a final one carrying counts and timings, or one
/// object with everything when `stream` is false.
async fn respond(
    load_duration: Duration,
    merged: Merged,
    model: String,
    stream: bool,
    chat: bool,
    reader: Option<ToolCallReader>,
) -> Result<Response, ApiError> {
    let piece = move |text: &str| {
        if chat {
            json!({"message": {"role": "assistant", "content": text}})
        } else {
            json!({"response": text})
        }
    };
    if !stream {
        let result = collect(merged, 1, reader.as_ref()).await?.remove(0);
        let mut body = piece(&result.text);
        if !result.calls.is_empty() {
            body["message"]["tool_calls"] = ollama_calls(&result.calls);
        }
        merge(
            &mut body,
            json!({"model": model, "created_at": clock::now_rfc3339()}),
        );
        merge(
            &mut body,
            final_fields(
                load_duration,
                &result.usage,
                &result.timings,
                finish_reason(result.reason),
            ),
        );
        if !chat {
            body["context"] = json!([]);
        }
        return Ok(Json(body).into_response());
    }
    // A heartbeat is a space with no newline: one at once, then one per second of silence while
    // the prompt is read. Bytes flow (a client's read timeout never fires), yet no line is
    // made: the spaces lead the next JSON line, which every JSON parser reads past. An empty
    // JSON line would be a line of its own, and litellm's `ollama/` provider (1.53.1, the AI
    // Gateway's) fails on `{"response":"","done":false}`, as on a blank or space-only line.
    let start = tokio::time::Instant::now() + HEARTBEAT;
    let events = UnboundedReceiverStream::new(merged)
        .timeout_repeating(tokio::time::interval_at(start, HEARTBEAT))
        .map(|item| item.ok().map(|(_, event)| event));
    let mut reader = reader;
    let lines = tokio_stream::once(None)
        .chain(events)
        .filter_map(move |event| {
            let Some(event) = event else {
                return Some(Ok::<_, std::convert::Infallible>(" ".to_string()));
                // a heartbeat
            };
            let pieces = match (&event, &mut reader) {
                (Event::Token { text, token_id }, Some(reader)) => reader.push(text, *token_id),
                (Event::Token { text, .. }, None) if text.is_empty() => Vec::new(),
                (Event::Token { text, .. }, None) => vec![Piece::Text(text.clone())],
                (Event::Finished { .. }, Some(reader)) => reader.finish(),
                (Event::Finished { .. }, None) => Vec::new(),
            };
            // Ollama gives each call whole, once its object closes.
            let mut lines: Vec<Value> = pieces
                .into_iter()
                .filter(|p| p != &Piece::Text(String::new()))
                .filter_map(|p| {
                    let mut line = match p {
                        Piece::Text(text) => piece(&text),
                        Piece::Call(call) => {
                            let mut line = piece("");
                            line["message"]["tool_calls"] = ollama_calls(&[call]);
                            line
                        }
                        Piece::CallStarted { .. } | Piece::Arguments(_) => return None,
                    };
                    line["done"] = json!(false);
                    Some(line)
                })
                .collect();
            if let Event::Finished {
                reason,
                usage,
                timings,
                error,
            } = &event
            {
                if let Some(error) = error {
                    lines.push(json!({"error": error}));
                } else {
                    let mut line = piece("");
                    merge(
                        &mut line,
                        final_fields(load_duration, usage, timings, finish_reason(*reason)),
                    );
                    lines.push(line);
                }
            }
            // One chunk of NDJSON for the event: no line, or several (text, then a call).
            let chunk: String = lines
                .into_iter()
                .map(|mut line| {
                    if line.get("error").is_none() {
                        merge(
                            &mut line,
                            json!({"model": model, "created_at": clock::now_rfc3339()}),
                        );
                    }
                    format!("{line}\n")
                })
                .collect();
            (!chunk.is_empty()).then_some(Ok::<_, std::convert::Infallible>(chunk))
        });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
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
        .find(|info| info.names.matches(&body.model));
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
        "details": info.details,
        "model_info": info.model_info,
        "capabilities": capabilities(&info),
        "modified_at": clock::rfc3339(info.modified),
    })))
}

/// Ollama's capabilities: an encoder embeds; every other model completes, and one whose
/// template offers tools calls them.
fn capabilities(info: &ModelInfo) -> Value {
    if info.details["family"] == "bert" {
        json!(["embedding"])
    } else if info.tools {
        json!(["completion", "tools"])
    } else {
        json!(["completion"])
    }
}

pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

pub async fn root() -> &'static str {
    "Ollama is running"
}
