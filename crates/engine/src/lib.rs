//! The engine turns requests (prompt token ids, sampling parameters, stop criteria) into
//! streams of events, serving many at once (embedding requests too: a prompt read, its final
//! hidden states pooled, nothing generated): continuous batching over the model's paged KV
//! cache, with chunked prefill, prefix caching and preemption by recompute. It knows token
//! ids and text, never HTTP.
//!
//! Where things are: the loop in `engine.rs`, what runs each step in `scheduler.rs` (over the
//! scheduler's record of each request, `sequence.rs`), KV blocks and the prefix cache in
//! `block_pool.rs`, who holds which in `kv_cache_manager.rs`, what turns a request's rows into
//! tokens and text in `output.rs`: token choice in `sampler/` (under the grammar of
//! `constraint.rs`, when a request has one), stop strings in `stop.rs`; speculative drafts in
//! `draft.rs`.

pub mod block_pool;
pub mod constraint;
pub mod draft;
pub mod engine;
pub mod kv_cache_manager;
pub mod output;
pub mod request;
mod rows;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod stop;

pub use constraint::{Constraint, Grammar, Grammars};
pub use engine::{
    start, EngineConfig, EngineError, EngineHandle, EngineStats, Field, RequestStream,
};
pub use request::{Event, FinishReason, GenerationRequest, Timings, Usage};
pub use sampler::{SamplingError, SamplingParams};
pub use scheduler::Speculation;
