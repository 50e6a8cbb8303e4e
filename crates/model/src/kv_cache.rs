//! The paged KV cache: per layer, keys and values in fixed-size blocks of token slots. Which
//! blocks belong to which sequence is the engine's business; the model only reads and writes
//! the slots that a batch's block tables name.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Tokens per block unless configured otherwise (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// CPU storage: slot `s` of block `b` holds `kv_heads * head_dim` floats at
/// `(b * block_size + s) * kv_heads * head_dim`.
pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    /// Floats of one token slot: `kv_heads * head_dim`.
    slot_width: usize,
    layers: Vec<LayerCache>,
}

pub struct LayerCache {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

impl KvCache {
    pub fn new(config: &ModelConfig, block_size: usize, num_blocks: usize) -> Self {
        let slot_width = config.num_kv_heads * config.head_dim;
        let floats = num_blocks * block_size * slot_width;
        let layers = (0..config.num_layers)
            .map(|_| LayerCache {
                keys: vec![0.0; floats],
                values: vec![0.0; floats],
            })
            .collect();
        Self {
            block_size,
            num_blocks,
            slot_width,
            layers,
        }
    }

    /// How many blocks fit in `bytes` of memory.
    pub fn blocks_for_bytes(config: &ModelConfig, block_size: usize, bytes: usize) -> usize {
        bytes / Self::bytes_per_block(config, block_size)
    }

    pub fn bytes_per_block(config: &ModelConfig, block_size: usize) -> usize {
        // Keys and values, every layer, f32.
        2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * 4
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn slot_width(&self) -> usize {
        self.slot_width
    }

    pub fn layer_mut(&mut self, layer: usize) -> &mut LayerCache {
        &mut self.layers[layer]
    }

    /// The slot index of `position` in a sequence with `block_table`.
    pub(crate) fn slot(&self, block_table: &[u32], position: usize) -> usize {
        block_table[position / self.block_size] as usize * self.block_size
            + position % self.block_size
    }

    /// Rejects block tables that do not cover their sequence or name blocks we do not have.
    pub(crate) fn check_table(&self, block_table: &[u32], context_len: usize) -> Result<()> {
        let needed = context_len.div_ceil(self.block_size);
        if block_table.len() < needed {
            return Err(ModelError::Batch(format!(
                "{context_len} tokens need {needed} blocks, the table has {}",
                block_table.len()
            )));
        }
        if let Some(bad) = block_table[..needed]
            .iter()
            .find(|&&b| b as usize >= self.num_blocks)
        {
            return Err(ModelError::Batch(format!(
                "block {bad} out of range (the cache has {})",
                self.num_blocks
            )));
        }
        Ok(())
    }
}
