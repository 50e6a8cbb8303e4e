//! The KV block pool: which cache blocks are free, who shares which, and the prefix cache.
//!
//! A full block is named by the hash of (its parent block's hash, its tokens), so equal
//! prefixes have equal chains of names. Blocks are shared read-only with reference counts.
//! A block nobody references stays cached until it is needed: free blocks are handed out
//! least-recently-released first, and handing one out forgets what it cached.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

pub type BlockHash = u64;

/// The name of a full block: chained over the whole prefix.
pub fn block_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

pub struct BlockPool {
    ref_counts: Vec<u32>,
    /// What a block holds, if it is (or was) registered in the prefix cache.
    hashes: Vec<Option<BlockHash>>,
    cached: HashMap<BlockHash, u32>,
    /// Unreferenced blocks in the order they are handed out again: release tick → block.
    free: BTreeMap<u64, u32>,
    free_key: Vec<Option<u64>>,
    tick: u64,
    caching: bool,
}

impl BlockPool {
    pub fn new(num_blocks: usize, caching: bool) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            hashes: vec![None; num_blocks],
            cached: HashMap::new(),
            free: (0..num_blocks as u32).map(|b| (b as u64, b)).collect(),
            free_key: (0..num_blocks as u64).map(Some).collect(),
            tick: num_blocks as u64,
            caching,
        }
    }

    pub fn total(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// A block for new content (evicting whatever it cached), or None when all are in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let (_, block) = self.free.pop_first()?;
        self.free_key[block as usize] = None;
        if let Some(hash) = self.hashes[block as usize].take() {
            if self.cached.get(&hash) == Some(&block) {
                self.cached.remove(&hash);
            }
        }
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// Takes a reference to the cached block named `hash`, if there is one.
    pub fn take_cached(&mut self, hash: BlockHash) -> Option<u32> {
        if !self.caching {
            return None;
        }
        let block = *self.cached.get(&hash)?;
        if let Some(key) = self.free_key[block as usize].take() {
            self.free.remove(&key);
        }
        self.ref_counts[block as usize] += 1;
        Some(block)
    }

    /// Records that `block` (full, referenced) holds the content named `hash`.
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        if self.caching && !self.cached.contains_key(&hash) {
            self.cached.insert(hash, block);
            self.hashes[block as usize] = Some(hash);
        }
    }

    /// Drops one reference to each block; pass a sequence's blocks in order: its tail is
    /// handed out first, its head (the most shareable prefix) last.
    pub fn release(&mut self, blocks: &[u32]) {
        for &block in blocks.iter().rev() {
            let count = &mut self.ref_counts[block as usize];
            debug_assert!(*count > 0, "block {block} released twice");
            *count -= 1;
            if *count == 0 {
                self.free.insert(self.tick, block);
                self.free_key[block as usize] = Some(self.tick);
                self.tick += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_reuse_cached() {
        let mut pool = BlockPool::new(3, true);
        let a = pool.allocate().unwrap();
        let h = block_hash(None, &[1, 2]);
        pool.register(a, h);
        pool.release(&[a]);
        assert_eq!(pool.num_free(), 3);
        // Still cached while nobody needs the space.
        assert_eq!(pool.take_cached(h), Some(a));
        assert_eq!(pool.num_free(), 2);
        pool.release(&[a]);
        // Handing out every block evicts it.
        let all: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert!(pool.allocate().is_none());
        assert_eq!(pool.take_cached(h), None);
        pool.release(&all);
        assert_eq!(pool.num_free(), 3);
    }

    #[test]
    fn least_recently_released_goes_first() {
        let mut pool = BlockPool::new(2, true);
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        pool.register(a, 1);
        pool.register(b, 2);
        pool.release(&[a, b]); // tail b first, then a
        assert_eq!(pool.allocate(), Some(b));
        assert_eq!(pool.take_cached(1), Some(a));
    }

    #[test]
    fn hashes_chain_over_the_prefix() {
        let first = block_hash(None, &[1, 2]);
        assert_ne!(block_hash(Some(first), &[3, 4]), block_hash(None, &[3, 4]));
        assert_eq!(
            block_hash(Some(first), &[3, 4]),
            block_hash(Some(block_hash(None, &[1, 2])), &[3, 4])
        );
    }
}
