//! What a request's choices produce, read once for both APIs: text, the calls the model makes
//! (when tools were offered), and each choice's end. The protocol files only format these.

use super::submit::Merged;
use crate::error::ApiError;
use crate::tool_calls::{Piece, ToolCallReader};
use ferrollama_engine::{Event, FinishReason, Timings, Usage};
use ferrollama_model::ToolCall;
use futures_util::stream::{self, Stream, StreamExt};
use std::pin::Pin;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// One step of a choice's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Text, or part of a call (never empty text).
    Piece(Piece),
    /// The choice's last output.
    End(End),
}

#[derive(Debug, Clone, PartialEq)]
pub struct End {
    pub reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// Why the choice failed, when it did.
    pub error: Option<String>,
    /// The model made at least one call.
    pub called: bool,
}

impl End {
    /// Ollama's `done_reason`, and OpenAI's `finish_reason` for text completions.
    pub fn reason_name(&self) -> &'static str {
        match self.reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled | FinishReason::Error => "stop",
        }
    }

    /// OpenAI's chat `finish_reason`: `tool_calls` when the model called.
    pub fn chat_reason_name(&self) -> &'static str {
        match (self.reason, self.called) {
            (FinishReason::Stop, true) => "tool_calls",
            _ => self.reason_name(),
        }
    }
}

/// Every choice's outputs, tagged with the choice's index, in the order they come.
/// Dropping it cancels every choice.
pub type Outputs = Pin<Box<dyn Stream<Item = (usize, Output)> + Send>>;

/// Reads the engine's events into outputs; with `reader`, each choice's text is read for
/// calls.
pub fn read(merged: Merged, reader: Option<ToolCallReader>, choices: usize) -> Outputs {
    let mut readers = vec![reader; choices];
    let mut called = vec![false; choices];
    let outputs = UnboundedReceiverStream::new(merged).flat_map(move |(i, event)| {
        let pieces = match (&event, &mut readers[i]) {
            (Event::Token { text, token_id }, Some(reader)) => reader.push(text, *token_id),
            (Event::Token { text, .. }, None) => vec![Piece::Text(text.clone())],
            (Event::Finished { .. }, Some(reader)) => reader.finish(),
            (Event::Finished { .. }, None) => Vec::new(),
            // Generation never brings one (embeddings are read by `embeddings/`).
            (Event::Embedding(_), _) => Vec::new(),
        };
        let mut out: Vec<(usize, Output)> = pieces
            .into_iter()
            .filter(|p| p != &Piece::Text(String::new()))
            .inspect(|p| called[i] |= matches!(p, Piece::Call(_)))
            .map(|p| (i, Output::Piece(p)))
            .collect();
        if let Event::Finished {
            reason,
            usage,
            timings,
            error,
        } = event
        {
            let end = End {
                reason,
                usage,
                timings,
                error,
                called: called[i],
            };
            out.push((i, Output::End(end)));
        }
        stream::iter(out)
    });
    Box::pin(outputs)
}

/// A choice's whole output, for responses that are not streamed.
#[derive(Debug, Clone)]
pub struct Finished {
    pub text: String,
    /// The calls the model made, when the request offered tools.
    pub calls: Vec<ToolCall>,
    pub end: End,
}

/// Waits for every choice to end. A choice that failed fails the response.
pub async fn collect(mut outputs: Outputs, choices: usize) -> Result<Vec<Finished>, ApiError> {
    let mut texts = vec![String::new(); choices];
    let mut calls = vec![Vec::new(); choices];
    let mut done: Vec<Option<Finished>> = vec![None; choices];
    while let Some((i, output)) = outputs.next().await {
        match output {
            Output::Piece(Piece::Text(text)) => texts[i].push_str(&text),
            Output::Piece(Piece::Call(call)) => calls[i].push(call),
            // The whole call follows; only streams to OpenAI clients want its parts.
            Output::Piece(Piece::CallStarted { .. } | Piece::Arguments(_)) => {}
            Output::End(end) => {
                if let Some(error) = &end.error {
                    return Err(ApiError::internal(error.clone()));
                }
                done[i] = Some(Finished {
                    text: std::mem::take(&mut texts[i]),
                    calls: std::mem::take(&mut calls[i]),
                    end,
                });
            }
        }
    }
    done.into_iter()
        .map(|d| d.ok_or_else(|| ApiError::internal("the engine stopped mid-request")))
        .collect()
}
