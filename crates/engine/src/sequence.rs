//! One request in flight as the scheduler keeps it: its tokens, how many are in the cache, its
//! KV blocks and its draft. What turns its rows into tokens and text is the engine's
//! (`output.rs`).

use crate::block_pool::BlockName;
use crate::draft::Drafter;
use ferrollama_model::{Pooling, Reduce};
use std::time::Instant;

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
    /// Most tokens to generate: no draft runs past it.
    pub max_tokens: usize,
    pub arrived: Instant,
    pub first_scheduled: Option<Instant>,
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
    pub fn new(id: u64, prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            id,
            leader: None,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            blocks: Vec::new(),
            names: Vec::new(),
            cached_prompt_tokens: None,
            max_tokens,
            arrived: Instant::now(),
            first_scheduled: None,
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
}
