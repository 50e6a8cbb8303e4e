//! Rebuilds a tokenizer from GGUF metadata, equivalent to the `tokenizer.json` Hugging Face
//! makes for the same model:
//! - `llama`: SentencePiece BPE with scores and byte fallback (Mistral, Llama 2). The BPE merges
//!   are derived from the scores the way transformers' converter derives them.
//! - `gpt2`: byte-level BPE with explicit merges (SmolLM2, Llama 3, Qwen2).

use super::tok_err;
use crate::error::{ModelError, Result};
use crate::weights::{as_u64, GgufFile};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// llama.cpp's token types.
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// End-of-generation texts that llama.cpp treats as such when they are control tokens.
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
];

pub(super) struct Built {
    pub tokenizer: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub add_bos: bool,
}

pub(super) fn build(file: &GgufFile) -> Result<Built> {
    let kind = file
        .string("tokenizer.ggml.model")
        .unwrap_or_default()
        .to_string();
    let tokens: Vec<String> = file
        .array("tokenizer.ggml.tokens")
        .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(tok_err))
        .collect::<Result<_>>()?;
    let types: Vec<u64> = match file.array("tokenizer.ggml.token_type") {
        Some(values) => values.iter().map(|v| as_u64(v).unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let id = |key: &str| {
        file.uint(key)
            .map(|v| v as u32)
            .filter(|&v| (v as usize) < tokens.len())
    };

    let (mut tokenizer, default_add_bos) = match kind.as_str() {
        "llama" => (
            sentencepiece_bpe(file, &tokens, id("tokenizer.ggml.unknown_token_id"))?,
            true,
        ),
        "gpt2" => (byte_level_bpe(file, &tokens)?, false),
        other => {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer model `{other}`"
            )))
        }
    };

    // Control tokens are matched in text as whole special tokens; user-defined ones as plain
    // added tokens (both as Hugging Face's converters register them).
    let added = |wanted: &dyn Fn(u64) -> bool, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| wanted(t))
            .map(|(text, _)| AddedToken::from(text.clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(&|t| t == CONTROL || t == UNKNOWN, true))
        .map_err(tok_err)?;
    tokenizer
        .add_tokens(added(&|t| t == USER_DEFINED, false))
        .map_err(tok_err)?;

    let mut eos: Vec<u32> = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .iter()
    .filter_map(|key| id(key))
    .collect();
    for (i, (text, &t)) in tokens.iter().zip(&types).enumerate() {
        if t == CONTROL && END_OF_GENERATION.contains(&text.as_str()) && !eos.contains(&(i as u32))
        {
            eos.push(i as u32);
        }
    }
    Ok(Built {
        tokenizer,
        bos: id("tokenizer.ggml.bos_token_id"),
        eos,
        add_bos: file
            .bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_add_bos),
    })
}

fn sentencepiece_bpe(
    file: &GgufFile,
    tokens: &[String],
    unk: Option<u32>,
) -> Result<tokenizers::Tokenizer> {
    let scores: Vec<f32> = file
        .array("tokenizer.ggml.scores")
        .ok_or_else(|| {
            ModelError::Tokenizer("SentencePiece GGUF without tokenizer.ggml.scores".into())
        })?
        .iter()
        .map(|v| v.to_f32().map_err(tok_err))
        .collect::<Result<_>>()?;
    let vocab = vocab_of(tokens);
    let merges = merges_from_scores(tokens, &scores, &vocab);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk.or(Some(0)).and_then(|id| tokens.get(id as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let mut tokenizer = tokenizers::Tokenizer::new(builder.build().map_err(tok_err)?);

    let prepend = match file.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true) {
        true => PrependScheme::First,
        false => PrependScheme::Never,
    };
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', prepend, false)));
    let decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', usize::from(prepend == PrependScheme::First), 0).into(),
    ];
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

fn vocab_of(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// transformers' `generate_merges`: every split of every piece into two pieces of the
/// vocabulary is a merge; merges rank by the merged piece's score, then by longer left and
/// right parts, then by piece ids.
fn merges_from_scores(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let mut merges: Vec<(u32, u32, f32)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let start = merges.len();
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push((l, r, score));
            }
        }
        merges[start..].sort_by_key(|&(l, r, _)| (l, r));
    }
    let chars = |id: u32| tokens[id as usize].chars().count();
    // A stable sort, descending, like Python's `sorted(..., reverse=True)`.
    merges.sort_by(|a, b| {
        b.2.total_cmp(&a.2)
            .then_with(|| chars(b.0).cmp(&chars(a.0)))
            .then_with(|| chars(b.1).cmp(&chars(a.1)))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}

fn byte_level_bpe(file: &GgufFile, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let merges: Vec<(String, String)> = file
        .array("tokenizer.ggml.merges")
        .ok_or_else(|| ModelError::Tokenizer("gpt2 GGUF without tokenizer.ggml.merges".into()))?
        .iter()
        .map(|v| {
            let m = v.to_string().map_err(tok_err)?;
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("bad merge `{m}`")))
        })
        .collect::<Result<_>>()?;
    let vocab = vocab_of(tokens);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tok_err)?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);

    // The pre-tokenizer regex depends on the model family, which GGUF names in `pre`.
    let byte_level = ByteLevel::new(false, true, true);
    let pre: PreTokenizerWrapper = match file.string("tokenizer.ggml.pre").unwrap_or("gpt2") {
        "smollm" | "starcoder" | "refact" => {
            PreSequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => regex_then_bytes(LLAMA3_REGEX)?,
        "qwen2" => regex_then_bytes(QWEN2_REGEX)?,
        _ => byte_level.into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
    Ok(tokenizer)
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn regex_then_bytes(regex: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    Ok(PreSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}
