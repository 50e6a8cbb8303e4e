//! The OpenAI-compatible surface: /v1/chat/completions and /v1/completions (/v1/models is
//! `models.rs`).

use crate::error::{parse, ApiError, OpenAiError};
use crate::generation::{collect, finish_reason, submit_all, Merged, HEARTBEAT};
use crate::resident::Loaded;
use crate::state::{AppState, Limits};
use crate::structured::OutputFormat;
use crate::tool_calls::{Piece, ToolCallReader};
use crate::tools::Tools;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollama_engine::{Event, GenerationRequest, Grammar, SamplingParams, Usage};
use ferrollama_model::{ChatMessage, Role, ToolCall};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Parameters shared by chat and text completions.
#[derive(Deserialize)]
struct Params {
    model: String,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<i64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    #[allow(dead_code)]
    user: Option<String>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    #[serde(default)]
    ignore_eos: bool,
    /// Speculative decoding for this request (`false` turns it off where the server has it on).
    speculative: Option<bool>,
    /// Structured output (`text`, `json_object`, `json_schema`).
    response_format: Option<Value>,
    /// Functions the model may call, and whether or which it must.
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    // Known fields that we do not honour (yet): a value that asks for them is refused by name
    // rather than silently ignored.
    logprobs: Option<bool>,
    top_logprobs: Option<Value>,
    logit_bias: Option<Map<String, Value>>,
    functions: Option<Vec<Value>>,
    function_call: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(flatten)]
    params: Params,
    messages: Vec<Message>,
}

#[derive(Deserialize)]
pub(crate) struct Message {
    role: String,
    content: Option<Content>,
    /// An assistant message's calls.
    tool_calls: Option<Vec<MessageToolCall>>,
    /// The call a tool message answers.
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageToolCall {
    id: Option<String>,
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    /// JSON text, as OpenAI sends it (some clients send the object itself).
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(flatten)]
    params: Params,
    prompt: Prompt,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

const MAX_STOPS: usize = 32;
const MAX_STOP_LEN: usize = 1024;

struct Plan {
    sampling: SamplingParams,
    max_tokens: Option<usize>,
    n: usize,
    stop: Vec<String>,
    ignore_eos: bool,
    speculative: Option<bool>,
    format: Option<OutputFormat>,
    tools: Option<Tools>,
}

impl Params {
    /// Validates and maps to engine parameters. Missing values take OpenAI's defaults
    /// (temperature 1, top_p 1, no top_k or repeat penalty).
    /// The request's choices; `defaults` (the model's Ollama options) fill what it leaves
    /// unset, as Ollama does for its OpenAI endpoints.
    fn plan(&self, defaults: &Map<String, Value>, limits: &Limits) -> Result<Plan, ApiError> {
        self.refuse_unhonoured()?;
        let format = match &self.response_format {
            None => None,
            Some(value) => OutputFormat::from_openai(value)?,
        };
        let tools = Tools::parse(
            self.tools.as_deref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
        )?;
        let default = |key: &str| defaults.get(key).and_then(Value::as_f64).map(|v| v as f32);
        let n = self.n.unwrap_or(1);
        let most = limits.max_choices as i64;
        if !(1..=most).contains(&n) {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {most}, got {n}"),
            ));
        }
        let num_predict = defaults
            .get("num_predict")
            .and_then(Value::as_i64)
            .filter(|&n| n > 0);
        let asked = match self
            .max_completion_tokens
            .or(self.max_tokens)
            .or(num_predict)
        {
            None => None,
            Some(m) if m >= 1 => Some(m as usize),
            Some(m) => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {m}"),
                ))
            }
        };
        let max_tokens = limits.max_tokens(asked, "max_tokens")?;
        let temperature = self.temperature.or(default("temperature")).unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.or(default("top_p")).unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = match self.top_k.or(defaults.get("top_k").and_then(Value::as_i64)) {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("top_k must be positive, got {k}"),
                ))
            }
        };
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = value {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::invalid(
                        name,
                        format!("{name} must be between -2 and 2, got {v}"),
                    ));
                }
            }
        }
        let stop = match &self.stop {
            None => defaults
                .get("stop")
                .and_then(|s| serde_json::from_value::<Vec<String>>(s.clone()).ok())
                .unwrap_or_default(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_LEN) {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {MAX_STOPS} stop strings of {MAX_STOP_LEN} bytes"),
            ));
        }
        let sampling = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p: self.min_p.or(default("min_p")).unwrap_or(0.0),
            repeat_penalty: self
                .repeat_penalty
                .or(default("repeat_penalty"))
                .unwrap_or(1.0),
            repeat_last_n: 64,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed,
        };
        sampling.validate().map_err(ApiError::bad_request)?;
        Ok(Plan {
            sampling,
            max_tokens,
            n: n as usize,
            stop,
            ignore_eos: self.ignore_eos,
            speculative: self.speculative,
            format,
            tools,
        })
    }

    /// OpenAI fields whose asked-for behaviour this server does not have: a 400 naming the
    /// field, never silence. Their off values (`logprobs: false`, `functions: []`,
    /// `function_call: "none"`) pass.
    fn refuse_unhonoured(&self) -> Result<(), ApiError> {
        let not_supported = |param: &'static str, what: &str| {
            Err(ApiError::invalid(
                param,
                format!("{param}: {what} is not supported by this server"),
            ))
        };
        if self.logprobs == Some(true) {
            return not_supported("logprobs", "returning log probabilities");
        }
        if self
            .top_logprobs
            .as_ref()
            .is_some_and(|v| v != &Value::from(0))
        {
            return not_supported("top_logprobs", "returning log probabilities");
        }
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return not_supported("logit_bias", "biasing tokens");
        }
        if self.functions.as_ref().is_some_and(|f| !f.is_empty()) {
            return not_supported("functions", "the deprecated `functions` (use `tools`)");
        }
        if self
            .function_call
            .as_ref()
            .is_some_and(|v| v != "none" && v != "auto")
        {
            return not_supported(
                "function_call",
                "the deprecated `function_call` (use `tool_choice`)",
            );
        }
        Ok(())
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// What a chat runs on: its prompt, the grammar it decodes under, and the reader of its
/// calls.
type ChatInput = (Vec<u32>, Option<Grammar>, Option<ToolCallReader>);

