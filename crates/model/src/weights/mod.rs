//! Where weights come from. Each format names tensors its own way; the model asks for a
//! [`Param`] and a [`WeightSource`] hands it back, quantized or not.

mod gguf;
mod random;
mod safetensors;

pub(crate) use self::gguf::as_u64;
pub use self::gguf::{parameter_size, GgufFile, GgufWeights};
pub use self::random::{RandomDType, RandomWeights};
pub use self::safetensors::SafetensorsWeights;

use crate::error::Result;
use candle_core::quantized::QMatMul;
use candle_core::Tensor;

/// One weight of the architecture.
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
    pub fn hf_name(self) -> String {
        use Param::*;
        match self {
            TokenEmbedding => "model.embed_tokens.weight".into(),
            OutputNorm => "model.norm.weight".into(),
            Output => "lm_head.weight".into(),
            AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            Q(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
            K(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
            V(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
            O(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
            FfnNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Gate(l) => format!("model.layers.{l}.mlp.gate_proj.weight"),
            Up(l) => format!("model.layers.{l}.mlp.up_proj.weight"),
            Down(l) => format!("model.layers.{l}.mlp.down_proj.weight"),
        }
    }

    pub fn gguf_name(self) -> String {
        use Param::*;
        match self {
            TokenEmbedding => "token_embd.weight".into(),
            OutputNorm => "output_norm.weight".into(),
            Output => "output.weight".into(),
            AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            Q(l) => format!("blk.{l}.attn_q.weight"),
            K(l) => format!("blk.{l}.attn_k.weight"),
            V(l) => format!("blk.{l}.attn_v.weight"),
            O(l) => format!("blk.{l}.attn_output.weight"),
            FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Gate(l) => format!("blk.{l}.ffn_gate.weight"),
            Up(l) => format!("blk.{l}.ffn_up.weight"),
            Down(l) => format!("blk.{l}.ffn_down.weight"),
        }
    }

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

/// A store of weights in one format. Matrices are `[out_features, in_features]`, with Q and K
/// rows in Hugging Face's rotary layout (GGUF's interleaved layout is undone on load).
pub trait WeightSource {
    /// A weight used as a matrix (or an embedding table): kept quantized when it is.
    fn matrix(&mut self, param: Param) -> Result<QMatMul>;
    /// A small weight (norms) as a dense f32 tensor.
    fn vector(&mut self, param: Param) -> Result<Tensor>;
    fn contains(&self, param: Param) -> bool;
}
