//! Decides what runs in each step. No prefill or decode phases: every running sequence gets
//! the tokens it needs (one for a decode, a chunk for a prompt) under a per-step token budget,
//! oldest first; waiting requests are admitted while the budget, the sequence cap and the free
//! blocks allow. When blocks run out, the newest running sequence is preempted: it gives its
//! blocks back and will recompute them later (vLLM's preemption by recompute).
//!
//! The scheduler owns its queues and the KV cache manager (`kv_cache_manager.rs`, who holds
//! which blocks), privately (vLLM v1's shape): the loop calls `schedule()`, runs the model on
//! `batch(plan)`, samples in its output step, and hands the sampled tokens to `update()` as
//! data, which applies them and returns the sequences that finished.

use crate::block_pool::BlockPool;
use crate::kv_cache_manager::KvCacheManager;
use crate::request::FinishReason;
use crate::sequence::Sequence;
use ferrollama_model::{Batch, SeqChunk};
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub block_size: usize,
    /// Most tokens in one forward pass (`--max-batch-tokens`).
    pub max_batch_tokens: usize,
    /// Most sequences running at once (`--max-seqs`, `OLLAMA_NUM_PARALLEL`).
    pub max_seqs: usize,
    /// Split long prompts across steps so running streams keep getting tokens.
    pub chunked_prefill: bool,
    /// Speculative decoding by prompt lookup, when on.
    pub speculation: Option<Speculation>,
    /// No sequence grows past this (the model's context, or the whole cache): nor may a draft.
    pub max_len: usize,
}

/// When and how far to speculate (`--speculative ngram`, `--num-speculative-tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    /// Most draft tokens per sequence and step.
    pub max_draft: usize,
    /// Speculate only while at most this many sequences run and none is reading a prompt:
    /// past it a step is compute-bound, and checking drafts costs more than it saves.
    pub max_batch: usize,
}

/// What the engine's output step made of one chunk of a step: data for [`Scheduler::update`].
#[derive(Debug, Default)]
pub struct ChunkOutcome {
    /// The tokens sampled from the chunk's rows, in order: all but the last are drafted tokens
    /// the model kept. Empty for a prompt chunk.
    pub sampled: Vec<u32>,
    /// Why the last of them ends the request, if it does.
    pub finish: Option<FinishReason>,
    /// An embedding request's reduced hidden states for the chunk, when it asked for them.
    pub hidden: Option<Vec<f32>>,
}

/// One step's work, a plain value: which sequences run (by request id), each with how many of
/// its pending tokens, in batch order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub chunks: Vec<Chunk>,
    /// Sequences preempted while planning (for statistics).
    pub preempted: usize,
    /// Requests that left the queue for their first step.
    pub admitted: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub id: u64,
    pub take: usize,
}

