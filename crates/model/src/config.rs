//! Architecture hyper-parameters of a Mistral/Llama-family model, read from a Hugging Face
//! `config.json`, from GGUF `llama.*` metadata, or named for random-weight benchmarks.

use crate::architecture::Architecture;
use crate::error::{ModelError, Result};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The decoder family: what its tensors are called.
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// The longest sequence the model was trained for; prompts beyond it are refused.
    pub max_position_embeddings: usize,
    /// Mistral v0.1 attends only to the last `sliding_window` positions.
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
}

/// How rotary frequencies are stretched for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF `rope_type: linear`).
    Linear { factor: f64 },
    /// Llama 3.1's per-frequency scaling (HF `rope_type: llama3`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// One divisor per frequency, as GGUF stores it in `rope_freqs.weight`.
    Factors(Vec<f32>),
}

impl ModelConfig {
    pub fn num_query_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(ModelError::Config(m));
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return fail(format!(
                "{} attention heads are not a multiple of {} kv heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return fail(format!("head_dim {} must be even", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return fail("empty model".into());
        }
        Ok(())
    }

    /// Parses a Hugging Face `config.json` (MistralForCausalLM, LlamaForCausalLM).
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let raw: HfConfig =
            serde_json::from_str(json).map_err(|e| ModelError::Config(e.to_string()))?;
        let architecture = Architecture::of_hf(
            raw.architectures
                .as_ref()
                .and_then(|a| a.first())
                .map(String::as_str),
            raw.model_type.as_deref().or(Some("llama")),
        )?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let rope_scaling = raw
            .rope_scaling
            .map(|s| s.into_scaling())
            .transpose()?
            .flatten();
        let config = ModelConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            sliding_window: raw.sliding_window,
            tie_word_embeddings: raw.tie_word_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    /// A named shape for random-weight benchmarks.
    pub fn named(name: &str) -> Result<Self> {
        let config = match name {
            // Mistral-7B-Instruct-v0.3.
            "mistral-7b" => ModelConfig {
                architecture: Architecture::Llama,
                vocab_size: 32768,
                hidden_size: 4096,
                intermediate_size: 14336,
                num_layers: 32,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                rms_norm_eps: 1e-5,
                rope_theta: 1e6,
                rope_scaling: None,
                max_position_embeddings: 32768,
                sliding_window: None,
                tie_word_embeddings: false,
            },
            // Mistral-shaped, about 1B parameters: big enough that decode is memory-bound on a CPU.
            "mistral-1b" => ModelConfig {
                architecture: Architecture::Llama,
                vocab_size: 32768,
                hidden_size: 2048,
                intermediate_size: 7168,
                num_layers: 16,
                num_heads: 16,
                num_kv_heads: 4,
                head_dim: 128,
                ..Self::named("mistral-7b")?
            },
            // The shape of the committed tiny-mistral test model.
            "tiny" => ModelConfig {
                architecture: Architecture::Llama,
                vocab_size: 32768,
                hidden_size: 32,
                intermediate_size: 96,
                num_layers: 3,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                max_position_embeddings: 2048,
                ..Self::named("mistral-7b")?
            },
            other => {
                return Err(ModelError::Config(format!(
                    "unknown model shape `{other}` (known: mistral-7b, mistral-1b, tiny)"
                )))
            }
        };
        Ok(config)
    }
}

#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    rope_scaling: Option<HfRopeScaling>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    sliding_window: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    4096
}

#[derive(Deserialize)]
struct HfRopeScaling {
    #[serde(alias = "type")]
    rope_type: String,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

impl HfRopeScaling {
    fn into_scaling(self) -> Result<Option<RopeScaling>> {
        let factor = || {
            self.factor
                .ok_or_else(|| ModelError::Config("rope_scaling without factor".into()))
        };
        match self.rope_type.as_str() {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: self.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: self.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: self
                    .original_max_position_embeddings
                    .unwrap_or(8192),
            })),
            other => Err(ModelError::Unsupported(format!("rope scaling `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mistral_v03_config() {
        let json = r#"{"architectures":["MistralForCausalLM"],"vocab_size":32768,"hidden_size":4096,
            "intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,
            "num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_theta":1000000.0,
            "max_position_embeddings":32768,"sliding_window":null,"tie_word_embeddings":false}"#;
        let config = ModelConfig::from_hf_json(json).unwrap();
        assert_eq!(config, ModelConfig::named("mistral-7b").unwrap());
    }

    #[test]
    fn parses_llama3_rope_scaling() {
        let json = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":2,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let config = ModelConfig::from_hf_json(json).unwrap();
        assert!(
            matches!(config.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        assert_eq!(config.num_kv_heads, 2);
        assert_eq!(config.head_dim, 4);
    }

    #[test]
    fn rejects_bad_head_counts() {
        let json = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":3,"num_key_value_heads":2}"#;
        assert!(ModelConfig::from_hf_json(json).is_err());
    }
}