impl Plan {
    /// The structured-output grammar for `loaded`, when the request asks for one.
    fn grammar(&self, loaded: &Loaded) -> Result<Option<Grammar>, ApiError> {
        self.format
            .as_ref()
            .map(|f| f.grammar(loaded, "response_format"))
            .transpose()
    }

    /// A chat's prompt, grammar and call reader: with tools, in the format of `loaded`'s
    /// template, which must have one.
    fn chat(&self, loaded: &Loaded, messages: &[ChatMessage]) -> Result<ChatInput, ApiError> {
        let (model, tokenizer) = (&loaded.model, &loaded.model.tokenizer);
        let Some(tools) = &self.tools else {
            let prompt = model.chat_template.encode(tokenizer, messages)?;
            return Ok((prompt, self.grammar(loaded)?, None));
        };
        let syntax = Tools::syntax(loaded)?;
        let prompt =
            model
                .chat_template
                .encode_with_tools(tokenizer, messages, &tools.functions)?;
        let text = self.format.as_ref().map(|f| (f, "response_format"));
        let grammar = tools.grammar(loaded, syntax, text)?;
        Ok((prompt, Some(grammar), tools.reader(syntax)))
    }

    /// One engine request per choice; `choice` seeds differ so n samples differ.
    fn request(
        &self,
        prompt: Vec<u32>,
        context: usize,
        choice: usize,
        grammar: &Option<Grammar>,
    ) -> GenerationRequest {
        let room = context.saturating_sub(prompt.len());
        let mut sampling = self.sampling.clone();
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(choice as u64));
        GenerationRequest {
            max_tokens: self.max_tokens.unwrap_or(room).max(1),
            prompt,
            sampling,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            grammar: grammar.clone(),
            speculative: self.speculative,
        }
    }
}

