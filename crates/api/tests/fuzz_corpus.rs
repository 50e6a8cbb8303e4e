//! Replays the request-body fuzz corpus (fuzz/corpus/request_body, grown by `cargo +nightly
//! fuzz run request_body`) on stable: every input must parse or be refused, never panic.

use std::path::Path;

#[test]
fn request_body_corpus_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/request_body");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the committed corpus") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        ferrollama_api::fuzzing::request_body(&data);
        count += 1;
    }
    assert!(count >= 5, "the corpus has {count} inputs");
}
