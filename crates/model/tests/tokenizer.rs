//! Tokenizers against sentencepiece and llama.cpp, and GGUF-rebuilt tokenizers against the
//! tokenizer.json of the same vocabulary.

mod common;

use common::*;
use ferrollama_model::weights::GgufFile;
use ferrollama_model::{Detokenizer, Tokenizer};

fn texts_and_ids(path: &std::path::Path, key: &str) -> Vec<(String, Vec<u32>)> {
    json(path)[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["text"].as_str().unwrap().to_string(), ids(&t["ids"])))
        .collect()
}

/// Whether `text` spells a control token somewhere after its start: there sentencepiece
/// and llama.cpp add a `▁` after the control token, Hugging Face does not (we follow HF).
fn control_inside(tokenizer: &Tokenizer, text: &str) -> bool {
    [
        "<s>",
        "</s>",
        "[INST]",
        "[/INST]",
        "[SUFFIX]",
        "[PREFIX]",
        "<|im_start|>",
        "<|im_end|>",
        "[REFERENCE_DOC",
    ]
    .iter()
    .any(|c| text.contains(c) && (tokenizer.token_to_id(c).is_some() || c.starts_with("[REF")))
}

#[test]
fn mistral_tokenizer_json_matches_sentencepiece() {
    let tokenizer = Tokenizer::from_file(&tiny_dir().join("tokenizer.json")).unwrap();
    let refs = json(&tiny_refs("tokenizer_check.json"));
    let mut compared = 0;
    for entry in refs["texts"].as_array().unwrap() {
        let text = entry["text"].as_str().unwrap();
        if control_inside(&tokenizer, text) {
            continue;
        }
        let expected = ids(&entry["ids"]);
        assert_eq!(tokenizer.encode(text).unwrap(), expected, "{text:?}");
        assert_eq!(
            tokenizer.decode(&expected).unwrap(),
            entry["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
        compared += 1;
    }
    assert!(compared >= 25, "{compared}");
}

/// The SentencePiece tokenizer rebuilt from the GGUF's scores tokenizes like tokenizer.json
/// (itself checked against sentencepiece above) and like llama.cpp.
#[test]
fn gguf_sentencepiece_tokenizer_matches_tokenizer_json_and_llama_cpp() {
    let from_json = Tokenizer::from_file(&tiny_dir().join("tokenizer.json")).unwrap();
    let gguf = GgufFile::open(&tiny_dir().join("tiny-mistral-f16.gguf")).unwrap();
    let from_gguf = Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(from_gguf.bos_id(), Some(1));
    assert_eq!(from_gguf.eos_ids(), &[2]);
    assert!(from_gguf.add_bos());

    let mut texts = texts_and_ids(&tiny_refs("tokenizer_check.json"), "texts");
    let llama_cpp = texts_and_ids(&tiny_refs("llamacpp.json"), "tokenize");
    texts.extend(llama_cpp.iter().cloned());
    for (text, _) in &texts {
        assert_eq!(
            from_gguf.encode(text).unwrap(),
            from_json.encode(text).unwrap(),
            "{text:?}"
        );
    }
    let mut compared = 0;
    for (text, expected) in &llama_cpp {
        if !control_inside(&from_gguf, text) {
            assert_eq!(
                &from_gguf.encode(text).unwrap(),
                expected,
                "llama.cpp on {text:?}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 20, "{compared}");
}

#[test]
fn gguf_byte_level_tokenizer_matches_llama_cpp() {
    let gguf = GgufFile::open(&smollm2_gguf()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let refs = repo_root().join("models/fixtures/smollm2/llamacpp_refs.json");
    let texts = texts_and_ids(&refs, "tokenize");
    assert!(texts.len() >= 25);
    for (text, expected) in &texts {
        assert_eq!(&tokenizer.encode(text).unwrap(), expected, "{text:?}");
    }
    let eog = ids(&json(&refs)["eog_ids"]);
    assert!(
        tokenizer.eos_ids().contains(&2),
        "<|im_end|> ends generation"
    );
    assert!(
        tokenizer.eos_ids().iter().all(|id| eog.contains(id)),
        "{:?} vs llama.cpp {eog:?}",
        tokenizer.eos_ids()
    );
}

const STREAM_TEXTS: &[&str] = &[
    "Plain ASCII, with  two spaces and\nnewlines.",
    "日本語のテキストと中文混合",
    "Emoji: 🌅🦀👩‍👩‍👧 and flags 🇫🇷",
    "Combining marks: e\u{301} a\u{308} n\u{303} — and Zalgo: z\u{356}\u{34c}a\u{300}",
    " leading space, tab\tand ümlaut",
    "Mixed 😀 English 中文 עברית العربية",
];

/// Streams each text's tokens one at a time: every delta is valid UTF-8 (a `String`), the
/// deltas add up to the full decode, and a delta is held back only inside a character.
fn check_streaming(tokenizer: &Tokenizer) {
    for text in STREAM_TEXTS {
        let ids = tokenizer.encode(text).unwrap();
        let full = tokenizer.decode(&ids).unwrap();
        let mut detokenizer = Detokenizer::new();
        let mut streamed = String::new();
        let mut held = 0;
        for &id in &ids {
            match detokenizer.push(tokenizer, id).unwrap() {
                Some(delta) => {
                    assert!(
                        !delta.contains('\u{FFFD}'),
                        "{text:?}: replacement char in {delta:?}"
                    );
                    streamed.push_str(&delta);
                    held = 0;
                }
                None => held += 1,
            }
            // A UTF-8 character has at most 4 bytes: byte tokens never need more held back.
            assert!(held < 4, "{text:?}: {held} tokens held back");
        }
        if let Some(rest) = detokenizer.finish(tokenizer).unwrap() {
            streamed.push_str(&rest);
        }
        assert_eq!(streamed, full, "{text:?}");
    }
}

#[test]
fn detokenizer_streams_sentencepiece() {
    let tokenizer = Tokenizer::from_file(&tiny_dir().join("tokenizer.json")).unwrap();
    check_streaming(&tokenizer);
    let gguf = GgufFile::open(&tiny_dir().join("tiny-mistral-q4_0.gguf")).unwrap();
    check_streaming(&Tokenizer::from_gguf(&gguf).unwrap());
}

#[test]
fn detokenizer_streams_byte_level_bpe() {
    let gguf = GgufFile::open(&smollm2_gguf()).unwrap();
    check_streaming(&Tokenizer::from_gguf(&gguf).unwrap());
}
