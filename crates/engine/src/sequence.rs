//! One request in flight: its tokens, its KV blocks, and its output state.

use crate::block_pool::BlockName;
use crate::constraint::Constraint;
use crate::draft::Drafter;
use crate::request::{Event, GenerationRequest};
use crate::sampler::Sampler;
use crate::stop::StopMatcher;
use ferrollama_model::{Detokenizer, Pooling, Reduce};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

pub struct Sequence {
    pub id: u64,
    /// For the 2nd..nth choice over one prompt: the sequence that reads the prompt first.
    pub leader: Option<u64>,
    /// Prompt, then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub computed: usize,
    /// Its KV blocks, in order (kept by [`crate::kv_cache_manager::KvCacheManager`]).
    pub blocks: Vec<u32>,
    /// How the cache knows the full blocks registered so far (a prefix of `blocks`).
    pub names: Vec<BlockName>,
    /// Prompt tokens found in the prefix cache at first admission.
    pub cached_prompt_tokens: Option<usize>,
    pub max_tokens: usize,
    pub ignore_eos: bool,
    pub sampler: Sampler,
    /// Where the output stands in its grammar, when it must match one.
    pub constraint: Option<Constraint>,
    pub detokenizer: Detokenizer,
    pub stop: StopMatcher,
    pub events: UnboundedSender<Event>,
    /// Set by the caller's [`crate::RequestStream::cancel`]: end now, with the usage so far.
    pub cancelled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub arrived: Instant,
    pub first_scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    /// Why the sequence failed, when it ends with an error of its own.
    pub failure: Option<String>,
    /// Prompt lookup for speculative decoding, when the request has it.
    pub drafter: Option<Drafter>,
    /// This step's draft: tokens appended to `tokens` on trial, taken off again when the step's
    /// results come in (see `Scheduler::update`).
    pub draft: usize,
    pub drafted: usize,
    pub accepted: usize,
    /// For an embedding request: its vector as the prompt's chunks come in. It generates no
    /// token; it ends when its prompt has been read.
    pub embedding: Option<Pooled>,
}

/// An embedding request's pooling over its prompt's final hidden states, chunk by chunk
/// (`ferrollama_model::Reduce` says what each chunk gives back).
pub struct Pooled {
    pooling: Pooling,
    /// Mean: the sum of the rows so far. CLS and last: the row, once its chunk has run.
    row: Vec<f32>,
}

impl Pooled {
    pub fn new(pooling: Pooling) -> Self {
        Self {
            pooling,
            row: Vec::new(),
        }
    }

    /// Whether the prompt's every row counts (mean, CLS), so none may come from the prefix
    /// cache, which keeps keys and values but no hidden states.
    pub fn reads_every_row(&self) -> bool {
        self.pooling != Pooling::Last
    }

    /// What the chunk of prompt positions `start..end` (of `len`) gives back.
    pub fn reduce(&self, start: usize, end: usize, len: usize) -> Option<Reduce> {
        match self.pooling {
            Pooling::Mean => Some(Reduce::Sum),
            Pooling::Cls => (start == 0).then_some(Reduce::First),
            Pooling::Last => (end == len).then_some(Reduce::Last),
        }
    }

    /// Takes in a chunk's reduced row. A chunk at position 0 starts afresh (a preempted
    /// sequence reads its prompt again).
    pub fn add(&mut self, start: usize, row: Vec<f32>) {
        if self.pooling == Pooling::Mean && start > 0 {
            self.row.iter_mut().zip(&row).for_each(|(sum, x)| *sum += x);
        } else {
            self.row = row;
        }
    }

    /// The vector, once all `len` prompt tokens are in.
    pub fn vector(&mut self, len: usize) -> Vec<f32> {
        let mut row = std::mem::take(&mut self.row);
        if self.pooling == Pooling::Mean {
            let n = len.max(1) as f32;
            row.iter_mut().for_each(|x| *x /= n);
        }
        row
    }
}

impl Sequence {
    /// Whether the caller has gone (hung up, or cancelled): the sequence should stop.
    pub fn abandoned(&self) -> bool {
        self.events.is_closed() || self.cancelled.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(id: u64, request: GenerationRequest, events: UnboundedSender<Event>) -> Self {
        Self {
            id,
            leader: None,
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            computed: 0,
            blocks: Vec::new(),
            names: Vec::new(),
            cached_prompt_tokens: None,
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            sampler: Sampler::new(request.sampling),
            constraint: request.grammar.as_ref().map(|g| g.start()),
            detokenizer: Detokenizer::new(),
            stop: StopMatcher::new(request.stop),
            events,
            cancelled: Default::default(),
            arrived: Instant::now(),
            first_scheduled: None,
            first_token: None,
            failure: None,
            drafter: None,
            draft: 0,
            drafted: 0,
            accepted: 0,
            embedding: None,
        }
    }

    /// Takes this step's draft off `tokens` (it was only on trial) and returns it.
    pub fn take_draft(&mut self) -> Vec<u32> {
        let at = self.tokens.len() - self.draft;
        self.draft = 0;
        self.tokens.split_off(at)
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.draft - self.prompt_len
    }

    /// Tokens not yet in the cache (the prompt, or a decode's last token, or everything
    /// again after a preemption).
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// The text still held back (an unfinished character, a possible start of a stop string)
    /// when generation ends for another reason: it is output after all, unless it completes
    /// a stop string.
    pub fn drain_text(&mut self, tokenizer: &ferrollama_model::Tokenizer) -> String {
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
}
