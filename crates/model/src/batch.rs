//! The input of one forward pass: new tokens of several sequences, flattened, each sequence
//! with the block table of its paged KV cache. Prefill, prefill that continues a cached prefix,
//! and decode are the same thing here: a chunk of new tokens after `cached` old ones.

/// New tokens of one sequence.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// Tokens to run now. Their positions are `cached..cached + tokens.len()`.
    pub tokens: &'a [u32],
    /// How many tokens of this sequence are already in the KV cache.
    pub cached: usize,
    /// KV blocks of the sequence, in position order; must cover `cached + tokens.len()`.
    pub block_table: &'a [u32],
}

impl SeqChunk<'_> {
    /// The sequence length after this chunk.
    pub fn context_len(&self) -> usize {
        self.cached + self.tokens.len()
    }
}

/// Which positions the forward returns logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    /// Per sequence, its last new token's row (what sampling needs), or its last
    /// [`Batch::outputs`] rows.
    #[default]
    Last,
    /// One row per new token, in batch order.
    All,
}

/// What an embedding request's chunk gives back besides its logits: its final hidden states
/// (after the output norm, where the vocabulary head would read them), reduced to one row.
/// The engine pools over a prompt's chunks with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// The sum of the chunk's rows (a mean, once every chunk is in).
    Sum,
    /// The chunk's first row (CLS pooling, on a prompt's first chunk).
    First,
    /// The chunk's last row (last-token pooling, on a prompt's last chunk).
    Last,
}

#[derive(Debug, Clone, Default)]
pub struct Batch<'a> {
    pub seqs: Vec<SeqChunk<'a>>,
    pub logits: Logits,
    /// With [`Logits::Last`]: how many of each sequence's last rows to return (a speculative
    /// draft of k tokens needs k + 1); empty means one each.
    pub outputs: Vec<usize>,
    /// Per sequence, the hidden states to give back reduced (embedding requests); empty means
    /// none for any.
    pub hidden: Vec<Option<Reduce>>,
}

impl<'a> Batch<'a> {
    pub fn new(seqs: Vec<SeqChunk<'a>>) -> Self {
        Self {
            seqs,
            logits: Logits::Last,
            outputs: Vec::new(),
            hidden: Vec::new(),
        }
    }

    /// Rows of logits sequence `i` gets with [`Logits::Last`].
    pub fn outputs_of(&self, i: usize) -> usize {
        self.outputs.get(i).copied().unwrap_or(1)
    }

    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}