pub(crate) fn chat_messages(messages: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    messages
        .iter()
        .map(|m| {
            let role: Role = m.role.parse().map_err(|_| {
                ApiError::invalid(
                    "messages",
                    format!("unknown role `{}` (system, user, assistant, tool)", m.role),
                )
            })?;
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!("unsupported content part `{kind}`"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            let mut message = ChatMessage::new(role, content);
            message.tool_call_id = m.tool_call_id.clone();
            message.tool_calls = m
                .tool_calls
                .iter()
                .flatten()
                .map(|c| ToolCall {
                    id: c.id.clone(),
                    name: c.function.name.clone(),
                    arguments: ToolCall::arguments_from_json(&c.function.arguments),
                })
                .collect();
            Ok(message)
        })
        .collect()
}

/// A call as OpenAI writes it in a message (its arguments as JSON text).
fn openai_call(call: &ToolCall) -> Value {
    json!({"id": call.id, "type": "function",
           "function": {"name": call.name, "arguments": call.arguments.to_string()}})
}

/// OpenAI's finish reason, `tool_calls` when the model called.
fn chat_finish_reason(reason: ferrollama_engine::FinishReason, called: bool) -> &'static str {
    match (reason, called) {
        (ferrollama_engine::FinishReason::Stop, true) => "tool_calls",
        _ => finish_reason(reason),
    }
}

/// What a body goes through before any model is involved: parsing and validation (the fuzz
/// targets' entry point, through `crate::fuzzing`).
pub(crate) fn check_bodies(data: &[u8]) {
    if let Ok(body) = parse::<ChatBody>(data) {
        let _ = body.params.plan(&Map::new(), &Limits::default());
        let _ = chat_messages(&body.messages);
    }
    if let Ok(body) = parse::<CompletionBody>(data) {
        let _ = body.params.plan(&Map::new(), &Limits::default());
    }
}

pub async fn chat_completions(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    chat(state, body).await.map_err(ApiError::openai)
}

async fn chat(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let body: ChatBody = parse(&body)?;
    body.params.plan(&Map::new(), &state.limits)?; // a bad request loads nothing
    let messages = chat_messages(&body.messages)?;
    let lease = state.model(&body.params.model, None).await?;
    let loaded = lease.loaded().clone();
    let plan = body.params.plan(&loaded.defaults, &state.limits)?;
    let (prompt, grammar, reader) = plan.chat(&loaded, &messages)?;
    loaded.check_context(prompt.len())?;
    let requests = (0..plan.n)
        .map(|i| plan.request(prompt.clone(), loaded.context(), i, &grammar))
        .collect();
    drop(loaded);
    let log = state.request_log("/v1/chat/completions", &body.params.model, || {
        crate::request_log::transcript(&messages)
    });
    let merged = submit_all(&state, lease, requests, plan.n, log)?;
    let meta = ResponseMeta::new("chat.completion", &body.params.model);
    if body.params.stream {
        let shape = StreamShape {
            choices: plan.n,
            per_prompt: plan.n,
            include_usage: body.params.include_usage(),
            chat: true,
        };
        return Ok(stream(merged, shape, meta, reader));
    }
    let results = collect(merged, plan.n, reader.as_ref()).await?;
    let choices: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut message = json!({"role": "assistant", "content": r.text});
            if !r.calls.is_empty() {
                let calls: Vec<Value> = r.calls.iter().map(openai_call).collect();
                message["tool_calls"] = json!(calls);
                if r.text.is_empty() {
                    message["content"] = Value::Null;
                }
            }
            json!({"index": i, "message": message, "logprobs": null,
                   "finish_reason": chat_finish_reason(r.reason, !r.calls.is_empty())})
        })
        .collect();
    let usage = usage_json(results.iter().map(|r| &r.usage), plan.n);
    Ok(Json(meta.body(json!(choices), Some(usage))).into_response())
}

pub async fn completions(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    complete(state, body).await.map_err(ApiError::openai)
}

