//! Engine settings on the command line, shared by every subcommand that runs the engine:
//! where the model runs, in which dtype, with which attention, and how the KV cache is sized.

use anyhow::Context;
use candle_core::{DType, Device};
use ferrollama_engine::{EngineConfig, Speculation};
use ferrollama_model::device::{select_device, DeviceRequest};
use ferrollama_model::memory::{activation_bytes, MemoryBudget};
use ferrollama_model::{AttentionKind, LoadOptions, LoadedModel};

#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Where the model runs: auto (a GPU when this build and the machine have one, else the
    /// CPU), cpu, cuda, cuda:N.
    #[arg(long, env = "FERROLLAMA_DEVICE", default_value = "auto")]
    pub device: DeviceRequest,
    /// Float type of activations (and of the KV cache, unless --kv-cache-dtype says otherwise):
    /// auto (f32 on the CPU; on CUDA bf16 where the device and the build are 8.0+, else f16),
    /// f32, f16, bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeArg,
    /// Attention implementation: auto (native on the CPU, our kernels on CUDA), native,
    /// generic (candle ops on any device), cuda.
    #[arg(long, default_value = "auto")]
    pub attention: AttentionKind,
    /// Element type of the KV cache: auto (f16 for the native CPU kernels, as llama.cpp; the
    /// --dtype elsewhere), f16, f32 (native attention only: twice the memory per token).
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: DTypeArg,
    /// Memory for the KV cache, in bytes (suffixes K, M, G, KiB, MiB, GiB accepted)
    /// [default: 1GiB on the CPU; on a GPU, what --gpu-memory-utilization leaves].
    #[arg(long, value_parser = parse_bytes)]
    pub kv_cache_memory: Option<usize>,
    /// Share of the GPU's memory to fill with weights, activations and the KV cache.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Most tokens in one forward pass: prompt chunks and decodes together.
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Most sequences generating at once.
    #[arg(long, env = "OLLAMA_NUM_PARALLEL", default_value_t = 32)]
    pub max_seqs: usize,
    /// Most requests waiting for their first step; past it, requests get 503 with Retry-After.
    #[arg(long, env = "OLLAMA_MAX_QUEUE", default_value_t = 512)]
    pub max_queue: usize,
    /// Turn off the prefix cache.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Prefill each prompt in one step instead of in chunks.
    #[arg(long)]
    pub no_chunked_prefill: bool,
    /// Threads for the model's math [default: RAYON_NUM_THREADS, else one per core].
    #[arg(long, env = "FERROLLAMA_THREADS")]
    pub threads: Option<usize>,
    /// Pin each math thread to one core. On a 2-core VM it gains nothing since one stream's
    /// steps run on a spinning team (one stream 0.998×), and 16 streams ran ~5% slower (an
    /// HTTP thread can then stall a pinned worker).
    #[arg(long, env = "FERROLLAMA_PIN_THREADS")]
    pub pin_threads: bool,
    /// Speculative decoding: ngram (drafts from the prompt and output so far, checked in one
    /// forward; the same tokens, fewer steps, where replies repeat their prompt) or off.
    #[arg(long, env = "FERROLLAMA_SPECULATIVE", default_value = "ngram")]
    pub speculative: SpeculativeArg,
    /// Most draft tokens per sequence and step (the draft length adapts below it, doubling
    /// while every drafted token is kept, halving while fewer than half are).
    #[arg(long, default_value_t = 8)]
    pub num_speculative_tokens: usize,
    /// Speculate only while at most this many sequences run: past it a step is compute-bound
    /// and checking drafts costs what they save (SmolLM2 on 2 cores, code edits, speculating at
    /// any batch: 1.22x at 2 streams, 1.10x at 4, 1.21x at 8, 1.21x at 16; unmeasured above).
    #[arg(long, default_value_t = 16)]
    pub speculative_max_batch: usize,
}

/// `--speculative`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpeculativeArg {
    Ngram,
    Off,
}

impl EngineArgs {
    pub fn load_options(&self) -> anyhow::Result<LoadOptions> {
        Ok(LoadOptions {
            device: select_device(self.device)?,
            dtype: self.dtype.0,
            attention: self.attention,
            kv_dtype: self.kv_cache_dtype.0,
            dequantize: false,
        })
    }

    /// The engine's settings for `model`; on a GPU the KV cache gets what the memory plan
    /// leaves, and a configuration that cannot fit fails here, with the numbers.
    pub fn config(&self, model: &LoadedModel) -> anyhow::Result<EngineConfig> {
        let mut config = EngineConfig {
            max_batch_tokens: self.max_batch_tokens.max(1),
            max_seqs: self.max_seqs.max(1),
            prefix_caching: !self.no_prefix_caching,
            chunked_prefill: !self.no_chunked_prefill,
            threads: self.threads.unwrap_or(0),
            pin_threads: self.pin_threads,
            max_queue: self.max_queue.max(1),
            speculation: (self.speculative == SpeculativeArg::Ngram
                && self.num_speculative_tokens > 0)
                .then_some(Speculation {
                    max_draft: self.num_speculative_tokens,
                    max_batch: self.speculative_max_batch,
                }),
            ..EngineConfig::default()
        };
        config.kv_cache_memory = match model.model.device() {
            Device::Cpu => self.kv_cache_memory.unwrap_or(1 << 30),
            device => self.gpu_kv_cache_memory(model, device, &config)?,
        };
        Ok(config)
    }

    fn gpu_kv_cache_memory(
        &self,
        model: &LoadedModel,
        device: &Device,
        config: &EngineConfig,
    ) -> anyhow::Result<usize> {
        if !(0.05..=1.0).contains(&self.gpu_memory_utilization) {
            anyhow::bail!("--gpu-memory-utilization must be within 0.05..=1.0");
        }
        let (free, total) = ferrollama_model::device::gpu_memory(device)?;
        let m = &model.model;
        let budget = MemoryBudget {
            total,
            in_use: total - free,
            utilization: self.gpu_memory_utilization,
            activations: activation_bytes(
                m.config(),
                m.dtype(),
                m.attention(),
                config.max_batch_tokens,
                config.max_seqs,
                m.config().max_position_embeddings,
            ),
        };
        // At least one full step's worth of blocks.
        let min_blocks = config.max_batch_tokens.div_ceil(config.block_size) + 1;
        let fits = budget
            .kv_cache_bytes(m.kv_block_bytes(config.block_size), min_blocks)
            .context("planning GPU memory")?;
        match self.kv_cache_memory {
            Some(asked) if asked > fits => anyhow::bail!(
                "--kv-cache-memory {asked} bytes does not fit: the plan leaves {fits} bytes \
                 (drop the flag to take all of it)"
            ),
            Some(asked) => Ok(asked),
            None => Ok(fits),
        }
    }
}

/// `--dtype`: a float type, or `auto` (`None`) to follow the device.
#[derive(Debug, Clone, Copy)]
pub struct DTypeArg(pub Option<DType>);

impl std::str::FromStr for DTypeArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self(None)),
            "f32" => Ok(Self(Some(DType::F32))),
            "f16" => Ok(Self(Some(DType::F16))),
            "bf16" => Ok(Self(Some(DType::BF16))),
            _ => Err(format!("unknown dtype `{text}` (auto, f32, f16, bf16)")),
        }
    }
}

fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
    }
}
