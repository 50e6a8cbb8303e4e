//! One request in flight: its tokens, its KV blocks, and its output state.

use crate::block_pool::{BlockName, BlockPool};
use crate::constraint::Constraint;
use crate::draft::Drafter;
use crate::request::{Event, GenerationRequest};
use crate::sampler::Sampler;
use crate::stop::StopMatcher;
use ferrollama_model::Detokenizer;
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
        }
    }

    /// Takes this step's draft off `tokens` (it was only on trial) and returns it.
    pub fn take_draft(&mut self) -> Vec<u32> {
        let at = self.tokens.len() - self.draft;
        self.draft = 0;
        self.tokens.split_off(at)
    }

    /// Gives back the blocks past those `len` tokens need (a rejected draft's tail).
    pub fn shrink_blocks(&mut self, pool: &mut BlockPool, len: usize, block_size: usize) {
        let keep = len.div_ceil(block_size).max(self.names.len());
        if self.blocks.len() > keep {
            pool.release(&self.blocks[keep..]);
            self.blocks.truncate(keep);
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.draft - self.prompt_len
    }

    /// Tokens not yet in the cache (the prompt, or a decode's last token, or everything
    /// again after a preemption).
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Grows the block table to hold `len` tokens; false (and nothing taken) if the pool
    /// has too few free blocks.
    pub fn reserve(&mut self, pool: &mut BlockPool, len: usize, block_size: usize) -> bool {
        let needed = len.div_ceil(block_size).saturating_sub(self.blocks.len());
        if needed > pool.num_free() {
            return false;
        }
        for _ in 0..needed {
            self.blocks
                .push(pool.allocate().expect("counted free blocks"));
        }
        true
    }

    /// Reuses cached blocks for the longest cached prefix of the tokens, leaving at least one
    /// token to compute (its logits are needed). Returns how many tokens were found.
    pub fn take_cached_prefix(&mut self, pool: &mut BlockPool, block_size: usize) -> usize {
        debug_assert!(self.blocks.is_empty() && self.computed == 0);
        let full = (self.tokens.len() - 1) / block_size;
        for chunk in self.tokens.chunks(block_size).take(full) {
            let parent = self.names.last();
            let hash = pool.hash(parent.map(|p| p.hash), chunk);
            match pool.take_cached(hash, parent.map(|p| p.content), chunk) {
                Some((block, content)) => {
                    self.blocks.push(block);
                    self.names.push(BlockName { hash, content });
                }
                None => break,
            }
        }
        self.computed = self.blocks.len() * block_size;
        self.computed
    }

    /// Registers the blocks that became full in the prefix cache.
    pub fn register_full_blocks(&mut self, pool: &mut BlockPool, block_size: usize) {
        while (self.names.len() + 1) * block_size <= self.computed {
            let i = self.names.len();
            let tokens = &self.tokens[i * block_size..(i + 1) * block_size];
            let parent = self.names.last();
            let hash = pool.hash(parent.map(|p| p.hash), tokens);
            let content = pool.register(self.blocks[i], hash, parent.map(|p| p.content), tokens);
            self.names.push(BlockName { hash, content });
        }
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

    /// Gives every block back; the sequence will recompute from scratch if it runs again.
    pub fn free_blocks(&mut self, pool: &mut BlockPool) {
        pool.release(&self.blocks);
        self.blocks.clear();
        self.names.clear();
        self.computed = 0;
    }
}
