//! Ollama's response shapes: one JSON object per piece of output (NDJSON) with a final one
//! carrying counts and timings, or one object with everything.

use crate::clock;
use crate::serving::{collect, End, Output, Served, HEARTBEAT};
use crate::tool_calls::Piece;
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollama_model::ToolCall;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_stream::StreamExt;

/// How one request's lines are written.
#[derive(Clone)]
pub struct Shape {
    pub model: String,
    /// Answer as /api/chat (a message) rather than /api/generate (a response).
    pub chat: bool,
}

impl Shape {
    /// A line's output part: a message's content, or a response's text.
    fn piece(&self, text: &str) -> Value {
        if self.chat {
            json!({"message": {"role": "assistant", "content": text}})
        } else {
            json!({"response": text})
        }
    }

    /// Every line's model and time.
    fn stamp(&self, line: &mut Value) {
        merge(
            line,
            json!({"model": self.model, "created_at": clock::now_rfc3339()}),
        );
    }
}

/// The whole answer as one object.
pub async fn whole(served: Served, shape: Shape) -> Result<Response, crate::error::ApiError> {
    let load_duration = served.load_duration;
    let result = collect(served.outputs, 1).await?.remove(0);
    let mut body = shape.piece(&result.text);
    if !result.calls.is_empty() {
        body["message"]["tool_calls"] = ollama_calls(&result.calls);
    }
    shape.stamp(&mut body);
    merge(&mut body, final_fields(load_duration, &result.end));
    if !shape.chat {
        body["context"] = json!([]);
    }
    Ok(Json(body).into_response())
}

/// NDJSON: a line per piece of text, a line per call once whole (as Ollama gives calls), and
/// a last line with counts and timings (or the error).
pub fn stream(served: Served, shape: Shape) -> Response {
    let load_duration = served.load_duration;
    // A heartbeat is a space with no newline: one at once, then one per second of silence while
    // the prompt is read. Bytes flow (a client's read timeout never fires), yet no line is
    // made: the spaces lead the next JSON line, which every JSON parser reads past. An empty
    // JSON line would be a line of its own, and litellm's `ollama/` provider (1.53.1, the AI
    // Gateway's) fails on `{"response":"","done":false}`, as on a blank or space-only line.
    let start = tokio::time::Instant::now() + HEARTBEAT;
    let outputs = served
        .outputs
        .timeout_repeating(tokio::time::interval_at(start, HEARTBEAT))
        .map(|item| item.ok().map(|(_, output)| output));
    let lines = tokio_stream::once(None)
        .chain(outputs)
        .filter_map(move |output| {
            let line = match output {
                None => return Some(Ok::<_, std::convert::Infallible>(" ".to_string())),
                Some(Output::Piece(Piece::Text(text))) => {
                    let mut line = shape.piece(&text);
                    line["done"] = json!(false);
                    line
                }
                Some(Output::Piece(Piece::Call(call))) => {
                    let mut line = shape.piece("");
                    line["message"]["tool_calls"] = ollama_calls(&[call]);
                    line["done"] = json!(false);
                    line
                }
                // Ollama gives each call whole, once its object closes.
                Some(Output::Piece(Piece::CallStarted { .. } | Piece::Arguments(_))) => {
                    return None
                }
                Some(Output::End(End {
                    error: Some(error), ..
                })) => return Some(Ok(format!("{}\n", json!({ "error": error })))),
                Some(Output::End(end)) => {
                    let mut line = shape.piece("");
                    merge(&mut line, final_fields(load_duration, &end));
                    line
                }
            };
            let mut line = line;
            shape.stamp(&mut line);
            Some(Ok(format!("{line}\n")))
        });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Calls as Ollama writes them: arguments as JSON objects.
fn ollama_calls(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

fn final_fields(load_duration: Duration, end: &End) -> Value {
    let (usage, timings) = (&end.usage, &end.timings);
    let ns = |d: Duration| d.as_nanos() as u64;
    let mut fields = json!({
        "done": true,
        "done_reason": end.reason_name(),
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

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}
