//! Decoder families: which models the forward in `model.rs` runs, by the names their files
//! give them, and what each family calls its tensors in either format. A second family (Qwen2,
//! say) is one file here (the names its files use, its tensors' names) and a variant below;
//! what it changes in the forward (biases on q, k and v, for Qwen2) is a switch the forward
//! reads from its [`Architecture`].

mod llama;

use crate::error::{ModelError, Result};

/// A decoder family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Architecture {
    /// Llama and Mistral: pre-norm layers, grouped-query attention, rotary positions, a SwiGLU
    /// MLP, RMS norms, no biases.
    #[default]
    Llama,
}

impl Architecture {
    /// From a GGUF's `general.architecture`.
    pub fn of_gguf(name: &str) -> Result<Self> {
        if llama::GGUF_NAMES.contains(&name) {
            return Ok(Architecture::Llama);
        }
        Err(ModelError::Unsupported(format!(
            "GGUF architecture `{name}`"
        )))
    }

    /// From a config.json: its first `architectures` class, else its `model_type`.
    pub fn of_hf(class: Option<&str>, model_type: Option<&str>) -> Result<Self> {
        let known = match class {
            Some(class) => llama::HF_CLASSES.contains(&class),
            None => model_type.is_some_and(|t| llama::MODEL_TYPES.contains(&t)),
        };
        if known {
            return Ok(Architecture::Llama);
        }
        Err(ModelError::Unsupported(format!(
            "architecture {}",
            class.or(model_type).unwrap_or("unknown")
        )))
    }

    /// As llama.cpp names it (what `/api/show` says).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
        }
    }

    /// A weight's name in a Hugging Face safetensors checkpoint.
    pub fn hf_name(self, param: Param) -> String {
        match self {
            Architecture::Llama => llama::hf_name(param),
        }
    }

    /// A weight's name in a GGUF file, as llama.cpp's converter writes it.
    pub fn gguf_name(self, param: Param) -> String {
        match self {
            Architecture::Llama => llama::gguf_name(param),
        }
    }
}

/// One weight of a decoder (each family names it its own way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    TokenEmbedding,
    OutputNorm,
    /// The LM head; absent when it is tied to the token embedding.
    Output,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

impl Param {
    /// Every parameter of a model with `num_layers` layers, in load order.
    pub fn all(num_layers: usize) -> Vec<Param> {
        use Param::*;
        let mut params = vec![TokenEmbedding];
        for l in 0..num_layers {
            params.extend([
                AttnNorm(l),
                Q(l),
                K(l),
                V(l),
                O(l),
                FfnNorm(l),
                Gate(l),
                Up(l),
                Down(l),
            ]);
        }
        params.extend([OutputNorm, Output]);
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_known_by_their_files_names_and_others_refused_by_name() {
        for name in ["llama", "mistral"] {
            assert_eq!(Architecture::of_gguf(name).unwrap(), Architecture::Llama);
        }
        assert_eq!(
            Architecture::of_hf(Some("MistralForCausalLM"), Some("mistral")).unwrap(),
            Architecture::Llama
        );
        assert_eq!(
            Architecture::of_hf(None, Some("llama")).unwrap(),
            Architecture::Llama
        );
        let err = Architecture::of_gguf("qwen2").unwrap_err().to_string();
        assert!(err.contains("qwen2"), "{err}");
        let err = Architecture::of_hf(Some("Qwen2ForCausalLM"), Some("qwen2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Qwen2ForCausalLM"), "{err}");
        let llama = Architecture::Llama;
        assert_eq!(llama.gguf_name(Param::Q(3)), "blk.3.attn_q.weight");
        assert_eq!(
            llama.hf_name(Param::Q(3)),
            "model.layers.3.self_attn.q_proj.weight"
        );
    }
}
