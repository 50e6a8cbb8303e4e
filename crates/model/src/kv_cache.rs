//! The paged KV cache: per layer, keys and values in fixed-size blocks of token slots, as
//! tensors on the model's device, in its dtype and in the layout of its attention
//! implementation. Only the model makes one ([`crate::Model::new_kv_cache`]) and only the
//! model reads or writes it; whoever holds it (the engine) deals in block ids alone.

use crate::attention::LayerKv;
use crate::error::{ModelError, Result};

/// Tokens per block unless configured otherwise (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    /// The attention implementation whose layout the tensors have.
    pub(crate) layout: &'static str,
    pub(crate) layers: Vec<LayerKv>,
}

impl KvCache {
    pub(crate) fn new(
        block_size: usize,
        num_blocks: usize,
        layout: &'static str,
        layers: Vec<LayerKv>,
    ) -> Self {
        Self {
            block_size,
            num_blocks,
            layout,
            layers,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
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
