//! Chat templates: the built-in Mistral one and arbitrary jinja, over arbitrary messages.
#![no_main]
use ferrollama_model::Tokenizer;
use std::sync::OnceLock;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fixtures/tiny-mistral/tokenizer.json");
        Tokenizer::from_file(std::path::Path::new(path)).expect("the fixture tokenizer")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrollama_model::fuzzing::chat_template(tokenizer(), data));