pub struct Scheduler {
    config: SchedulerConfig,
    /// Who holds which blocks, and the prefix cache.
    kv: KvCacheManager,
    waiting: VecDeque<Sequence>,
    /// In admission order: the last is the newest.
    running: Vec<Sequence>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, pool: BlockPool) -> Self {
        Self {
            kv: KvCacheManager::new(pool, config.block_size),
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// A new request joins the back of the queue.
    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq);
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.kv.num_free()
    }

    /// Takes out the sequences `gone` picks (their callers hung up or cancelled), giving their
    /// blocks back. Returns them, and how many of them had never run (they leave the queue).
    pub fn take_where(&mut self, gone: impl Fn(&Sequence) -> bool) -> (Vec<Sequence>, usize) {
        let mut taken = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if gone(&self.running[i]) {
                let mut seq = self.running.remove(i);
                self.kv.free(&mut seq);
                taken.push(seq);
            } else {
                i += 1;
            }
        }
        let mut never_ran = 0;
        let mut kept = std::collections::VecDeque::with_capacity(self.waiting.len());
        for seq in self.waiting.drain(..) {
            if gone(&seq) {
                never_ran += usize::from(seq.first_scheduled.is_none());
                taken.push(seq);
            } else {
                kept.push_back(seq);
            }
        }
        self.waiting = kept;
        (taken, never_ran)
    }

    /// A running sequence, as the scheduler keeps it (the engine samples against its tokens).
    pub fn view(&self, id: u64) -> &Sequence {
        &self.running[self.position(id)]
    }

    /// Every sequence, running or waiting, leaves (the server is shutting down).
    pub fn remove_all(&mut self) -> Vec<Sequence> {
        let mut all: Vec<Sequence> = self.running.drain(..).collect();
        all.extend(self.waiting.drain(..));
        for seq in &mut all {
            self.kv.free(seq);
        }
        all
    }

    /// Plans the next step: every running sequence's pending tokens under the token budget,
    /// then waiting ones while budget, sequence cap and blocks allow.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = self.plan();
        let now = Instant::now();
        for chunk in &plan.chunks {
            let i = self.position(chunk.id);
            let first = &mut self.running[i].first_scheduled;
            plan.admitted += usize::from(first.is_none());
            first.get_or_insert(now);
        }
        plan
    }

    fn plan(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.config.max_batch_tokens;
        let mut prefilling = false;

        // Drafts only where a step is bandwidth-bound: few sequences, no prompt being read.
        let speculate = self.config.speculation.filter(|spec| {
            self.running.len() <= spec.max_batch && self.running.iter().all(|s| s.pending() <= 1)
        });
        let mut i = 0;
        // A sequence whose draft found no room decodes plainly on the retry.
        let mut no_room_for_draft = None;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let take = self.chunk_size(seq.pending(), budget, &mut prefilling);
            if take == 0 {
                i += 1;
                continue;
            }
            if speculate.is_some() && take == 1 && no_room_for_draft != Some(seq.id) {
                self.draft(i, budget - 1);
            }
            let take = take + self.running[i].draft;
            let len = self.running[i].computed + take;
            if self.kv.reserve(&mut self.running[i], len) {
                plan.chunks.push(Chunk {
                    id: self.running[i].id,
                    take,
                });
                budget = budget.saturating_sub(take);
                i += 1;
                continue;
            }
            if self.running[i].draft > 0 {
                self.running[i].take_draft(); // no room for a draft: plain decode
                no_room_for_draft = Some(self.running[i].id);
                continue;
            }
            // Out of blocks: the newest running sequence makes room (possibly this one).
            let mut victim = self.running.pop().expect("running is not empty");
            if victim.draft > 0 {
                victim.take_draft();
            }
            self.kv.free(&mut victim);
            plan.chunks.retain(|c| c.id != victim.id);
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
            let every_row = seq.embedding.as_ref().is_some_and(|e| e.reads_every_row());
            let found = if every_row {
                0
            } else {
                self.kv.take_cached_prefix(&mut seq)
            };
            seq.cached_prompt_tokens
                .get_or_insert(found.min(seq.prompt_len));
            let take = self.chunk_size(seq.pending(), budget, &mut prefilling);
            let len = seq.computed + take;
            if take == 0 || !self.kv.reserve(&mut seq, len) {
                self.kv.free(&mut seq);
                self.waiting.insert(next, seq);
                break;
            }
            plan.chunks.push(Chunk { id: seq.id, take });
            budget = budget.saturating_sub(take);
            self.running.push(seq);
        }
        plan
    }

    /// Puts a draft of at most `room` tokens on trial at the end of sequence `i`'s tokens:
    /// never past its max_tokens (the last token of a draft's run is sampled, not drafted).
    fn draft(&mut self, i: usize, room: usize) {
        let seq = &mut self.running[i];
        let left = seq
            .max_tokens
            .saturating_sub(seq.generated() + 1)
            .min(self.config.max_len.saturating_sub(seq.tokens.len() + 1));
        let Some(drafter) = &mut seq.drafter else {
            return;
        };
        let draft = drafter.propose(&seq.tokens, room.min(left));
        seq.draft = draft.len();
        seq.tokens.extend(draft);
    }

    fn position(&self, id: u64) -> usize {
        self.running
            .iter()
            .position(|s| s.id == id)
            .expect("a planned sequence is running")
    }

    /// The model's input for `plan`: each chunk's tokens, where it starts, its block table,
    /// how many logit rows it needs (one, or a draft's length plus one), and for an embedding
    /// request, its hidden states reduced.
    pub fn batch(&self, plan: &StepPlan) -> Batch<'_> {
        let mut batch = Batch::new(Vec::with_capacity(plan.chunks.len()));
        for chunk in &plan.chunks {
            let seq = &self.running[self.position(chunk.id)];
            let end = seq.computed + chunk.take;
            batch.seqs.push(SeqChunk {
                tokens: &seq.tokens[seq.computed..end],
                cached: seq.computed,
                block_table: &seq.blocks,
            });
            batch.outputs.push(seq.draft + 1);
            let reduce = seq.embedding.as_ref();
            batch
                .hidden
                .push(reduce.and_then(|e| e.reduce(seq.computed, end, seq.prompt_len)));
        }
        if batch.hidden.iter().all(Option::is_none) {
            batch.hidden.clear();
        }
        batch
    }

    /// Applies a step's results, one outcome per chunk of `plan` (the engine's output step
    /// made them from the rows): the chunk's tokens are now in the cache and its full blocks
    /// registered. A chunk that sampled brings its tokens: all but the last are drafted ones the
    /// model kept, so their keys and values stay; past them the draft is rolled back (its
    /// length, and the blocks past it). An embedding request's chunk brings its reduced hidden
    /// states; once its prompt is read it ends. Finished sequences leave, their blocks given
    /// back, and are returned in plan order.
    pub fn update(
        &mut self,
        plan: &StepPlan,
        outcomes: Vec<ChunkOutcome>,
    ) -> Vec<(Sequence, FinishReason)> {
        let mut finished = Vec::new();
        for (chunk, outcome) in plan.chunks.iter().zip(outcomes) {
            let i = self.position(chunk.id);
            let seq = &mut self.running[i];
            let draft = seq.take_draft();
            let start = seq.computed;
            seq.computed += chunk.take - draft.len();
            if let (Some(pooled), Some(row)) = (&mut seq.embedding, outcome.hidden) {
                pooled.add(start, row);
            }
            let reason = if seq.embedding.is_some() && seq.pending() == 0 {
                Some(FinishReason::Stop)
            } else if seq.pending() > 0 {
                None // a prompt chunk: no token yet
            } else {
                let accepted = outcome.sampled.len().saturating_sub(1);
                debug_assert_eq!(outcome.sampled[..accepted], draft[..accepted]);
                seq.tokens.extend(&outcome.sampled);
                seq.computed += accepted;
                if !draft.is_empty() {
                    seq.drafted += draft.len();
                    seq.accepted += accepted;
                    if let Some(drafter) = &mut seq.drafter {
                        drafter.record(draft.len(), accepted);
                    }
                    // Past the kept tokens and the one just sampled, the blocks go back.
                    let len = seq.computed + 1;
                    self.kv.roll_back(seq, len);
                }
                outcome.finish
            };
            self.kv.register_full(seq);
            if let Some(reason) = reason {
                let mut seq = self.running.remove(i);
                self.kv.free(&mut seq);
                finished.push((seq, reason));
            }
        }
        finished
    }

    /// A step that failed as a whole: its sequences leave, blocks given back.
    pub fn abort(&mut self, plan: &StepPlan) -> Vec<Sequence> {
        plan.chunks
            .iter()
            .map(|chunk| {
                let mut seq = self.running.remove(self.position(chunk.id));
                seq.take_draft();
                self.kv.free(&mut seq);
                seq
            })
            .collect()
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
