//! Between the HTTP handlers and the engine: submits one engine request per choice, merges
//! their event streams, and collects them for non-streaming responses.

use crate::error::ApiError;
use crate::request_log::RequestLog;
use crate::resident::Lease;
use crate::state::AppState;
use crate::tool_calls::{Piece, ToolCallReader};
use ferrollama_engine::{Event, FinishReason, GenerationRequest, Timings, Usage};
use ferrollama_model::ToolCall;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How long a stream may stay silent (a long prompt being read) before it sends a heartbeat:
/// gateways and proxies see bytes long before their read timeouts (the AI Gateway's is 30 s),
/// and writing is how a client that hung up is noticed, within about this long.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// Events of several choices, tagged with the choice index. Dropping the receiver cancels
/// every choice (their forwarders fail to send and drop their engine streams).
pub type Merged = mpsc::UnboundedReceiver<(usize, Event)>;

/// Submits the choices of one request. Each run of `forks` choices shares a prompt (OpenAI's
/// `n`): the first reads it, the others start from its cached blocks. A refusal comes back
/// before any choice runs for long: earlier streams are dropped, which cancels them.
///
/// The lease on the model ends just before the last choice's final event goes out, so a
/// client that has read a response never finds its model held by it (`keep_alive: 0`).
///
/// Past `--request-timeout`, a choice ends with a final event saying so, and is cancelled.
pub fn submit_all(
    state: &AppState,
    lease: Lease,
    requests: Vec<GenerationRequest>,
    forks: usize,
    mut log: RequestLog,
) -> Result<Merged, ApiError> {
    let timeout = state.request_timeout;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    log.expect_choices(requests.len());
    let log = Arc::new(log);
    let engine = &lease.loaded().engine;
    let mut streams = Vec::with_capacity(requests.len());
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let group: Vec<_> = requests.by_ref().take(forks.max(1)).collect();
        streams.extend(engine.submit_forks(group)?);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let lease = std::sync::Arc::new(lease);
    for (index, mut stream) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        let mut lease = Some(lease.clone());
        let metrics = state.metrics.clone();
        let log = log.clone();
        tokio::spawn(async move {
            // The client left (or time ran out): the request is cancelled in the engine, and
            // its stream is still read to its end, for the tokens it did cost.
            let (mut gone, mut over_time) = (false, false);
            loop {
                // The client going is noticed when it goes, not at the next event (a prompt
                // being read sends none for seconds).
                let event = if gone || over_time {
                    stream.next().await
                } else {
                    tokio::select! {
                        event = stream.next() => event,
                        _ = tx.closed() => {
                            stream.cancel();
                            gone = true;
                            continue;
                        }
                        _ = until(deadline) => {
                            stream.cancel();
                            over_time = true;
                            continue;
                        }
                    }
                };
                let Some(mut event) = event else { return };
                if let Event::Finished {
                    usage,
                    timings,
                    reason,
                    error,
                } = &mut event
                {
                    if over_time {
                        *reason = FinishReason::Cancelled;
                        *error = Some(timed_out_message(timeout));
                    }
                    metrics.finished(usage, timings);
                    log.finished(usage, timings, *reason, error.as_deref());
                    lease.take();
                }
                if !gone && tx.send((index, event)).is_err() {
                    stream.cancel();
                    gone = true;
                }
            }
        });
    }
    Ok(rx)
}

/// Waits until `deadline`, or for ever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a choice that ran past `--request-timeout` ended.
fn timed_out_message(timeout: Option<std::time::Duration>) -> String {
    let limit = timeout.map_or(String::new(), |t| format!(" ({} s)", t.as_secs_f64()));
    format!("the request ran past the server's --request-timeout{limit}")
}

#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub text: String,
    /// The calls the model made, when the request offered tools.
    pub calls: Vec<ToolCall>,
    pub reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

impl Finished {
    fn take(&mut self, pieces: Vec<Piece>) {
        for piece in pieces {
            match piece {
                Piece::Text(text) => self.text.push_str(&text),
                Piece::Call(call) => self.calls.push(call),
                // The whole call follows; only streams to OpenAI clients want its parts.
                Piece::CallStarted { .. } | Piece::Arguments(_) => {}
            }
        }
    }
}

/// Waits for every choice to finish; with `reader`, each choice's output is read for calls.
pub async fn collect(
    mut merged: Merged,
    choices: usize,
    reader: Option<&ToolCallReader>,
) -> Result<Vec<Finished>, ApiError> {
    let mut readers = vec![reader.cloned(); choices];
    let mut so_far = vec![Finished::default(); choices];
    let mut done: Vec<Option<Finished>> = vec![None; choices];
    while let Some((i, event)) = merged.recv().await {
        match event {
            Event::Token { text, token_id } => match &mut readers[i] {
                Some(reader) => so_far[i].take(reader.push(&text, token_id)),
                None => so_far[i].text.push_str(&text),
            },
            Event::Finished {
                reason,
                usage,
                timings,
                error,
            } => {
                if let Some(error) = error {
                    return Err(ApiError::internal(error));
                }
                let mut finished = std::mem::take(&mut so_far[i]);
                if let Some(reader) = &mut readers[i] {
                    finished.take(reader.finish());
                }
                done[i] = Some(Finished {
                    reason,
                    usage,
                    timings,
                    ..finished
                });
            }
        }
    }
    done.into_iter()
        .map(|d| d.ok_or_else(|| ApiError::internal("the engine stopped mid-request")))
        .collect()
}

/// OpenAI's and Ollama's names for why generation ended.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled | FinishReason::Error => "stop",
    }
}
