//! Incremental detokenization for streaming: every delta is valid UTF-8, the deltas add up to
//! the full decode, and text is held back only while a multi-byte character is incomplete.

use super::{tok_err, Tokenizer};
use crate::error::Result;

/// Per-sequence state; owns no reference to the tokenizer, so it can live in engine state.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    /// The window of ids still needed to decode the next delta in context.
    ids: Vec<u32>,
    /// The text of `ids[..prefix_index]`, already emitted.
    prefix: String,
    prefix_index: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        tokenizers::tokenizer::step_decode_stream(
            tokenizer.inner(),
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(tok_err)
    }

    /// The text still held back (an unfinished byte sequence), at the end of generation.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let text = tokenizer.decode(&self.ids)?;
        let rest = text
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(&text)
            .to_string();
        *self = Self::default();
        Ok((!rest.is_empty()).then_some(rest))
    }
}