async fn complete(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let body: CompletionBody = parse(&body)?;
    body.params.plan(&Map::new(), &state.limits)?; // a bad request loads nothing
    if body.params.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid(
            "tools",
            "tools: tool calls need a chat (/v1/chat/completions)",
        ));
    }
    let lease = state.model(&body.params.model, None).await?;
    let loaded = lease.loaded().clone();
    let plan = body.params.plan(&loaded.defaults, &state.limits)?;
    let tokenizer = &loaded.model.tokenizer;
    let prompts: Vec<Vec<u32>> = match &body.prompt {
        Prompt::Text(t) => vec![tokenizer.encode_prompt(t)?],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| tokenizer.encode_prompt(t))
            .collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(lists) => lists.clone(),
    };
    if prompts.is_empty() || prompts.len() > 32 {
        return Err(ApiError::invalid("prompt", "give between 1 and 32 prompts"));
    }
    let vocab = loaded.model.config().vocab_size;
    for p in &prompts {
        if p.iter().any(|&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                "prompt",
                format!("token ids must be below {vocab}"),
            ));
        }
        loaded.check_context(p.len())?;
    }
    // Choice i*n + j is the j-th sample of prompt i.
    let grammar = plan.grammar(&loaded)?;
    let requests: Vec<_> = prompts
        .iter()
        .flat_map(|p| (0..plan.n).map(|j| plan.request(p.clone(), loaded.context(), j, &grammar)))
        .collect();
    let choices = requests.len();
    drop(loaded);
    let log = state.request_log("/v1/completions", &body.params.model, || {
        match &body.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Texts(ts) => ts.join("\n---\n"),
            Prompt::Tokens(_) | Prompt::TokenLists(_) => format!("{} token prompts", prompts.len()),
        }
    });
    let merged = submit_all(&state, lease, requests, plan.n, log)?;
    let meta = ResponseMeta::new("text_completion", &body.params.model);
    if body.params.stream {
        let shape = StreamShape {
            choices,
            per_prompt: plan.n,
            include_usage: body.params.include_usage(),
            chat: false,
        };
        return Ok(stream(merged, shape, meta, None));
    }
    let results = collect(merged, choices, None).await?;
    let choices: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"index": i, "text": r.text, "logprobs": null, "finish_reason": finish_reason(r.reason)}))
        .collect();
    let usage = usage_json(results.iter().map(|r| &r.usage), plan.n);
    Ok(Json(meta.body(json!(choices), Some(usage))).into_response())
}

struct ResponseMeta {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
}

impl ResponseMeta {
    fn new(object: &'static str, model: &str) -> Self {
        let created = crate::clock::unix_now();
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = if object == "chat.completion" {
            "chatcmpl"
        } else {
            "cmpl"
        };
        Self {
            id: format!("{prefix}-{created:x}{n:08x}"),
            object,
            created,
            model: model.to_string(),
        }
    }

    fn body(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut body = json!({"id": self.id, "object": self.object, "created": self.created,
                              "model": self.model, "system_fingerprint": null, "choices": choices});
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        body
    }
}

/// Usage over all choices. Choices come in groups of `per_prompt` samples of one prompt
/// (OpenAI's `n`): a prompt counts once per group, generated tokens once per choice.
/// Speculative drafts count as OpenAI's predicted-output tokens: accepted and rejected.
fn usage_json<'a>(usages: impl Iterator<Item = &'a Usage>, per_prompt: usize) -> Value {
    let (mut prompt, mut cached, mut generated) = (0, 0, 0);
    let (mut drafted, mut accepted) = (0, 0);
    for (i, u) in usages.enumerate() {
        if i % per_prompt.max(1) == 0 {
            prompt += u.prompt_tokens;
            cached += u.cached_tokens;
        }
        generated += u.generated_tokens;
        drafted += u.drafted_tokens;
        accepted += u.accepted_tokens;
    }
    json!({"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated,
           "prompt_tokens_details": {"cached_tokens": cached},
           "completion_tokens_details": {"accepted_prediction_tokens": accepted,
                                         "rejected_prediction_tokens": drafted - accepted}})
}

/// What a stream carries: how many choices (in groups of `per_prompt` samples of a prompt),
/// whether it ends with usage, and whether they are chat messages or completion texts.
struct StreamShape {
    choices: usize,
    per_prompt: usize,
    include_usage: bool,
    chat: bool,
}

