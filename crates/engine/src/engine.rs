//! The engine loop, on its own thread: take new requests, plan a step (the scheduler), run the
//! model once on that batch, then the output step: sample each finished chunk's rows with the
//! request's own output state (`output.rs`), send text and events, and hand the scheduler the
//! sampled tokens as data; free what finished or was cancelled. The handle is what the rest of
//! the program holds.

use crate::block_pool::BlockPool;
use crate::constraint::Constraint;
use crate::draft::Drafter;
use crate::output::{Context, RequestOutput};
use crate::request::{Event, FinishReason, GenerationRequest, Timings, Usage};
use crate::rows::{read_rows, Row};
use crate::sampler::Need;
use crate::scheduler::{Chunk, ChunkOutcome, Scheduler, SchedulerConfig, Speculation, StepPlan};
use crate::sequence::{Pooled, Sequence};
use ferrollama_model::cpu::team::with_team;
use ferrollama_model::top_k::TOP_K_MAX;
use ferrollama_model::{KvCache, LoadedModel, Pooling};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub block_size: usize,
    /// Bytes of KV cache (`--kv-cache-memory`).
    pub kv_cache_memory: usize,
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    pub prefix_caching: bool,
    pub chunked_prefill: bool,
    /// Threads of the engine's pool; 0 takes RAYON_NUM_THREADS, else one per core.
    pub threads: usize,
    /// Pin pool thread `i` to core `i` (Linux; elsewhere a no-op).
    pub pin_threads: bool,
    /// Most requests waiting for their first step (`OLLAMA_MAX_QUEUE`); past it, submissions
    /// are refused.
    pub max_queue: usize,
    /// Bits of the prefix cache's lookup hash: 64, or fewer in tests that force collisions
    /// (a collision is a miss; hits compare tokens).
    pub prefix_hash_bits: u32,
    /// Speculative decoding by prompt lookup (off: `None`).
    pub speculation: Option<Speculation>,
    /// Whether each logit row comes back only as its draw needs (argmaxes, shortlists and
    /// normalizers: a GPU's way, `crate::rows`) rather than whole. None: where the logits are
    /// on a GPU. Tests turn it on to run the GPU's way on the CPU.
    pub rows_as_needed: Option<bool>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: ferrollama_model::kv_cache::DEFAULT_BLOCK_SIZE,
            kv_cache_memory: 1 << 30,
            max_batch_tokens: 512,
            max_seqs: 32,
            prefix_caching: true,
            chunked_prefill: true,
            threads: 0,
            pin_threads: false,
            max_queue: 512,
            prefix_hash_bits: 64,
            speculation: None,
            rows_as_needed: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens, but the model's context holds {context}; shorten it")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("the prompt needs {needed} KV cache blocks; the cache has {total} (raise --kv-cache-memory)")]
    CacheTooSmall { needed: usize, total: usize },
    #[error(transparent)]
    Sampling(#[from] crate::sampler::SamplingError),
    #[error("token id {token} is not in the vocabulary (ids below {vocab})")]
    UnknownToken { token: u32, vocab: usize },
    #[error("max_tokens must be at least 1")]
    NoTokensAllowed,
    #[error("the engine has stopped")]
    Stopped,
    /// Ollama's words for it (`OLLAMA_MAX_QUEUE`).
    #[error("server busy, please try again.  maximum pending requests exceeded ({limit})")]
    QueueFull { limit: usize },
}

/// The part of a request an [`EngineError`] is about, for an error that names its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The prompt (a chat's messages, a completion's prompt).
    Prompt,
    /// The most tokens to generate.
    MaxTokens,
    /// A sampling parameter, by its request name (`temperature`, `top_p`, ...).
    Sampling(&'static str),
}

impl EngineError {
    /// What in the request was wrong; `None` for the server's own state (stopped, busy).
    pub fn field(&self) -> Option<Field> {
        match self {
            Self::EmptyPrompt
            | Self::PromptTooLong { .. }
            | Self::CacheTooSmall { .. }
            | Self::UnknownToken { .. } => Some(Field::Prompt),
            Self::NoTokensAllowed => Some(Field::MaxTokens),
            Self::Sampling(e) => Some(Field::Sampling(e.field)),
            Self::Stopped | Self::QueueFull { .. } => None,
        }
    }
}

