//! Embeddings from a generating model (Ollama embeds with any model): each input is a prompt
//! the engine reads beside generation, scheduled as any prompt is, and its final hidden states
//! pooled as the model's file says (`ferrollama_model::LoadedModel::pooling`).

use crate::error::ApiError;
use crate::resident::Loaded;
use ferrollama_engine::{Event, FinishReason};
use ferrollama_model::Pooling;
use futures_util::{StreamExt, TryStreamExt};

/// Inputs of one request in the engine at a time: enough to fill its batches, few enough that
/// a request with thousands of inputs keeps a chat that comes after it waiting for at most
/// this many, not for all of them.
const IN_FLIGHT: usize = 16;

/// The vectors of `inputs` (not normalised), in order. `field` names the inputs in errors.
pub async fn embed(
    loaded: &Loaded,
    pooling: Pooling,
    inputs: Vec<Vec<u32>>,
    field: &'static str,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let runs = inputs.into_iter().enumerate().map(|(i, ids)| {
        let engine = loaded.engine.clone();
        async move {
            let mut stream = engine
                .embed(ids, pooling)
                .map_err(|e| ApiError::engine(e, format!("{field}[{i}]"), "max_tokens"))?;
            let mut vector = None;
            while let Some(event) = stream.next().await {
                match event {
                    Event::Embedding(v) => vector = Some(v),
                    Event::Finished {
                        reason: FinishReason::Stop,
                        ..
                    } => break,
                    Event::Finished { reason, error, .. } => {
                        return Err(ApiError::internal(format!(
                            "{field}[{i}]: the embedding ended ({reason:?}): {}",
                            error.unwrap_or_default()
                        )))
                    }
                    Event::Token { .. } => {}
                }
            }
            vector.ok_or_else(|| ApiError::internal(format!("{field}[{i}]: no vector came back")))
        }
    });
    futures_util::stream::iter(runs)
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
}
