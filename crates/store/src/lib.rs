//! Where models live: names as Ollama reads them (`mistral:instruct`,
//! `namespace/name:tag`, `host/namespace/name:tag`), the Ollama store on disk (manifests and
//! content-addressed blobs, in Ollama's own layout, so an existing store is served in place),
//! and pulls from the Ollama registry and the Hugging Face hub that verify every byte before
//! it enters the store.

mod hub_file;
pub mod hugging_face;
pub mod manifest;
pub mod name;
pub mod pull;
pub mod pulled;
pub mod quant;
pub mod registry;
pub mod store;

pub use hugging_face::HuggingFace;
pub use manifest::{Layer, Manifest};
pub use name::{ModelName, NameError};
pub use pull::Puller;
pub use pulled::Pulled;
pub use registry::{PullError, PullEvent, Registry};
pub use store::{Store, StoreEntry, StoreError};