/// What the engine is doing, for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub free_blocks: usize,
    pub total_blocks: usize,
    pub preemptions: u64,
    pub steps: u64,
}

enum Command {
    /// A request: the scheduler's record of it, and what the engine turns its rows into text
    /// with.
    Submit(Box<(Sequence, RequestOutput)>),
    /// End every request now with this error (the server is shutting down).
    AbortAll(String),
}

/// The caller's side of one request: events until `Finished`. Dropping it cancels the request;
/// [`RequestStream::cancel`] does too, and still brings its `Finished` event with the usage
/// so far (for the log and metrics of a request whose client left).
pub struct RequestStream {
    rx: UnboundedReceiver<Event>,
    cancelled: Arc<AtomicBool>,
}

impl RequestStream {
    /// Ends the request at the engine's next look (between layers of a running step); its
    /// `Finished` event, reason `Cancelled`, still comes through this stream.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// For callers outside an async runtime.
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    stats: Arc<Mutex<EngineStats>>,
    next_id: Arc<AtomicU64>,
    /// Requests submitted that have not had their first step yet.
    queued: Arc<AtomicUsize>,
    /// False once the engine thread has ended (a panic; handles still exist).
    alive: Arc<AtomicBool>,
    max_queue: usize,
    context: usize,
    vocab_size: usize,
    capacity_blocks: usize,
    block_size: usize,
    speculation: Option<Speculation>,
}

