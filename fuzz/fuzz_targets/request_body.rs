//! Request bodies of every route: JSON parsing and validation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrollama_api::fuzzing::request_body(data));
