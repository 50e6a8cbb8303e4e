//! One log line per request that runs a model (generation or embeddings), through `tracing` (target `ferrollama::request`): its
//! id, route, model, prompt, cached and generated tokens, time to first token, total time and
//! how it ended. The prompt's text only with `--log-prompts`; keys never.

use ferrollama_engine::{FinishReason, Timings, Usage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct RequestLog {
    id: u64,
    route: &'static str,
    model: String,
    prompt: Option<String>,
    started: Instant,
    choices: usize,
    so_far: Mutex<SoFar>,
}

#[derive(Default)]
struct SoFar {
    finished: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
    generated_tokens: usize,
    ttft: Option<Duration>,
    reason: Option<FinishReason>,
    error: Option<String>,
}

impl RequestLog {
    /// `prompt` is logged as given: pass it only when `--log-prompts` is on.
    pub fn new(route: &'static str, model: &str, prompt: Option<String>) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            route,
            model: model.to_string(),
            prompt,
            started: Instant::now(),
            choices: 0,
            so_far: Mutex::new(SoFar::default()),
        }
    }

    pub fn expect_choices(&mut self, choices: usize) {
        self.choices = choices;
    }

    /// One choice ended; the line goes out when the last one does.
    pub fn finished(
        &self,
        usage: &Usage,
        timings: &Timings,
        reason: FinishReason,
        error: Option<&str>,
    ) {
        let mut s = self.so_far.lock().expect("log lock");
        s.finished += 1;
        // Choices share one prompt per `n`: count each prompt once per choice as OpenAI does.
        s.prompt_tokens += usage.prompt_tokens;
        s.cached_tokens += usage.cached_tokens;
        s.generated_tokens += usage.generated_tokens;
        let ttft = timings.queue + timings.prefill;
        s.ttft = Some(s.ttft.map_or(ttft, |t| t.min(ttft)));
        s.reason = Some(reason);
        if let Some(e) = error {
            s.error = Some(e.to_string());
        }
        if s.finished == self.choices {
            self.emit(&s, None);
        }
    }

    /// An embedding request's line: its inputs' tokens, nothing generated, finish `embedded`
    /// (or `error`, with the error).
    pub fn embedded(&self, prompt_tokens: usize, error: Option<&str>) {
        let s = SoFar {
            prompt_tokens,
            error: error.map(str::to_string),
            ..SoFar::default()
        };
        self.emit(&s, Some(if error.is_some() { "error" } else { "embedded" }));
    }

    fn emit(&self, s: &SoFar, cancelled: Option<&str>) {
        let reason = cancelled.unwrap_or(match s.reason {
            Some(FinishReason::Stop) => "stop",
            Some(FinishReason::Length) => "length",
            Some(FinishReason::Cancelled) => "cancelled",
            Some(FinishReason::Error) | None => "error",
        });
        tracing::info!(
            target: "ferrollama::request",
            id = self.id,
            route = self.route,
            model = %self.model,
            prompt_tokens = s.prompt_tokens,
            cached_tokens = s.cached_tokens,
            generated_tokens = s.generated_tokens,
            ttft_ms = s.ttft.map(|t| t.as_millis() as u64),
            total_ms = self.started.elapsed().as_millis() as u64,
            finish = reason,
            error = s.error.as_deref(),
            prompt = self.prompt.as_deref(),
            "request"
        );
    }
}

/// Chat messages as text, one `role: content` line each (with the calls an assistant made and
/// the call a tool result answers), for `--log-prompts`.
pub fn transcript(messages: &[ferrollama_model::ChatMessage]) -> String {
    messages
        .iter()
        .map(|m| {
            let mut line = format!("{:?}: {}", m.role, m.content);
            for call in &m.tool_calls {
                line.push_str(&format!(" [call {}({})]", call.name, call.arguments));
            }
            if let Some(id) = &m.tool_call_id {
                line.push_str(&format!(" [answers {id}]"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for RequestLog {
    /// A request whose client left before its end still gets its line.
    fn drop(&mut self) {
        let s = self.so_far.lock().expect("log lock");
        if s.finished < self.choices {
            self.emit(&s, Some("client gone"));
        }
    }
}
