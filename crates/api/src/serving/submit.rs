//! Submits one engine request per choice and merges their event streams; ends each choice
//! that runs past `--request-timeout`, and counts each in the metrics and the request log.

use crate::request_log::RequestLog;
use crate::resident::Lease;
use crate::state::AppState;
use ferrollama_engine::{EngineError, Event, FinishReason, GenerationRequest};
use std::sync::Arc;
use tokio::sync::mpsc;

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
///
/// A refusal comes with the index of the group (the prompt) the engine refused.
pub fn submit_all(
    state: &AppState,
    lease: Lease,
    requests: Vec<GenerationRequest>,
    forks: usize,
    mut log: RequestLog,
) -> Result<Merged, (EngineError, usize)> {
    let timeout = state.request_timeout;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    log.expect_choices(requests.len());
    let log = Arc::new(log);
    let engine = &lease.loaded().engine;
    let mut streams = Vec::with_capacity(requests.len());
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let group: Vec<_> = requests.by_ref().take(forks.max(1)).collect();
        let prompt = streams.len() / forks.max(1);
        streams.extend(engine.submit_forks(group).map_err(|e| (e, prompt))?);
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