/// Server-sent events: one chunk per token per choice (a call, once whole, is one chunk), a
/// last chunk with the finish reason, optionally a usage chunk, then `[DONE]`.
fn stream(
    merged: Merged,
    shape: StreamShape,
    meta: ResponseMeta,
    reader: Option<ToolCallReader>,
) -> Response {
    let StreamShape {
        choices,
        per_prompt,
        include_usage,
        chat,
    } = shape;
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut body = json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model,
                              "system_fingerprint": null, "choices": choices});
        if include_usage {
            body["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::default().data(body.to_string())
    };
    let delta = move |index: usize, text: Option<&str>, role: bool, finish: Option<&str>| {
        if chat {
            let mut d = json!({});
            if role {
                d["role"] = json!("assistant");
            }
            if let Some(t) = text {
                d["content"] = json!(t);
            }
            json!([{"index": index, "delta": d, "logprobs": null, "finish_reason": finish}])
        } else {
            json!([{"index": index, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}])
        }
    };
    // Bytes go out at once, before the prompt is read: each choice's role chunk (chat), or
    // an SSE comment (completions, which have no role chunk).
    let opening: Vec<SseEvent> = if chat {
        (0..choices)
            .map(|i| chunk(delta(i, Some(""), true, None), None))
            .collect()
    } else {
        vec![SseEvent::default().comment("")]
    };
    // A call streams as OpenAI's do: its id and name first, then its arguments' text.
    let call_delta = |index: usize, call: Value| {
        json!([{"index": index, "delta": {"tool_calls": [call]},
                "logprobs": null, "finish_reason": null}])
    };
    let mut usages: Vec<Option<Usage>> = vec![None; choices];
    let mut readers = vec![reader; choices];
    let mut calls_started = vec![0usize; choices];
    let mut calls_made = vec![0usize; choices];
    let events = UnboundedReceiverStream::new(merged).flat_map(move |(i, event)| {
        let mut out = Vec::new();
        let pieces = match (&event, &mut readers[i]) {
            (Event::Token { text, token_id }, Some(reader)) => reader.push(text, *token_id),
            (Event::Token { text, .. }, None) => vec![Piece::Text(text.clone())],
            (Event::Finished { .. }, Some(reader)) => reader.finish(),
            (Event::Finished { .. }, None) => Vec::new(),
        };
        for piece in pieces {
            match piece {
                Piece::Text(text) if text.is_empty() => {}
                Piece::Text(text) => out.push(chunk(delta(i, Some(&text), false, None), None)),
                Piece::CallStarted { id, name } => {
                    let call = json!({"index": calls_started[i], "id": id, "type": "function",
                                      "function": {"name": name, "arguments": ""}});
                    out.push(chunk(call_delta(i, call), None));
                    calls_started[i] += 1;
                }
                Piece::Arguments(text) => {
                    let call = json!({"index": calls_started[i].saturating_sub(1),
                                      "function": {"arguments": text}});
                    out.push(chunk(call_delta(i, call), None));
                }
                Piece::Call(_) => calls_made[i] += 1,
            }
        }
        match event {
            Event::Token { .. } => {}
            Event::Finished {
                reason,
                usage,
                error,
                ..
            } => {
                if let Some(error) = error {
                    out.push(SseEvent::default().data(
                        json!({"error": {"message": error, "type": "server_error"}}).to_string(),
                    ));
                }
                let reason = if chat {
                    chat_finish_reason(reason, calls_made[i] > 0)
                } else {
                    finish_reason(reason)
                };
                out.push(chunk(delta(i, None, false, Some(reason)), None));
                usages[i] = Some(usage);
                if usages.iter().all(Option::is_some) {
                    if include_usage {
                        let usage = usage_json(usages.iter().flatten(), per_prompt);
                        out.push(chunk(json!([]), Some(usage)));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                }
            }
        }
        stream::iter(out.into_iter().map(Ok::<_, Infallible>))
    });
    let events = stream::iter(opening.into_iter().map(Ok::<_, Infallible>)).chain(events);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response()
}
