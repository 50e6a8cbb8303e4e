//! The Docker v2 image manifest Ollama stores and serves: a config blob and layers, each by
//! media type, sha256 digest and size. The model layer is the GGUF.

use serde::{Deserialize, Serialize};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MODEL: &str = "application/vnd.ollama.image.model";
pub const TEMPLATE: &str = "application/vnd.ollama.image.template";
pub const SYSTEM: &str = "application/vnd.ollama.image.system";
pub const PARAMS: &str = "application/vnd.ollama.image.params";
pub const LICENSE: &str = "application/vnd.ollama.image.license";
pub const ADAPTER: &str = "application/vnd.ollama.image.adapter";
pub const PROJECTOR: &str = "application/vnd.ollama.image.projector";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Layer,
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub media_type: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
    pub size: u64,
}

impl Manifest {
    /// The config blob and every layer: what a pull must fetch.
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    pub fn layer(&self, media_type: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.media_type == media_type)
    }

    /// Bytes on disk: the config and every layer, as `ollama list` counts them.
    pub fn size(&self) -> u64 {
        self.blobs().map(|l| l.size).sum()
    }
}

/// The 64 hex digits of a `sha256:<hex>` digest, if it is one (lower-case hex only).
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}
