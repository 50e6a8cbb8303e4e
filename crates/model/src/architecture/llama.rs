//! The Llama family (Mistral's models are Llama-shaped): the names its files give it, and its
//! tensors' names.

use super::Param;

/// `general.architecture` of its GGUFs (llama.cpp writes Mistral's as `llama`; some tools
/// write `mistral`).
pub const GGUF_NAMES: [&str; 2] = ["llama", "mistral"];
/// config.json `architectures`.
pub const HF_CLASSES: [&str; 2] = ["MistralForCausalLM", "LlamaForCausalLM"];
/// config.json `model_type`.
pub const MODEL_TYPES: [&str; 2] = ["mistral", "llama"];

pub fn hf_name(param: Param) -> String {
    use Param::*;
    match param {
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

pub fn gguf_name(param: Param) -> String {
    use Param::*;
    match param {
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