impl EngineHandle {
    /// Several choices over one prompt (OpenAI's `n`): the first reads the prompt, the others
    /// start from its cached blocks (with prefix caching on) instead of reading it again.
    pub fn submit_forks(
        &self,
        requests: Vec<GenerationRequest>,
    ) -> Result<Vec<RequestStream>, EngineError> {
        // Validate every choice before any starts.
        let made = requests
            .into_iter()
            .map(|r| self.sequence(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.enqueue(made.len())?;
        let leader = made.first().map(|((seq, _), _)| seq.id);
        let mut streams = Vec::with_capacity(made.len());
        for (i, ((mut seq, output), stream)) in made.into_iter().enumerate() {
            seq.leader = leader.filter(|_| i > 0);
            self.commands
                .send(Command::Submit(Box::new((seq, output))))
                .map_err(|_| EngineError::Stopped)?;
            streams.push(stream);
        }
        Ok(streams)
    }

    /// An embedding request: the model reads `prompt` (scheduled as any prompt is, beside
    /// generation) and gives its final hidden states pooled: one [`Event::Embedding`], then
    /// `Finished`. The whole context is the limit: nothing is generated after it.
    pub fn embed(&self, prompt: Vec<u32>, pooling: Pooling) -> Result<RequestStream, EngineError> {
        let mut request = GenerationRequest::new(prompt, 1);
        request.speculative = Some(false);
        let ((mut seq, output), stream) = self.checked(request, 0)?;
        seq.embedding = Some(Pooled::new(pooling));
        self.enqueue(1)?;
        self.commands
            .send(Command::Submit(Box::new((seq, output))))
            .map_err(|_| EngineError::Stopped)?;
        Ok(stream)
    }

    pub fn submit(&self, request: GenerationRequest) -> Result<RequestStream, EngineError> {
        let (submission, stream) = self.sequence(request)?;
        self.enqueue(1)?;
        self.commands
            .send(Command::Submit(Box::new(submission)))
            .map_err(|_| EngineError::Stopped)?;
        Ok(stream)
    }

    /// Takes `n` places in the queue, or none if that would pass its limit.
    fn enqueue(&self, n: usize) -> Result<(), EngineError> {
        let before = self.queued.fetch_add(n, Ordering::SeqCst);
        if before + n > self.max_queue {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(EngineError::QueueFull {
                limit: self.max_queue,
            });
        }
        Ok(())
    }

    /// Ends every request at once, each with a final event carrying `message`.
    pub fn abort_all(&self, message: impl Into<String>) {
        let _ = self.commands.send(Command::AbortAll(message.into()));
    }

    /// Validates a request and makes its sequence: every check happens here, at the door, so
    /// a bad request fails alone and never inside another request's step.
    fn sequence(
        &self,
        request: GenerationRequest,
    ) -> Result<(Submission, RequestStream), EngineError> {
        self.checked(request, 1)
    }

    /// As [`EngineHandle::sequence`], with room in the context for `generates` tokens after
    /// the prompt (at least one for generation, none for an embedding).
    fn checked(
        &self,
        request: GenerationRequest,
        generates: usize,
    ) -> Result<(Submission, RequestStream), EngineError> {
        if request.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if request.prompt.len() + generates > self.context {
            return Err(EngineError::PromptTooLong {
                prompt: request.prompt.len(),
                context: self.context,
            });
        }
        let needed = (request.prompt.len() + generates).div_ceil(self.block_size);
        if needed > self.capacity_blocks {
            return Err(EngineError::CacheTooSmall {
                needed,
                total: self.capacity_blocks,
            });
        }
        if let Some(&token) = request
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(EngineError::UnknownToken {
                token,
                vocab: self.vocab_size,
            });
        }
        if request.max_tokens == 0 {
            return Err(EngineError::NoTokensAllowed);
        }
        request.sampling.validate()?;
        let (tx, rx) = unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let drafter = self
            .speculation
            .filter(|_| request.speculative != Some(false))
            .map(|spec| Drafter::new(spec.max_draft));
        let output = RequestOutput::new(&request, tx);
        let mut seq = Sequence::new(id, request.prompt, request.max_tokens);
        seq.drafter = drafter;
        let cancelled = output.cancelled.clone();
        Ok(((seq, output), RequestStream { rx, cancelled }))
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// The model's context length in tokens.
    pub fn context_len(&self) -> usize {
        self.context
    }

    /// Whether the engine thread still runs: false after it died, so readiness can say so.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// Marks the engine dead when its thread ends, however it ends (a panic included).
struct AliveFlag(Arc<AtomicBool>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Starts the engine thread. It runs until every handle is dropped and its work is done.
/// Fails only when the model cannot allocate the KV cache.
pub fn start(
    model: Arc<LoadedModel>,
    config: EngineConfig,
) -> ferrollama_model::Result<EngineHandle> {
    let model_config = model.config();
    let num_blocks =
        (config.kv_cache_memory / model.model.kv_block_bytes(config.block_size)).max(1);
    let cache = model.model.new_kv_cache(config.block_size, num_blocks)?;
    let (commands, inbox) = mpsc::channel();
    let stats = Arc::new(Mutex::new(EngineStats {
        free_blocks: num_blocks,
        total_blocks: num_blocks,
        ..Default::default()
    }));
    let handle = EngineHandle {
        commands,
        stats: stats.clone(),
        next_id: Arc::new(AtomicU64::new(0)),
        queued: Arc::new(AtomicUsize::new(0)),
        alive: Arc::new(AtomicBool::new(true)),
        max_queue: config.max_queue,
        context: model_config.max_position_embeddings,
        vocab_size: model_config.vocab_size,
        capacity_blocks: num_blocks,
        block_size: config.block_size,
        speculation: config.speculation,
    };
    let mut engine = Engine {
        cache,
        scheduler: Scheduler::new(
            SchedulerConfig {
                block_size: config.block_size,
                max_batch_tokens: config.max_batch_tokens,
                max_seqs: config.max_seqs,
                chunked_prefill: config.chunked_prefill,
                speculation: config.speculation,
                max_len: model_config
                    .max_position_embeddings
                    .min(num_blocks * config.block_size),
            },
            BlockPool::new(num_blocks, config.prefix_caching)
                .with_hash_bits(config.prefix_hash_bits),
        ),
        rows_as_needed: config
            .rows_as_needed
            .unwrap_or(!model.model.device().is_cpu()),
        max_len: model_config
            .max_position_embeddings
            .min(num_blocks * config.block_size),
        model,
        stats,
        queued: handle.queued.clone(),
        outputs: HashMap::new(),
    };
    // The loop runs on a worker of the engine's own thread pool (this thread only waits for
    // it): the model's parallel loops then start from inside the pool, where handing out work
    // is a push onto a local queue, instead of a cross-thread injection and a condvar wait for
    // each of the hundreds of loops in a step (measured: a sixth of decode time went to
    // futexes). Its own pool, because an idle engine parks its worker on the inbox.
    let pin = config.pin_threads;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .thread_name(|i| format!("ferrollama-worker-{i}"))
        .start_handler(move |i| {
            if pin {
                pin_to_core(i);
            }
        })
        .build()
        .expect("build the engine's thread pool");
    let alive = handle.alive.clone();
    std::thread::Builder::new()
        .name("ferrollama-engine".into())
        .spawn(move || {
            let _alive = AliveFlag(alive);
            pool.install(move || engine.run(inbox))
        })
        .expect("spawn the engine thread");
    Ok(handle)
}

/// A step of one sequence and at most this many tokens (a decode and its longest draft) runs
/// with the pool's other workers as its team ([`with_team`]): awake through the forward, taking
/// each parallel loop's tasks from a shared counter. Only for one stream's steps: with more,
/// the loops are long, and rayon's stealing balances them better than the spinning workers'
/// cost (workers kept awake in every step, 2 cores, 1.3B Q4_0: one stream 1.14x, 4 streams
/// 0.97x, 16 streams 0.88x).
const SHORT_STEP_TOKENS: usize = 9;

/// Keeps the calling thread on core `i` (modulo the cores this process may use).
fn pin_to_core(i: usize) {
    #[cfg(target_os = "linux")]
    {
        // Safety: `set` is a plain bitset, zeroed, then filled by the libc macro; the call
        // reads it and changes only this thread's affinity.
        unsafe {
            let mut allowed: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
                return;
            }
            let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &allowed))
                .collect();
            if cores.is_empty() {
                return;
            }
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cores[i % cores.len()], &mut set);
            if libc::sched_setaffinity(0, size, &set) != 0 {
                tracing::warn!(
                    "could not pin math thread {i}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = i;
}

/// A request on its way in: the scheduler's record, and the engine's output state.
type Submission = (Sequence, RequestOutput);

struct Engine {
    model: Arc<LoadedModel>,
    cache: KvCache,
    scheduler: Scheduler,
    /// Per request in the scheduler: what turns its rows into tokens, text and events.
    outputs: HashMap<u64, RequestOutput>,
    /// No sequence grows past this: the model's context, or the whole cache.
    max_len: usize,
    /// See [`EngineConfig::rows_as_needed`].
    rows_as_needed: bool,
    stats: Arc<Mutex<EngineStats>>,
    /// The handles' count of requests not yet admitted: the loop lowers it as they leave.
    queued: Arc<AtomicUsize>,
}

impl Engine {
    fn run(&mut self, inbox: mpsc::Receiver<Command>) {
        loop {
            let command = if self.scheduler.is_idle() {
                match inbox.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            } else {
                inbox.try_recv().ok()
            };
            let mut next = command;
            while let Some(command) = next {
                match command {
                    Command::Submit(submission) => {
                        let (seq, output) = *submission;
                        self.outputs.insert(seq.id, output);
                        self.scheduler.add(seq);
                    }
                    Command::AbortAll(message) => self.abort_all(&message),
                }
                next = inbox.try_recv().ok();
            }
            // Requests whose caller hung up or cancelled give their blocks back before the next
            // step; a cancelled one that still listens hears how far it got.
            let outputs = &self.outputs;
            let (left, never_ran) = self
                .scheduler
                .take_where(|seq| outputs.get(&seq.id).is_none_or(RequestOutput::abandoned));
            self.queued.fetch_sub(never_ran, Ordering::SeqCst);
            for seq in left {
                self.finish(seq, FinishReason::Cancelled, None);
            }
            let plan = self.scheduler.schedule();
            self.queued.fetch_sub(plan.admitted, Ordering::SeqCst);
            // What runs now shows while it runs (a long prompt chunk takes seconds).
            self.publish_occupancy();
            if !plan.chunks.is_empty() {
                self.step(&plan);
            }
            self.publish_stats(plan.preempted);
        }
    }

    fn abort_all(&mut self, message: &str) {
        for seq in self.scheduler.remove_all() {
            if seq.first_scheduled.is_none() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
            }
            self.finish(seq, FinishReason::Error, Some(message.to_string()));
        }
    }

    fn step(&mut self, plan: &StepPlan) {
        // Per logit row: what its draw needs (on a GPU, as little of it as crosses to the host).
        let on_device = self.rows_as_needed;
        let max_shortlist = if on_device { TOP_K_MAX } else { 0 };
        let needs = self.needs(plan, max_shortlist);
        // The step stops between layers once every caller in it has gone: a client that
        // hangs up during a long prompt chunk frees the engine at once, not at the chunk's end.
        let callers: Vec<_> = plan
            .chunks
            .iter()
            .filter_map(|c| self.outputs.get(&c.id))
            .map(|o| (o.events.clone(), o.cancelled.clone()))
            .collect();
        let all_gone = || {
            callers
                .iter()
                .all(|(events, cancelled)| events.is_closed() || cancelled.load(Ordering::Relaxed))
        };
        // Grammar masks are computed beside the forward, not after it: they depend only on
        // the tokens so far.
        let sampling: Vec<u64> = plan
            .chunks
            .iter()
            .filter(|c| self.samples(c))
            .map(|c| c.id)
            .collect();
        let mut constrained: Vec<&mut Constraint> = self
            .outputs
            .iter_mut()
            .filter(|(id, _)| sampling.contains(id))
            .filter_map(|(_, o)| o.constraint.as_mut())
            .collect();
        let (model, cache, scheduler) = (&self.model, &mut self.cache, &self.scheduler);
        let output = std::thread::scope(|scope| {
            if !constrained.is_empty() {
                scope.spawn(|| constrained.iter_mut().for_each(|c| c.prepare()));
            }
            let batch = scheduler.batch(plan);
            let mut forward = || model.model.forward_until(&batch, cache, &all_gone);
            let output = if batch.seqs.len() == 1 && batch.num_tokens() <= SHORT_STEP_TOKENS {
                with_team(forward)?
            } else {
                forward()?
            };
            output
                .map(|out| {
                    Ok::<_, ferrollama_model::ModelError>((
                        read_rows(&out.logits, &needs, on_device)?,
                        out.hidden,
                    ))
                })
                .transpose()
        });
        let (rows, hidden) = match output {
            Ok(Some(output)) => output,
            // Abandoned mid-step: the loop takes its sequences out next.
            Ok(None) => return,
            Err(e) => {
                // The batch failed as a whole: its requests get the error, the others go on.
                tracing::error!("forward failed: {e}");
                for seq in self.scheduler.abort(plan) {
                    self.finish(seq, FinishReason::Error, Some(e.to_string()));
                }
                return;
            }
        };
        let outcomes = self.output_step(plan, rows, hidden);
        for (seq, reason) in self.scheduler.update(plan, outcomes) {
            self.finish(seq, reason, None);
        }
    }

    /// Whether `chunk` ends with a sequence's last pending token: its rows are sampled (an
    /// embedding request's never are).
    fn samples(&self, chunk: &Chunk) -> bool {
        let seq = self.scheduler.view(chunk.id);
        seq.pending() == chunk.take && seq.embedding.is_none()
    }

    /// What each logit row of `plan` is needed for (a draft of k tokens brings k + 1 rows,
    /// each sampled in turn), shortlists of at most `max_shortlist` (0: whole rows wherever a
    /// row is sampled from, as on the CPU where the rows are in memory anyway).
    fn needs(&self, plan: &StepPlan, max_shortlist: usize) -> Vec<Need> {
        let mut needs = Vec::with_capacity(plan.chunks.len());
        for chunk in &plan.chunks {
            let seq = self.scheduler.view(chunk.id);
            let need = match self.outputs.get(&chunk.id) {
                Some(output) if self.samples(chunk) => output.need(&context(seq), max_shortlist),
                // A prompt chunk, or an embedding: no token, its row unused.
                _ => Need::Argmax,
            };
            needs.extend(std::iter::repeat_n(need, seq.draft + 1));
        }
        needs
    }

    /// The engine's output step: each chunk that samples has its rows drawn in turn (text and
    /// events sent as they come), and the scheduler gets the tokens as data.
    fn output_step(
        &mut self,
        plan: &StepPlan,
        rows: Vec<Row>,
        hidden: Vec<Option<Vec<f32>>>,
    ) -> Vec<ChunkOutcome> {
        let mut rows = rows.into_iter();
        let mut hidden = hidden.into_iter();
        let mut outcomes = Vec::with_capacity(plan.chunks.len());
        for chunk in &plan.chunks {
            let seq = self.scheduler.view(chunk.id);
            let mut chunk_rows: Vec<Row> = rows.by_ref().take(seq.draft + 1).collect();
            let mut outcome = ChunkOutcome {
                hidden: hidden.next().flatten(),
                ..Default::default()
            };
            if self.samples(chunk) {
                if let Some(output) = self.outputs.get_mut(&chunk.id) {
                    (outcome.sampled, outcome.finish) = output.sample(
                        &context(seq),
                        &mut chunk_rows,
                        &self.model.tokenizer,
                        self.max_len,
                    );
                }
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Sends a finished request's last text, its vector if it is an embedding, and its final
    /// event.
    fn finish(&mut self, mut seq: Sequence, reason: FinishReason, error: Option<String>) {
        let Some(mut output) = self.outputs.remove(&seq.id) else {
            return;
        };
        if reason == FinishReason::Length {
            let text = output.drain_text(&self.model.tokenizer);
            if !text.is_empty() {
                output.send(text, *seq.tokens.last().expect("a generated token"));
            }
        }
        if let (Some(pooled), FinishReason::Stop) = (&mut seq.embedding, reason) {
            let _ = output
                .events
                .send(Event::Embedding(pooled.vector(seq.prompt_len)));
        }
        let error = error.or_else(|| output.failure.take());
        let end = Instant::now();
        let first_scheduled = seq.first_scheduled.unwrap_or(end);
        let first_token = output.first_token.unwrap_or(end);
        let _ = output.events.send(Event::Finished {
            reason,
            usage: Usage {
                prompt_tokens: seq.prompt_len,
                cached_tokens: seq.cached_prompt_tokens.unwrap_or(0),
                generated_tokens: seq.generated(),
                drafted_tokens: seq.drafted,
                accepted_tokens: seq.accepted,
            },
            timings: Timings {
                queue: first_scheduled - seq.arrived,
                prefill: first_token - first_scheduled,
                decode: end - first_token,
            },
            error,
        });
    }

    fn publish_occupancy(&self) {
        let mut stats = self.stats.lock().expect("stats lock");
        stats.running = self.scheduler.num_running();
        stats.waiting = self.scheduler.num_waiting();
        stats.free_blocks = self.scheduler.num_free_blocks();
    }

    fn publish_stats(&self, preempted: usize) {
        let mut stats = self.stats.lock().expect("stats lock");
        stats.running = self.scheduler.num_running();
        stats.waiting = self.scheduler.num_waiting();
        stats.free_blocks = self.scheduler.num_free_blocks();
        stats.preemptions += preempted as u64;
        stats.steps += 1;
    }
}

/// Where a sequence's sampling starts, from the scheduler's record of it.
fn context(seq: &Sequence) -> Context<'_> {
    Context {
        tokens: &seq.tokens,
        draft: seq.draft,
        prompt_len: seq.prompt_len,
    }
}

#[cfg(test)]
mod alive_tests {
    use super::AliveFlag;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_thread_that_panics_is_marked_dead() {
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let thread = std::thread::spawn(move || {
            let _alive = AliveFlag(flag);
            panic!("the engine failed");
        });
        assert!(thread.join().is_err());
        assert!(!alive.load(Ordering::SeqCst));
    }
}
