//! GPU memory planning: the weights, the activations of the largest step, and the KV pool
//! must fit in `--gpu-memory-utilization` of the card, and the pool takes what is left. An
//! impossible configuration fails at start with the numbers, never with an out-of-memory
//! error in the middle of a request (the pool is allocated whole at start).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use candle_core::DType;

const GIB: f64 = (1u64 << 30) as f64;

/// Fixed headroom for what no formula sees: cuBLAS workspaces, the quantized matmul's
/// workspace, the allocator's fragmentation.
pub const RUNTIME_RESERVE: usize = 512 << 20;

/// What the card has and what is already spoken for.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBudget {
    /// The card's memory.
    pub total: usize,
    /// In use once the weights are loaded: weights, CUDA context, other processes.
    pub in_use: usize,
    /// The share of `total` ferrollama may fill (`--gpu-memory-utilization`).
    pub utilization: f64,
    /// Peak activations of one step (see [`activation_bytes`]).
    pub activations: usize,
}

impl MemoryBudget {
    /// Bytes for the KV pool: at least `min_blocks` blocks of `block_bytes`, else an error
    /// that shows the arithmetic.
    pub fn kv_cache_bytes(&self, block_bytes: usize, min_blocks: usize) -> Result<usize> {
        let allowed = (self.total as f64 * self.utilization) as i128;
        let left =
            allowed - self.in_use as i128 - self.activations as i128 - RUNTIME_RESERVE as i128;
        let needed = (block_bytes * min_blocks) as i128;
        if left < needed {
            return Err(ModelError::Memory(format!(
                "{:.2} GiB × {} = {:.2} GiB allowed; in use after loading the weights {:.2} GiB, \
                 activations at this batch size {:.2} GiB, runtime reserve {:.2} GiB: {:.2} GiB \
                 left for the KV cache, which needs at least {:.2} GiB ({min_blocks} blocks). \
                 Raise --gpu-memory-utilization, lower --max-batch-tokens or --max-seqs, or use \
                 a smaller model",
                self.total as f64 / GIB,
                self.utilization,
                allowed as f64 / GIB,
                self.in_use as f64 / GIB,
                self.activations as f64 / GIB,
                RUNTIME_RESERVE as f64 / GIB,
                left as f64 / GIB,
                needed as f64 / GIB,
            )));
        }
        Ok(left as usize)
    }
}

/// A generous estimate of one step's peak activation memory with `tokens` new tokens from up
/// to `seqs` sequences whose contexts reach `context` tokens.
pub fn activation_bytes(
    config: &ModelConfig,
    dtype: DType,
    attention: &str,
    tokens: usize,
    seqs: usize,
    context: usize,
) -> usize {
    let s = dtype.size_in_bytes();
    let c = config;
    let q_width = c.num_heads * c.head_dim;
    let kv_width = c.num_kv_heads * c.head_dim;
    // Residual, norm output, attention output, q/k/v, and the MLP's gate, up and product; the
    // allocator may hold two layers' worth at once.
    let per_token = 4 * c.hidden_size + 2 * q_width + 2 * kv_width + 3 * c.intermediate_size;
    let layer = 2 * tokens * per_token * s;
    // Logits in the dtype and in f32.
    let logits = seqs.min(tokens) * c.vocab_size * (s + 4);
    let attention_scratch = match attention {
        // Per decode row and head: one f32 partial result per 512-key partition; shorter
        // partitions only where few rows leave the GPU idle, at most 512 thread blocks of up
        // to 8 heads each (crates/kernels/src/plan.rs).
        "cuda" => (tokens * c.num_heads * context.div_ceil(512) + 512 * 8) * (c.head_dim + 2) * 4,
        // Scores and probabilities over every key (f32 and the dtype), plus gathered keys
        // and values.
        _ => tokens * c.num_heads * context * (4 + 4 + s) + 2 * context * kv_width * s,
    };
    layer + logits + attention_scratch
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn mistral() -> ModelConfig {
        ModelConfig::named("mistral-7b").unwrap()
    }

    #[test]
    fn a_t4_with_mistral_q4_0_gets_a_pool_of_gigabytes() {
        // A T4 reports 15,095 MiB; Mistral-7B Q4_0 plus context takes about 4.4 GiB.
        let activations = activation_bytes(&mistral(), DType::F16, "cuda", 512, 32, 32768);
        let budget = MemoryBudget {
            total: 15_095 * MIB,
            in_use: 4_500 * MIB,
            utilization: 0.9,
            activations,
        };
        let kv = budget.kv_cache_bytes(2 * 1024 * 1024, 1).unwrap();
        // 128 KiB a token in f16: tens of thousands of tokens fit.
        let tokens = kv / (128 << 10);
        assert!((30_000..80_000).contains(&tokens), "{tokens} tokens");
        assert!(
            activations > 100 * MIB && activations < 2048 * MIB,
            "{activations}"
        );
    }

    #[test]
    fn an_impossible_configuration_fails_with_the_numbers() {
        let budget = MemoryBudget {
            total: 16_000 * MIB,
            in_use: 14_000 * MIB,
            utilization: 0.9,
            activations: 300 * MIB,
        };
        let err = budget.kv_cache_bytes(2 * MIB, 16).unwrap_err().to_string();
        assert!(err.contains("15.62 GiB × 0.9 = 14.06 GiB allowed"), "{err}");
        assert!(
            err.contains("in use after loading the weights 13.67 GiB"),
            "{err}"
        );
        assert!(err.contains("--gpu-memory-utilization"), "{err}");
    }

    #[test]
    fn the_generic_path_needs_more_scratch_than_the_kernels() {
        let c = mistral();
        let kernels = activation_bytes(&c, DType::F16, "cuda", 512, 32, 8192);
        let generic = activation_bytes(&c, DType::F16, "generic", 512, 32, 8192);
        assert!(generic > 2 * kernels, "{generic} vs {kernels}");
    }
}
