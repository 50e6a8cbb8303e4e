//! A BERT WordPiece tokenizer rebuilt from a GGUF's vocabulary. llama.cpp's converter stores
//! the vocabulary in "phantom space" form: a word-initial piece gains a leading `▁` and a
//! continuation loses its `##`; special tokens (`[CLS]`) stay as they are. Undone here, the
//! vocabulary is the Hugging Face one again, and the `tokenizers` crate's BERT parts (the
//! normalizer that lowercases, as llama.cpp's WPM tokenizer does, the pre-tokenizer, WordPiece)
//! give the same ids as sentence-transformers.

use crate::error::{ModelError, Result};
use crate::weights::GgufFile;
use std::collections::HashMap;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

/// The Hugging Face spelling of a token in llama.cpp's phantom-space form.
pub(crate) fn unphantom(token: &str) -> String {
    if token.starts_with('[') && token.ends_with(']') {
        token.to_string()
    } else if let Some(word) = token.strip_prefix('\u{2581}') {
        word.to_string()
    } else {
        format!("##{token}")
    }
}

pub(crate) fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let bad = |what: &str| ModelError::Tokenizer(format!("GGUF BERT vocabulary: {what}"));
    if let Some(model) = file.string("tokenizer.ggml.model") {
        if model != "bert" {
            return Err(bad(&format!("tokenizer.ggml.model is {model}, not bert")));
        }
    }
    let tokens = file
        .array("tokenizer.ggml.tokens")
        .ok_or_else(|| bad("no tokenizer.ggml.tokens"))?;
    let mut vocab = HashMap::with_capacity(tokens.len());
    let mut spelled = Vec::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let token = token
            .to_string()
            .map_err(|_| bad("a token is not a string"))?;
        let word = unphantom(token);
        vocab.entry(word.clone()).or_insert(id as u32);
        spelled.push(word);
    }
    let id = |keys: &[&str], fallback: &str| -> Result<(String, u32)> {
        let id = keys
            .iter()
            .find_map(|k| file.uint(k))
            .map(|v| v as u32)
            .or_else(|| vocab.get(fallback).copied())
            .ok_or_else(|| bad(&format!("no {fallback} token")))?;
        let token = spelled
            .get(id as usize)
            .ok_or_else(|| bad(&format!("{fallback} id {id} is outside the vocabulary")))?;
        Ok((token.clone(), id))
    };
    let cls = id(
        &["tokenizer.ggml.cls_token_id", "tokenizer.ggml.bos_token_id"],
        "[CLS]",
    )?;
    let sep = id(
        &[
            "tokenizer.ggml.seperator_token_id",
            "tokenizer.ggml.separator_token_id",
            "tokenizer.ggml.eos_token_id",
        ],
        "[SEP]",
    )?;
    let unk = id(&["tokenizer.ggml.unknown_token_id"], "[UNK]")?;
    let wordpiece = WordPiece::builder()
        .vocab(vocab.into_iter().collect::<ahash::AHashMap<_, _>>())
        .unk_token(unk.0)
        .continuing_subword_prefix("##".into())
        .build()
        .map_err(|e| bad(&e.to_string()))?;
    let template = TemplateProcessing::builder()
        .try_single(format!("{}:0 $A:0 {}:0", cls.0, sep.0))
        .map_err(|e| bad(&e))?
        .special_tokens(vec![cls, sep])
        .build()
        .map_err(|e| bad(&e.to_string()))?;
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(|e| bad(&e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(template));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::unphantom;

    #[test]
    fn phantom_space_spellings_return_to_hugging_face_ones() {
        assert_eq!(unphantom("\u{2581}hello"), "hello");
        assert_eq!(unphantom("ing"), "##ing");
        assert_eq!(unphantom("[CLS]"), "[CLS]");
        assert_eq!(unphantom("\u{2581}"), "");
    }
}
