//! The KV block pool: which cache blocks are free, who shares which, and the prefix cache.
//!
//! A full block is looked up by the hash of (its parent block's hash, its tokens), so equal
//! prefixes have equal chains of hashes. A hash only finds a candidate: a hit also needs the
//! cached block's tokens to equal the prompt's and its parent to be the content just matched
//! (each registration gets a fresh id, so an evicted parent breaks the chain). So a hash
//! collision costs a miss, never another prompt's KV; and no cryptographic hash is needed.
//! Blocks are shared read-only with reference counts. A block nobody references stays cached
//! until it is needed: free blocks are handed out least-recently-released first, and handing
//! one out forgets what it cached.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

pub type BlockHash = u64;
/// One registration of content in the cache: never reused.
pub type ContentId = u64;

/// A full block of a sequence as the cache knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockName {
    pub hash: BlockHash,
    pub content: ContentId,
}

/// What a cached block holds, checked on every hit.
struct Content {
    id: ContentId,
    parent: Option<ContentId>,
    tokens: Box<[u32]>,
}

pub struct BlockPool {
    ref_counts: Vec<u32>,
    /// What a block holds, if it is (or was) registered in the prefix cache.
    contents: Vec<Option<(BlockHash, Content)>>,
    cached: HashMap<BlockHash, u32>,
    next_content: ContentId,
    /// Bits of the hash kept: 64, or fewer in tests that force collisions.
    hash_mask: u64,
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
            contents: (0..num_blocks).map(|_| None).collect(),
            cached: HashMap::new(),
            next_content: 0,
            hash_mask: u64::MAX,
            free: (0..num_blocks as u32).map(|b| (b as u64, b)).collect(),
            free_key: (0..num_blocks as u64).map(Some).collect(),
            tick: num_blocks as u64,
            caching,
        }
    }

    /// Keeps only `bits` bits of every hash, so that tests can force collisions.
    pub fn with_hash_bits(mut self, bits: u32) -> Self {
        self.hash_mask = u64::MAX
            .checked_shr(64 - bits.clamp(1, 64))
            .unwrap_or(u64::MAX);
        self
    }

    /// The lookup hash of a full block: chained over the whole prefix.
    pub fn hash(&self, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut h = DefaultHasher::new();
        parent.hash(&mut h);
        tokens.hash(&mut h);
        h.finish() & self.hash_mask
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
        if let Some((hash, _)) = self.contents[block as usize].take() {
            if self.cached.get(&hash) == Some(&block) {
                self.cached.remove(&hash);
            }
        }
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// Takes a reference to the cached block holding `tokens` after `parent`, if there is one
    /// (`hash` finds the candidate; its content decides).
    pub fn take_cached(
        &mut self,
        hash: BlockHash,
        parent: Option<ContentId>,
        tokens: &[u32],
    ) -> Option<(u32, ContentId)> {
        if !self.caching {
            return None;
        }
        let block = *self.cached.get(&hash)?;
        let (_, content) = self.contents[block as usize].as_ref()?;
        if content.parent != parent || *content.tokens != *tokens {
            return None; // a hash collision: a miss, never another prompt's KV
        }
        let id = content.id;
        if let Some(key) = self.free_key[block as usize].take() {
            self.free.remove(&key);
        }
        self.ref_counts[block as usize] += 1;
        Some((block, id))
    }

    /// Records that `block` (full, referenced) holds `tokens` after the content `parent`;
    /// returns the id that content goes by: the cached one when equal content is already
    /// cached, else a new one (registered unless its hash is taken by other content).
    pub fn register(
        &mut self,
        block: u32,
        hash: BlockHash,
        parent: Option<ContentId>,
        tokens: &[u32],
    ) -> ContentId {
        if let Some(&other) = self.cached.get(&hash) {
            if let Some((_, c)) = &self.contents[other as usize] {
                if c.parent == parent && *c.tokens == *tokens {
                    return c.id;
                }
            }
        }
        let id = self.next_content;
        self.next_content += 1;
        if self.caching && !self.cached.contains_key(&hash) {
            self.cached.insert(hash, block);
            let tokens = tokens.into();
            self.contents[block as usize] = Some((hash, Content { id, parent, tokens }));
        }
        id
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
        let h = pool.hash(None, &[1, 2]);
        let id = pool.register(a, h, None, &[1, 2]);
        pool.release(&[a]);
        assert_eq!(pool.num_free(), 3);
        // Still cached while nobody needs the space.
        assert_eq!(pool.take_cached(h, None, &[1, 2]), Some((a, id)));
        assert_eq!(pool.num_free(), 2);
        pool.release(&[a]);
        // Handing out every block evicts it.
        let all: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert!(pool.allocate().is_none());
        assert_eq!(pool.take_cached(h, None, &[1, 2]), None);
        pool.release(&all);
        assert_eq!(pool.num_free(), 3);
    }

    #[test]
    fn least_recently_released_goes_first() {
        let mut pool = BlockPool::new(2, true);
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        let id = pool.register(a, 1, None, &[1]);
        pool.register(b, 2, None, &[2]);
        pool.release(&[a, b]); // tail b first, then a
        assert_eq!(pool.allocate(), Some(b));
        assert_eq!(pool.take_cached(1, None, &[1]), Some((a, id)));
    }

    #[test]
    fn hashes_chain_over_the_prefix() {
        let pool = BlockPool::new(1, true);
        let first = pool.hash(None, &[1, 2]);
        assert_ne!(pool.hash(Some(first), &[3, 4]), pool.hash(None, &[3, 4]));
        assert_eq!(
            pool.hash(Some(first), &[3, 4]),
            pool.hash(Some(pool.hash(None, &[1, 2])), &[3, 4])
        );
    }

    #[test]
    fn a_colliding_hash_is_a_miss_never_another_prompts_block() {
        let mut pool = BlockPool::new(4, true).with_hash_bits(1);
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        let h = pool.hash(None, &[1, 2]);
        let first = pool.register(a, h, None, &[1, 2]);
        // Other tokens under the same (cut) hash: not registered over the first.
        let other = pool.register(b, h, None, &[7, 8]);
        assert_ne!(first, other);
        assert_eq!(pool.take_cached(h, None, &[7, 8]), None, "tokens differ");
        assert_eq!(
            pool.take_cached(h, Some(first), &[1, 2]),
            None,
            "parent differs"
        );
        assert_eq!(pool.take_cached(h, None, &[1, 2]), Some((a, first)));
        // Equal content registered again goes by the cached id.
        assert_eq!(pool.register(b, h, None, &[1, 2]), first);
    }

    #[test]
    fn an_evicted_parent_breaks_the_chain_below_it() {
        let mut pool = BlockPool::new(3, true);
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        let ha = pool.hash(None, &[1]);
        let pa = pool.register(a, ha, None, &[1]);
        let hb = pool.hash(Some(ha), &[2]);
        pool.register(b, hb, Some(pa), &[2]);
        pool.release(&[a]);
        pool.release(&[b]);
        // The parent is handed out first (released first), losing what it cached; content
        // registered there again is a new registration, which the child does not follow.
        let c = pool.allocate().unwrap();
        assert_eq!(pool.allocate(), Some(a));
        let pa2 = pool.register(a, ha, None, &[1]);
        assert_ne!(pa2, pa);
        assert_eq!(pool.take_cached(hb, Some(pa2), &[2]), None);
        assert!(
            pool.take_cached(hb, Some(pa), &[2]).is_some(),
            "the old chain still matches"
        );
        pool.release(&[c]);
    }
}
