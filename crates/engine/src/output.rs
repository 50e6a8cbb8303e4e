//! What the engine keeps of each request to turn its logit rows into tokens and its tokens into
//! text and events: the sampler, the grammar, the detokenizer, the stop strings, the caller's
//! channel. The engine's output step samples a chunk's rows with it and hands the scheduler
//! the tokens as data (`crate::scheduler::ChunkOutcome`).

use crate::constraint::Constraint;
use crate::request::{Event, FinishReason, GenerationRequest};
use crate::rows::Row;
use crate::sampler::{Need, Sampler};
use crate::stop::StopMatcher;
use ferrollama_model::{Detokenizer, Tokenizer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

pub struct RequestOutput {
    pub sampler: Sampler,
    /// Where the output stands in its grammar, when it must match one.
    pub constraint: Option<Constraint>,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    pub events: UnboundedSender<Event>,
    /// Set by the caller's [`crate::RequestStream::cancel`]: end now, with the usage so far.
    pub cancelled: Arc<AtomicBool>,
    ignore_eos: bool,
    max_tokens: usize,
    pub first_token: Option<Instant>,
    /// Why the request failed, when it ends with an error of its own.
    pub failure: Option<String>,
}

/// Where a chunk's sampling starts: the sequence's tokens (a draft on trial at their end), the
/// draft's length, and the prompt's.
pub struct Context<'a> {
    pub tokens: &'a [u32],
    pub draft: usize,
    pub prompt_len: usize,
}

impl RequestOutput {
    pub fn new(request: &GenerationRequest, events: UnboundedSender<Event>) -> Self {
        Self {
            sampler: Sampler::new(request.sampling.clone()),
            constraint: request.grammar.as_ref().map(|g| g.start()),
            detokenizer: Detokenizer::new(),
            stop: StopMatcher::new(request.stop.clone()),
            events,
            cancelled: Default::default(),
            ignore_eos: request.ignore_eos,
            max_tokens: request.max_tokens,
            first_token: None,
            failure: None,
        }
    }

    /// Whether the caller has gone (hung up, or cancelled): the request should stop.
    pub fn abandoned(&self) -> bool {
        self.events.is_closed() || self.cancelled.load(Ordering::Relaxed)
    }

    /// What each of a sampling chunk's rows (its draft's length plus one) must bring back.
    pub fn need(&self, context: &Context<'_>, max_shortlist: usize) -> Need {
        if self.constraint.is_some() {
            return Need::Whole { normalize: None };
        }
        let generated = context.tokens.len() - context.prompt_len;
        self.sampler
            .need(context.tokens, generated, context.draft, max_shortlist)
    }

    /// Samples a chunk's rows in turn: each against the tokens before it (the draft's own up
    /// to there), on while the token sampled is the one drafted. Sends each token's text.
    /// Returns the tokens sampled (all but the last equal to the draft's) and, when one ends
    /// the request, why.
    pub fn sample(
        &mut self,
        context: &Context<'_>,
        rows: &mut [Row],
        tokenizer: &Tokenizer,
        max_len: usize,
    ) -> (Vec<u32>, Option<FinishReason>) {
        let base = context.tokens.len() - context.draft;
        let drafted = &context.tokens[base..];
        let mut sampled = Vec::with_capacity(rows.len());
        for (j, row) in rows.iter_mut().enumerate() {
            // Row j follows the draft's first j tokens, which were all kept to get here.
            let history = &context.tokens[..base + j];
            let Some(token) = self.draw(history, context.prompt_len, row) else {
                return (sampled, Some(FinishReason::Error));
            };
            sampled.push(token);
            let generated = history.len() + 1 - context.prompt_len;
            let finish = self.take(token, generated, history.len() + 1, tokenizer, max_len);
            if finish.is_some() || drafted.get(j) != Some(&token) {
                return (sampled, finish);
            }
        }
        (sampled, None)
    }

    /// One row's token, under the grammar; `None` (with `failure` set) when it cannot be read.
    fn draw(&mut self, history: &[u32], prompt_len: usize, row: &mut Row) -> Option<u32> {
        let generated = history.len() - prompt_len;
        match row {
            // A plain greedy pick, made on the device (see `read_rows`).
            Row::Argmax(token) => Some(*token),
            Row::Shortlist(list, whole) => {
                let normalizer = list.normalizer;
                match self
                    .sampler
                    .sample_shortlist(std::mem::take(list), history, generated)
                {
                    Some(token) => Some(token),
                    // The draw fell past the row's head: the rest of the row comes over after all.
                    None => match whole.to_vec1::<f32>() {
                        Ok(mut logits) => Some(self.sampler.sample_row(
                            &mut logits,
                            normalizer,
                            history,
                            generated,
                        )),
                        Err(e) => {
                            self.failure = Some(format!("reading logits: {e}"));
                            None
                        }
                    },
                }
            }
            Row::Logits(logits, normalizer) => {
                if let Some(constraint) = &mut self.constraint {
                    if let Err(e) = constraint.mask(logits) {
                        self.failure = Some(format!("constrained decoding: {e}"));
                        return None;
                    }
                }
                Some(
                    self.sampler
                        .sample_row(logits, *normalizer, history, generated),
                )
            }
        }
    }

    /// Takes in the token just sampled (the `generated`-th, making the sequence `len` long):
    /// the grammar moves on, its text goes out; returns a finish reason if it ends the request.
    fn take(
        &mut self,
        token: u32,
        generated: usize,
        len: usize,
        tokenizer: &Tokenizer,
        max_len: usize,
    ) -> Option<FinishReason> {
        self.first_token.get_or_insert_with(Instant::now);
        let complete = match &mut self.constraint {
            None => false,
            Some(constraint) => match constraint.advance(token) {
                Ok(()) => constraint.is_complete(),
                Err(e) => {
                    self.failure = Some(format!("constrained decoding: {e}"));
                    return Some(FinishReason::Error);
                }
            },
        };
        // The model's own end tokens always stop, whatever else was asked.
        if !self.ignore_eos && tokenizer.eos_ids().contains(&token) {
            let text = self.drain_text(tokenizer);
            self.send(text, token);
            return Some(FinishReason::Stop);
        }
        let text = match self.detokenizer.push(tokenizer, token) {
            Ok(text) => text.unwrap_or_default(),
            Err(e) => {
                tracing::warn!("detokenize: {e}");
                String::new()
            }
        };
        let release = self.stop.push(&text);
        self.send(release.text, token);
        if release.stopped {
            return Some(FinishReason::Stop);
        }
        if complete {
            // The grammar allows nothing more: the output is whole.
            let text = self.drain_text(tokenizer);
            if !text.is_empty() {
                self.send(text, token);
            }
            return Some(FinishReason::Stop);
        }
        if generated >= self.max_tokens || len >= max_len {
            return Some(FinishReason::Length);
        }
        None
    }

    /// The text still held back (an unfinished character, a possible start of a stop string)
    /// when generation ends for another reason: it is output after all, unless it completes
    /// a stop string.
    pub fn drain_text(&mut self, tokenizer: &Tokenizer) -> String {
        let rest = self
            .detokenizer
            .finish(tokenizer)
            .ok()
            .flatten()
            .unwrap_or_default();
        let release = self.stop.push(&rest);
        if release.stopped {
            return release.text;
        }
        release.text + &self.stop.flush()
    }

    pub fn send(&self, text: String, token_id: u32) {
        // A closed channel means the caller hung up; the next step drops the request.
        let _ = self.events.send(Event::Token { text, token_id });
    }
}
