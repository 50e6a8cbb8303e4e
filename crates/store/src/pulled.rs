//! What a pull left behind, whichever source it came from (its own file, so that the one door,
//! `pull.rs`, and the sources it calls, `hugging_face.rs`, both use it without a circle).

use crate::manifest::Manifest;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub enum Pulled {
    /// A name in the Ollama store (every registry pull, a GGUF from the hub).
    Manifest(Manifest),
    /// A safetensors snapshot directory in the HF cache.
    Snapshot(PathBuf),
}
