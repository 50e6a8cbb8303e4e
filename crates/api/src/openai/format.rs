//! OpenAI's response shapes: whole responses, and server-sent event streams of chunks.

use crate::serving::{Finished, Output, Served, HEARTBEAT};
use crate::tool_calls::Piece;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollama_engine::Usage;
use ferrollama_model::ToolCall;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::convert::Infallible;

/// What every response and chunk of one request carries.
pub struct ResponseMeta {
    id: String,
    /// Chat messages, or completion texts.
    chat: bool,
    created: u64,
    model: String,
}

impl ResponseMeta {
    pub fn new(chat: bool, model: &str) -> Self {
        let created = crate::clock::unix_now();
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = if chat { "chatcmpl" } else { "cmpl" };
        Self {
            id: format!("{prefix}-{created:x}{n:08x}"),
            chat,
            created,
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    fn body(&self, chunk: bool, choices: Value) -> Value {
        json!({"id": self.id, "object": self.object(chunk), "created": self.created,
               "model": self.model, "system_fingerprint": null, "choices": choices})
    }
}

/// A whole response: every choice's message (chat) or text, and usage.
pub fn whole(meta: &ResponseMeta, results: &[Finished], per_prompt: usize) -> Response {
    let choices: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if !meta.chat {
                return json!({"index": i, "text": r.text, "logprobs": null,
                              "finish_reason": r.end.reason_name()});
            }
            let mut message = json!({"role": "assistant", "content": r.text});
            if !r.calls.is_empty() {
                let calls: Vec<Value> = r.calls.iter().map(openai_call).collect();
                message["tool_calls"] = json!(calls);
                if r.text.is_empty() {
                    message["content"] = Value::Null;
                }
            }
            json!({"index": i, "message": message, "logprobs": null,
                   "finish_reason": r.end.chat_reason_name()})
        })
        .collect();
    let mut body = meta.body(false, json!(choices));
    body["usage"] = usage_json(results.iter().map(|r| &r.end.usage), per_prompt);
    Json(body).into_response()
}

/// A call as OpenAI writes it in a message (its arguments as JSON text).
fn openai_call(call: &ToolCall) -> Value {
    json!({"id": call.id, "type": "function",
           "function": {"name": call.name, "arguments": call.arguments.to_string()}})
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

/// Server-sent events: one chunk per token per choice (a call streams as OpenAI's do: its id
/// and name, then its arguments' text), a last chunk with the finish reason, optionally a
/// usage chunk, then `[DONE]`.
pub fn stream(served: Served, meta: ResponseMeta, include_usage: bool) -> Response {
    let Served {
        outputs,
        choices,
        per_prompt,
        ..
    } = served;
    let chat = meta.chat;
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut body = meta.body(true, choices);
        if include_usage {
            body["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::default().data(body.to_string())
    };
    // Bytes go out at once, before the prompt is read: each choice's role chunk (chat), or
    // an SSE comment (completions, which have no role chunk).
    let opening: Vec<SseEvent> = if chat {
        (0..choices)
            .map(|i| {
                chunk(
                    delta(chat, i, json!({"role": "assistant", "content": ""}), None),
                    None,
                )
            })
            .collect()
    } else {
        vec![SseEvent::default().comment("")]
    };
    let mut usages: Vec<Option<Usage>> = vec![None; choices];
    let mut calls_started = vec![0usize; choices];
    let events = outputs.flat_map(move |(i, output)| {
        let mut out = Vec::new();
        match output {
            Output::Piece(Piece::Text(text)) => {
                let d = if chat {
                    json!({"content": text})
                } else {
                    json!(text)
                };
                out.push(chunk(delta(chat, i, d, None), None));
            }
            Output::Piece(Piece::CallStarted { id, name }) => {
                let call = json!({"index": calls_started[i], "id": id, "type": "function",
                                  "function": {"name": name, "arguments": ""}});
                out.push(chunk(
                    delta(chat, i, json!({"tool_calls": [call]}), None),
                    None,
                ));
                calls_started[i] += 1;
            }
            Output::Piece(Piece::Arguments(text)) => {
                let call = json!({"index": calls_started[i].saturating_sub(1),
                                  "function": {"arguments": text}});
                out.push(chunk(
                    delta(chat, i, json!({"tool_calls": [call]}), None),
                    None,
                ));
            }
            Output::Piece(Piece::Call(_)) => {}
            Output::End(end) => {
                if let Some(error) = &end.error {
                    out.push(SseEvent::default().data(
                        json!({"error": {"message": error, "type": "server_error"}}).to_string(),
                    ));
                }
                let reason = if chat {
                    end.chat_reason_name()
                } else {
                    end.reason_name()
                };
                let empty = if chat { json!({}) } else { json!("") };
                out.push(chunk(delta(chat, i, empty, Some(reason)), None));
                usages[i] = Some(end.usage);
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

/// One choice's chunk: a chat delta, or a completion's text.
fn delta(chat: bool, index: usize, content: Value, finish: Option<&str>) -> Value {
    if chat {
        json!([{"index": index, "delta": content, "logprobs": null, "finish_reason": finish}])
    } else {
        json!([{"index": index, "text": content, "logprobs": null, "finish_reason": finish}])
    }
}
