//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpora:
//! everything a request body goes through before a model is involved. Not an API.

/// Parses `data` as every request body the server takes, and validates what parses.
pub fn request_body(data: &[u8]) {
    crate::openai::check_bodies(data);
    crate::ollama::check_bodies(data);
}
