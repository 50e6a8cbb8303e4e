//! The KV cache's block bookkeeping in one place beside the scheduler (vLLM v1's
//! `KVCacheManager`): blocks allocated as sequences grow, cached prefixes taken at admission,
//! full blocks registered in the prefix cache, a rejected draft's tail rolled back, and every
//! block given back when a sequence leaves or is preempted. The scheduler decides what runs;
//! this says what the blocks allow.

use crate::block_pool::{BlockName, BlockPool};
use crate::sequence::Sequence;

pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
}

impl KvCacheManager {
    pub fn new(pool: BlockPool, block_size: usize) -> Self {
        Self { pool, block_size }
    }

    pub fn num_free(&self) -> usize {
        self.pool.num_free()
    }

    /// Grows `seq`'s block table to hold `len` tokens; false (and nothing taken) if too few
    /// blocks are free.
    pub fn reserve(&mut self, seq: &mut Sequence, len: usize) -> bool {
        let needed = len
            .div_ceil(self.block_size)
            .saturating_sub(seq.blocks.len());
        if needed > self.pool.num_free() {
            return false;
        }
        for _ in 0..needed {
            seq.blocks
                .push(self.pool.allocate().expect("counted free blocks"));
        }
        true
    }

    /// Reuses cached blocks for the longest cached prefix of `seq`'s tokens, leaving at least
    /// one token to compute (its logits are needed). Returns how many tokens were found.
    pub fn take_cached_prefix(&mut self, seq: &mut Sequence) -> usize {
        debug_assert!(seq.blocks.is_empty() && seq.computed == 0);
        let bs = self.block_size;
        let full = (seq.tokens.len() - 1) / bs;
        for chunk in seq.tokens.chunks(bs).take(full) {
            let parent = seq.names.last();
            let hash = self.pool.hash(parent.map(|p| p.hash), chunk);
            match self
                .pool
                .take_cached(hash, parent.map(|p| p.content), chunk)
            {
                Some((block, content)) => {
                    seq.blocks.push(block);
                    seq.names.push(BlockName { hash, content });
                }
                None => break,
            }
        }
        seq.computed = seq.blocks.len() * bs;
        seq.computed
    }

    /// Registers the blocks of `seq` that became full in the prefix cache.
    pub fn register_full(&mut self, seq: &mut Sequence) {
        let bs = self.block_size;
        while (seq.names.len() + 1) * bs <= seq.computed {
            let i = seq.names.len();
            let tokens = &seq.tokens[i * bs..(i + 1) * bs];
            let parent = seq.names.last();
            let hash = self.pool.hash(parent.map(|p| p.hash), tokens);
            let content =
                self.pool
                    .register(seq.blocks[i], hash, parent.map(|p| p.content), tokens);
            seq.names.push(BlockName { hash, content });
        }
    }

    /// Gives back the blocks past those `len` tokens need (a rejected draft's tail). Blocks
    /// already registered stay.
    pub fn roll_back(&mut self, seq: &mut Sequence, len: usize) {
        let keep = len.div_ceil(self.block_size).max(seq.names.len());
        if seq.blocks.len() > keep {
            self.pool.release(&seq.blocks[keep..]);
            seq.blocks.truncate(keep);
        }
    }

    /// Gives every block of `seq` back; it recomputes from scratch if it runs again.
    pub fn free(&mut self, seq: &mut Sequence) {
        self.pool.release(&seq.blocks);
        seq.blocks.clear();
        seq.names.clear();
        seq.computed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(id: u64, prompt: Vec<u32>) -> Sequence {
        Sequence::new(id, prompt, 8)
    }

    #[test]
    fn blocks_grow_roll_back_and_come_back() {
        let mut kv = KvCacheManager::new(BlockPool::new(4, true), 4);
        let mut seq = sequence(1, (0..6).collect());
        assert!(kv.reserve(&mut seq, 6));
        assert_eq!((seq.blocks.len(), kv.num_free()), (2, 2));
        assert!(!kv.reserve(&mut seq, 17), "five blocks do not fit in four");
        assert_eq!(kv.num_free(), 2, "a refused reserve takes nothing");
        assert!(kv.reserve(&mut seq, 13));
        assert_eq!(kv.num_free(), 0);
        // A rejected draft: only what 6 tokens need stays.
        kv.roll_back(&mut seq, 6);
        assert_eq!((seq.blocks.len(), kv.num_free()), (2, 2));
        kv.free(&mut seq);
        assert_eq!((seq.blocks.len(), seq.computed, kv.num_free()), (0, 0, 4));
    }

    #[test]
    fn registered_blocks_serve_the_next_prompt_and_survive_a_roll_back() {
        let mut kv = KvCacheManager::new(BlockPool::new(8, true), 4);
        let prompt: Vec<u32> = (0..10).collect();
        let mut first = sequence(1, prompt.clone());
        assert!(kv.reserve(&mut first, 10));
        first.computed = 10;
        kv.register_full(&mut first);
        assert_eq!(first.names.len(), 2, "two full blocks of four");
        kv.roll_back(&mut first, 1);
        assert_eq!(first.blocks.len(), 2, "registered blocks are kept");
        let mut second = sequence(2, prompt);
        assert_eq!(kv.take_cached_prefix(&mut second), 8);
        assert_eq!(second.blocks, first.blocks[..2]);
        kv.free(&mut first);
        kv.free(&mut second);
        assert_eq!(kv.num_free(), 8);
    }
}
