//! What goes into the engine and what comes out: requests as token ids with sampling and
//! stop criteria, and a stream of events per request.

use crate::constraint::Grammar;
use crate::sampler::SamplingParams;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate; generation also stops at the end of the model's context.
    pub max_tokens: usize,
    /// Text that ends generation; never part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// What the output must match (a JSON schema, say); each choice starts it afresh.
    pub grammar: Option<Grammar>,
    /// Speculative decoding for this request: `None` follows the engine's setting, `Some(false)`
    /// turns it off (and `Some(true)` asks for it where the engine has it configured).
    pub speculative: Option<bool>,
}

impl GenerationRequest {
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens,
            stop: Vec::new(),
            ignore_eos: false,
            grammar: None,
            speculative: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    #[default]
    Stop,
    /// max_tokens or the end of the context.
    Length,
    Cancelled,
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Speculative decoding: draft tokens proposed, and how many of them the model kept.
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timings {
    /// Submission to first scheduled step.
    pub queue: Duration,
    /// First scheduled step to first generated token.
    pub prefill: Duration,
    /// First generated token to the end.
    pub decode: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An embedding request's vector (its pooled final hidden states, not normalised), just
    /// before its `Finished`.
    Embedding(Vec<f32>),
    /// New text (possibly empty while a stop string might be starting) and the token that
    /// produced it.
    Token { text: String, token_id: u32 },
    /// The last event of a request.
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
        /// Set when `reason` is `Error`.
        error: Option<String>,
    },
}
