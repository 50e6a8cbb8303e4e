//! The model crate knows math and weights, nothing else: a Mistral/Llama-family transformer
//! whose forward runs a flat batch of new tokens from several sequences over a paged KV cache;
//! loaders for safetensors, GGUF and random weights; tokenizers; chat templates; the
//! device/dtype policy; and BERT encoders for embeddings (`encoder/`). No HTTP, no queues: the engine above decides what runs when.

pub mod architecture;
pub mod attention;
pub mod batch;
pub mod chat;
pub mod config;
pub mod cpu;
pub mod describe;
pub mod device;
pub mod encoder;
pub mod error;
pub mod fused;
#[doc(hidden)]
pub mod fuzzing;
pub mod kv_cache;
pub mod linear;
pub mod load;
pub mod memory;
pub mod model;
pub mod pooling;
pub mod rng;
pub mod rope;
pub mod tokenizer;
pub mod top_k;
pub mod weights;

pub use architecture::Architecture;
pub use attention::{AttentionKind, AttentionSpec};
pub use batch::{Batch, Logits, Reduce, SeqChunk};
pub use chat::{
    python_json, ChatMessage, ChatTemplate, FunctionSpec, Opening, Role, ToolCall, ToolSyntax,
};
pub use config::ModelConfig;
pub use describe::Description;
pub use encoder::{is_encoder, Encoder, Pooling};
pub use error::{ModelError, Result};
pub use kv_cache::KvCache;
pub use load::{load, tokenizer_and_template, LoadOptions, LoadedModel, ModelSource};
pub use model::{Model, ModelOptions, StepOutput};
pub use tokenizer::{Detokenizer, Tokenizer};
