//! Prompt-lookup drafting (vLLM's `ngram` method, llama.cpp's lookup decoding): the next
//! tokens are guessed by finding the sequence's last n tokens (n = 4 down to 1) earlier in the
//! sequence, prompt or output, and proposing what followed their most recent occurrence. Code
//! edits and summaries write back much of their prompt, so the guesses often hold; the model
//! checks a draft of k tokens in one forward, which costs about one decode step where decode
//! is bandwidth-bound.
//!
//! The index is incremental: each new token adds the n-grams that end just before it, so a
//! proposal is a few hash lookups, never a scan of the context. The draft length adapts to how
//! much of the recent drafts the model kept.

use std::collections::HashMap;

/// Longest n-gram looked up.
const MAX_N: usize = 4;
/// Shortest: a single token predicts its continuation too poorly to pay for checking it
/// (SmolLM2 on the code-editing set: 1.53x with 2, 1.47x with 1).
const MIN_MATCH: usize = 2;

#[derive(Debug, Clone)]
pub struct Drafter {
    /// Per n (index n - 1): the hash of an n-gram → the position right after its most recent
    /// occurrence, where its continuation starts.
    index: [HashMap<u64, usize>; MAX_N],
    /// Positions whose n-grams (those ending there) are in the index: `1..indexed`.
    indexed: usize,
    /// Draft length now, between `MIN_DRAFT` and `max_draft`.
    k: usize,
    max_draft: usize,
}

/// The shortest draft length the adaptation goes down to.
const MIN_DRAFT: usize = 2;

impl Drafter {
    /// A drafter proposing up to `max_draft` tokens (at least 1).
    pub fn new(max_draft: usize) -> Self {
        let max_draft = max_draft.max(1);
        Self {
            index: Default::default(),
            indexed: 1,
            k: max_draft.min(4).max(MIN_DRAFT.min(max_draft)),
            max_draft,
        }
    }

    /// Up to `limit` tokens that may follow `tokens` (the whole sequence so far), from the most
    /// recent earlier occurrence of its longest suffix of 4 down to 2 tokens; empty when none.
    pub fn propose(&mut self, tokens: &[u32], limit: usize) -> Vec<u32> {
        let len = tokens.len();
        // Index the n-grams ending before `len`: the suffix itself must not find itself.
        // (1-grams too: cheap, and a later MIN_MATCH of 1 needs them.)
        while self.indexed < len {
            let end = self.indexed;
            for n in 1..=MAX_N.min(end) {
                self.index[n - 1].insert(hash(&tokens[end - n..end]), end);
            }
            self.indexed += 1;
        }
        let want = self.k.min(limit);
        if want == 0 {
            return Vec::new();
        }
        for n in (MIN_MATCH..=MAX_N.min(len)).rev() {
            if let Some(&start) = self.index[n - 1].get(&hash(&tokens[len - n..])) {
                // Hashes can collide: the match must be real.
                if start >= n && tokens[start - n..start] == tokens[len - n..] {
                    let end = (start + want).min(len);
                    return tokens[start..end].to_vec();
                }
            }
        }
        Vec::new()
    }

    /// After a draft of `drafted` tokens of which the model kept `accepted`: all kept, draft
    /// twice as many next time (a reply copying its prompt goes on copying); fewer than half,
    /// half as many (a diverged copy wastes every row it drafts).
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        if accepted == drafted {
            self.k = (2 * self.k).min(self.max_draft);
        } else if 2 * accepted < drafted {
            self.k = (self.k / 2).max(MIN_DRAFT.min(self.max_draft));
        }
    }

    /// The draft length it would propose now.
    pub fn draft_len(&self) -> usize {
        self.k
    }
}

/// FNV-1a over the token ids' bytes.
fn hash(tokens: &[u32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for t in tokens {
        for b in t.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_suffix_finds_its_most_recent_continuation() {
        let mut d = Drafter::new(8);
        // ... 1 2 3 [7 8] ... 9 2 3 [5 6] ... then the suffix 2 3: the later match wins.
        let tokens = [1, 2, 3, 7, 8, 0, 9, 2, 3, 5, 6, 4, 2, 3];
        assert_eq!(d.propose(&tokens, 8), vec![5, 6, 4, 2]);
        // A longer match beats a more recent shorter one: [9 2 3] occurred once.
        let tokens = [9, 2, 3, 1, 1, 1, 2, 3, 4, 4, 9, 2, 3];
        assert_eq!(d_fresh().propose(&tokens, 3), vec![1, 1, 1]);
    }

    fn d_fresh() -> Drafter {
        Drafter::new(8)
    }

    #[test]
    fn no_match_no_draft_and_limits_hold() {
        let mut d = Drafter::new(8);
        assert!(d.propose(&[1, 2, 3, 4], 8).is_empty());
        assert!(
            d.propose(&[1, 2, 1, 2], 0).is_empty(),
            "a limit of 0 drafts nothing"
        );
        // The continuation stops at the end of what is known.
        assert_eq!(Drafter::new(8).propose(&[5, 6, 7, 5, 6], 8), vec![7, 5, 6]);
        // One token in common is not a match.
        assert!(Drafter::new(8).propose(&[5, 6, 5], 8).is_empty());
    }

    #[test]
    fn growing_sequences_are_indexed_incrementally() {
        let mut d = Drafter::new(4);
        let mut tokens = vec![10, 11, 12, 13, 14];
        assert!(d.propose(&tokens, 4).is_empty());
        tokens.extend([10, 11]);
        assert_eq!(d.propose(&tokens, 4), vec![12, 13, 14, 10]);
        tokens.extend([12, 99]);
        assert!(d.propose(&tokens, 4).is_empty(), "99 was never seen");
    }

    #[test]
    fn the_draft_length_follows_acceptance() {
        let mut d = Drafter::new(8);
        let start = d.draft_len();
        d.record(start, start);
        assert_eq!(d.draft_len(), 2 * start);
        for _ in 0..10 {
            d.record(d.draft_len(), 0);
        }
        assert_eq!(d.draft_len(), MIN_DRAFT);
        for _ in 0..20 {
            d.record(d.draft_len(), d.draft_len());
        }
        assert_eq!(d.draft_len(), 8);
    }
}
