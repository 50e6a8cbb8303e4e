//! How an embedding model's final hidden states become one vector per input: the pooling a
//! file names (llama.cpp's `pooling_type`, sentence-transformers' `modules.json`), for encoders
//! and generating models alike.

use crate::error::{ModelError, Result};
use std::path::Path;

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the input's tokens.
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
    /// The last token's state: a decoder's, where it has read the whole input.
    Last,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }

    /// llama.cpp's `{arch}.pooling_type`: 1 mean, 2 CLS, 3 last; `None` for 0 (none) and 4
    /// (rank, a reranker's score), which give no single vector. Err names another value.
    pub fn of_gguf(code: u64) -> Result<Option<Self>> {
        match code {
            0 | 4 => Ok(None),
            1 => Ok(Some(Pooling::Mean)),
            2 => Ok(Some(Pooling::Cls)),
            3 => Ok(Some(Pooling::Last)),
            other => Err(ModelError::Unsupported(format!(
                "pooling_type {other} (llama.cpp knows 0 to 4)"
            ))),
        }
    }
}

/// Pooling and normalisation as `modules.json` and `1_Pooling/config.json` say; a bare
/// Hugging Face BERT (no modules.json) gets mean pooling without normalisation, as
/// sentence-transformers gives it.
pub(crate) fn sentence_transformers_head(dir: &Path) -> Result<(Pooling, bool)> {
    let Ok(modules) = read_json(&dir.join("modules.json")) else {
        return Ok((Pooling::Mean, false));
    };
    let modules = modules.as_array().cloned().unwrap_or_default();
    let has = |kind: &str| {
        modules
            .iter()
            .find(|m| m["type"].as_str() == Some(kind))
            .map(|m| m["path"].as_str().unwrap_or_default().to_string())
    };
    let normalize = has("sentence_transformers.models.Normalize").is_some();
    let pooling =
        match has("sentence_transformers.models.Pooling") {
            Some(path) => {
                let config = read_json(&dir.join(path).join("config.json"))?;
                let on = |key: &str| config[key].as_bool() == Some(true);
                let others = [
                    "pooling_mode_max_tokens",
                    "pooling_mode_mean_sqrt_len_tokens",
                    "pooling_mode_weightedmean_tokens",
                ];
                if let Some(mode) = others.iter().find(|k| on(k)) {
                    return Err(ModelError::Unsupported(format!(
                        "sentence-transformers pooling {mode}"
                    )));
                }
                let modes = [
                    ("pooling_mode_cls_token", Pooling::Cls),
                    ("pooling_mode_mean_tokens", Pooling::Mean),
                    ("pooling_mode_lasttoken", Pooling::Last),
                ];
                let mut chosen = modes.iter().filter(|(key, _)| on(key));
                match (chosen.next(), chosen.next()) {
                    (Some((_, pooling)), None) => *pooling,
                    _ => return Err(ModelError::Unsupported(
                        "sentence-transformers pooling: exactly one of CLS, mean and last token"
                            .into(),
                    )),
                }
            }
            None => Pooling::Mean,
        };
    Ok((pooling, normalize))
}

/// A JSON file of a model directory, its path named in any error.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
}
