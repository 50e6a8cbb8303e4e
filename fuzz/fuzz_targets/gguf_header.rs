//! GGUF files: the header, the summary, model settings and the tokenizer they carry.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

/// The input goes through a file, as the loader maps one (in memory-backed /dev/shm).
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        dir.join(format!("ferrollama-fuzz-{}.gguf", std::process::id()))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // candle's reader divides by a zero `general.alignment` (a panic GgufFile::open catches,
    // but libFuzzer's panic hook aborts first): such inputs are left to the replay test.
    if data.windows(17).any(|w| w == b"general.alignment") {
        return;
    }
    std::fs::write(scratch(), data).expect("write the scratch file");
    ferrollama_model::fuzzing::gguf_header(scratch());
});
