//! Text to token ids and back. Wraps a `tokenizers::Tokenizer` built from `tokenizer.json` or
//! rebuilt from GGUF metadata, and knows the model's special ids.
//!
//! Text that spells a control token of the vocabulary (`[INST]`, `<|im_start|>`, `<s>`) becomes
//! that token, as in Hugging Face tokenizers, vLLM and Ollama.

mod detokenizer;
mod gguf;

pub use detokenizer::Detokenizer;

use crate::error::{ModelError, Result};
use crate::weights::GgufFile;
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    /// SentencePiece vocabularies put a `▁` in front of the text ("dummy prefix").
    dummy_prefix: bool,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Loads `tokenizer.json`; `tokenizer_config.json` beside it (if any) names bos and eos.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        let config: serde_json::Value = path
            .parent()
            .map(|dir| dir.join("tokenizer_config.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let special = |key: &str| -> Option<u32> {
            let v = &config[key];
            let text = v.as_str().or_else(|| v["content"].as_str())?;
            inner.token_to_id(text)
        };
        let bos = special("bos_token");
        let eos = special("eos_token").into_iter().collect();
        // Whether the tokenizer's own post-processor prepends BOS tells us if the model wants it.
        let add_bos = match (bos, inner.encode("", true)) {
            (Some(bos), Ok(enc)) => enc.get_ids().first() == Some(&bos),
            _ => false,
        };
        Ok(Self::new(inner, bos, eos, add_bos))
    }

    /// Rebuilds the tokenizer a GGUF file describes (`llama` SentencePiece or `gpt2` BPE).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let built = gguf::build(file)?;
        Ok(Self::new(
            built.tokenizer,
            built.bos,
            built.eos,
            built.add_bos,
        ))
    }

    fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Vec<u32>, add_bos: bool) -> Self {
        let dummy_prefix = inner
            .encode_fast("a", false)
            .ok()
            .and_then(|enc| enc.get_ids().first().and_then(|&id| inner.id_to_token(id)))
            .is_some_and(|t| t.starts_with('▁'));
        Self {
            inner,
            bos,
            eos,
            add_bos,
            dummy_prefix,
        }
    }

    /// Adds end-of-sequence ids (from `generation_config.json`, say).
    pub fn add_eos_ids(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            if !self.eos.contains(&id) {
                self.eos.push(id);
            }
        }
    }

    /// Token ids of `text`, without BOS.
    ///
    /// A SentencePiece vocabulary always gets its `▁` in front, as sentencepiece, llama.cpp
    /// and mistral-common encode: `" Hi"` is `▁▁Hi`. (Hugging Face's Metaspace skips it when
    /// the text already starts with a space; a second space restores sentencepiece's result.)
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let padded;
        let text = if self.dummy_prefix && text.starts_with([' ', '▁']) {
            padded = format!(" {text}");
            &padded
        } else {
            text
        };
        let enc = self.inner.encode_fast(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a whole prompt: BOS first when the model wants one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.push(bos);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// The text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `token` is a special (control) token of the vocabulary, like `[INST]`.
    pub fn is_control(&self, token: &str) -> bool {
        self.inner
            .get_added_vocabulary()
            .get_vocab()
            .get(token)
            .and_then(|id| {
                self.inner
                    .get_added_tokens_decoder()
                    .get(id)
                    .map(|t| t.special)
            })
            .unwrap_or(false)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn bos_token(&self) -> Option<String> {
        self.bos.and_then(|id| self.id_to_token(id))
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn eos_token(&self) -> Option<String> {
        self.eos.first().and_then(|&id| self.id_to_token(id))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The whole tokenizer as Hugging Face's `tokenizer.json` (what grammar libraries read to
    /// learn each token's bytes).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tok_err)
    }

    pub(crate) fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
