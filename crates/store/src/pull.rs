//! The one door every pull goes through (the CLI's `pull` and `/api/pull` alike): Hugging Face
//! names (`hf.co/org/repo[:quant]`) to the hub, every other name to an Ollama registry.

use crate::hugging_face::{is_hugging_face, HuggingFace};
use crate::name::ModelName;
use crate::pulled::Pulled;
use crate::registry::{PullError, PullEvent, Registry};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Puller {
    pub registry: Registry,
    pub hugging_face: HuggingFace,
}

impl Puller {
    /// Both from the environment: `FERROLLAMA_REGISTRY_URL`; `HF_HOME`, `HF_ENDPOINT`,
    /// `HF_TOKEN`.
    pub fn from_env() -> Self {
        Self::new(Registry::from_env(), HuggingFace::from_env())
    }

    pub fn new(registry: Registry, hugging_face: HuggingFace) -> Self {
        Self {
            registry,
            hugging_face,
        }
    }

    /// Pulls `name`; with `pin` (64 hex digits), only if its model layer has that sha256,
    /// checked before anything is written.
    pub async fn pull(
        &self,
        store: &Store,
        name: &ModelName,
        pin: Option<&str>,
        report: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<Pulled, PullError> {
        if is_hugging_face(name) {
            self.hugging_face.pull(store, name, pin, report).await
        } else {
            let manifest = self.registry.pull(store, name, pin, report).await?;
            Ok(Pulled::Manifest(manifest))
        }
    }
}
