//! Replays the fuzz corpora of chat-template rendering and of the GGUF header (fuzz/corpus/,
//! grown by `cargo +nightly fuzz run <target>`) on stable: no input may panic.

use ferrollama_model::fuzzing;
use ferrollama_model::weights::GgufFile;
use ferrollama_model::Tokenizer;
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the committed corpus")
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.len() >= 3 || target == "gguf_header",
        "{target}: {} inputs",
        files.len()
    );
    files
}

#[test]
fn chat_template_corpus_never_panics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures/tiny-mistral/tokenizer.json");
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    for file in corpus("chat_template") {
        fuzzing::chat_template(&tokenizer, &std::fs::read(&file).unwrap());
    }
}

#[test]
fn gguf_header_corpus_never_panics() {
    let scratch = tempfile::NamedTempFile::new().unwrap();
    let files = corpus("gguf_header");
    assert!(
        files.len() >= 2,
        "the seed and at least one regression input"
    );
    for file in files {
        std::fs::copy(&file, scratch.path()).unwrap();
        fuzzing::gguf_header(scratch.path());
        // Inputs that once crashed the parser are kept under their crash name, and must now
        // be refused (overflow checks are off in release, so a panic alone would not show).
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("crash-") {
            assert!(GgufFile::open(scratch.path()).is_err(), "{name} opens");
        }
    }
}
