//! Between the HTTP handlers and the engine: submits one engine request per choice, merges
//! their event streams, and collects them for non-streaming responses.

use crate::error::ApiError;
use ferrollama_engine::{EngineHandle, Event, FinishReason, GenerationRequest, Timings, Usage};
use tokio::sync::mpsc;

/// Events of several choices, tagged with the choice index. Dropping the receiver cancels
/// every choice (their forwarders fail to send and drop their engine streams).
pub type Merged = mpsc::UnboundedReceiver<(usize, Event)>;

pub fn submit_all(
    engine: &EngineHandle,
    requests: Vec<GenerationRequest>,
) -> Result<Merged, ApiError> {
    // Submit everything first, so a refusal comes back before any work starts.
    let streams = requests
        .into_iter()
        .map(|r| engine.submit(r))
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = mpsc::unbounded_channel();
    for (index, mut stream) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if tx.send((index, event)).is_err() {
                    return; // the client is gone: dropping `stream` cancels the request
                }
            }
        });
    }
    Ok(rx)
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub text: String,
    pub reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// Waits for every choice to finish.
pub async fn collect(mut merged: Merged, choices: usize) -> Result<Vec<Finished>, ApiError> {
    let mut texts = vec![String::new(); choices];
    let mut done: Vec<Option<Finished>> = vec![None; choices];
    while let Some((i, event)) = merged.recv().await {
        match event {
            Event::Token { text, .. } => texts[i].push_str(&text),
            Event::Finished {
                reason,
                usage,
                timings,
                error,
            } => {
                if let Some(error) = error {
                    return Err(ApiError::internal(error));
                }
                done[i] = Some(Finished {
                    text: std::mem::take(&mut texts[i]),
                    reason,
                    usage,
                    timings,
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
