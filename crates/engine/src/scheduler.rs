//! Decides what runs in each step. No prefill or decode phases: every running sequence gets
//! the tokens it needs (one for a decode, a chunk for a prompt) under a per-step token budget,
//! oldest first; waiting requests are admitted while the budget, the sequence cap and the free
//! blocks allow. When blocks run out, the newest running sequence is preempted: it gives its
//! blocks back and will recompute them later (vLLM's preemption by recompute).

use crate::block_pool::BlockPool;
use crate::sequence::Sequence;
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub block_size: usize,
    /// Most tokens in one forward pass (`--max-batch-tokens`).
    pub max_batch_tokens: usize,
    /// Most sequences running at once (`--max-seqs`, `OLLAMA_NUM_PARALLEL`).
    pub max_seqs: usize,
    /// Split long prompts across steps so running streams keep getting tokens.
    pub chunked_prefill: bool,
}

/// One step's work: for each scheduled sequence (an index into `running`), how many of its
/// pending tokens to run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub chunks: Vec<(usize, usize)>,
    /// Sequences preempted while planning (for statistics).
    pub preempted: usize,
}

pub struct Scheduler {
    pub config: SchedulerConfig,
    pub waiting: VecDeque<Sequence>,
    /// In admission order: the last is the newest.
    pub running: Vec<Sequence>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn schedule(&mut self, pool: &mut BlockPool) -> StepPlan {
        let bs = self.config.block_size;
        let mut plan = StepPlan::default();
        let mut budget = self.config.max_batch_tokens;
        let mut prefilling = false;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let take = self.chunk_size(seq.pending(), budget, &mut prefilling);
            if take == 0 {
                i += 1;
                continue;
            }
            let len = seq.computed + take;
            if self.running[i].reserve(pool, len, bs) {
                plan.chunks.push((i, take));
                budget = budget.saturating_sub(take);
                i += 1;
                continue;
            }
            // Out of blocks: the newest running sequence makes room (possibly this one).
            let mut victim = self.running.pop().expect("running is not empty");
            victim.free_blocks(pool);
            self.waiting.push_front(victim);
            plan.preempted += 1;
        }

        let mut next = 0;
        while budget > 0 && self.running.len() < self.config.max_seqs && next < self.waiting.len() {
            if self.leader_still_reading(&self.waiting[next]) {
                next += 1; // admitted once its leader's prompt blocks are cached
                continue;
            }
            let mut seq = self.waiting.remove(next).expect("index in range");
            let found = seq.take_cached_prefix(pool, bs);
            seq.cached_prompt_tokens
                .get_or_insert(found.min(seq.prompt_len));
            let take = self.chunk_size(seq.pending(), budget, &mut prefilling);
            if take == 0 || !seq.reserve(pool, seq.computed + take, bs) {
                seq.free_blocks(pool);
                self.waiting.insert(next, seq);
                break;
            }
            plan.chunks.push((self.running.len(), take));
            budget = budget.saturating_sub(take);
            self.running.push(seq);
        }
        plan
    }

    /// A forked sequence (one of `n` choices over one prompt) waits while its leader is still
    /// reading the prompt; then the prefix cache hands it the leader's full blocks.
    fn leader_still_reading(&self, seq: &Sequence) -> bool {
        let Some(leader) = seq.leader else {
            return false;
        };
        self.waiting.iter().any(|s| s.id == leader)
            || self
                .running
                .iter()
                .any(|s| s.id == leader && s.computed < s.prompt_len)
    }

    /// How many of `pending` tokens run this step. Unchunked, the first prompt of a step runs
    /// whole even past the budget (the step then takes as long as that prompt).
    fn chunk_size(&self, pending: usize, budget: usize, prefilling: &mut bool) -> usize {
        let take = if pending <= 1 || self.config.chunked_prefill {
            pending.min(budget)
        } else if pending <= budget || !*prefilling {
            pending
        } else {
            0
        };
        *prefilling |= take > 1;
        take
    }
}
