//! nomic-bert (`nomic-embed-text`): BERT's post-norm layers with rotary positions, a fused
//! bias-free q|k|v projection and a SwiGLU MLP. Weights go by the names of nomic's Hugging
//! Face checkpoints (`nomic-ai/nomic-embed-text-v1.5`, whose code lives beside them); a GGUF's
//! are mapped to them ([`gguf_name`]).

use super::bert::{expect_shape, Bert, BertConfig, BertKind, Layer, Mlp, Norm, Positions};
use super::rope::Rope;
use crate::error::{ModelError, Result};
use serde_json::Value;

/// The shape from a nomic checkpoint's config.json: GPT-2's key names (`n_embd`, `n_layer`),
/// as nomic's own code reads them, or the usual ones (`hidden_size`), as transformers' port
/// writes them. What this forward does not do (pre-norm, biases, partial or interleaved
/// rotation, scaled rope) is refused by name.
pub fn config(config: &Value) -> Result<BertConfig> {
    let int = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| config[*k].as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::Config(format!("config.json has no integer `{}`", keys[0])))
    };
    let refuse = |what: &str| {
        Err(ModelError::Unsupported(format!(
            "nomic-bert with {what} (this server runs nomic-embed-text's shape)"
        )))
    };
    let is = |key: &str, value: Value| config.get(key).is_some_and(|v| *v == value);
    for key in [
        "prenorm",
        "qkv_proj_bias",
        "mlp_fc1_bias",
        "mlp_fc2_bias",
        "rotary_emb_interleaved",
    ] {
        if is(key, Value::Bool(true)) {
            return refuse(&format!("`{key}` true"));
        }
    }
    if let Some(fraction) = config["rotary_emb_fraction"].as_f64().filter(|f| *f != 1.0) {
        return refuse(&format!("rotary_emb_fraction {fraction}"));
    }
    if !config["rotary_scaling_factor"].is_null() {
        return refuse("rotary_scaling_factor");
    }
    let activation = config["activation_function"]
        .as_str()
        .or(config["hidden_act"].as_str())
        .unwrap_or("swiglu");
    if !matches!(activation, "swiglu" | "silu") {
        return refuse(&format!("activation `{activation}`"));
    }
    let rope_base = config["rotary_emb_base"]
        .as_f64()
        .or(config
            .pointer("/rope_parameters/rope_theta")
            .and_then(Value::as_f64))
        .unwrap_or(1000.0);
    BertConfig {
        vocab_size: int(&["vocab_size"])?,
        hidden_size: int(&["n_embd", "hidden_size"])?,
        layers: int(&["n_layer", "num_hidden_layers"])?,
        heads: int(&["n_head", "num_attention_heads"])?,
        intermediate_size: int(&["n_inner", "intermediate_size"])?,
        max_positions: int(&["n_positions", "max_position_embeddings"])?,
        layer_norm_eps: config["layer_norm_epsilon"]
            .as_f64()
            .or(config["layer_norm_eps"].as_f64())
            .unwrap_or(1e-12),
        kind: BertKind::Nomic {
            rope_base: rope_base as f32,
        },
    }
    .checked()
}
use candle_core::Tensor;
use candle_nn::Linear;

/// The GGUF name llama.cpp's converter gives a nomic-bert tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    super::bert::map_name(
        hf,
        &[
            ("embeddings.word_embeddings.weight", "token_embd.weight"),
            (
                "embeddings.token_type_embeddings.weight",
                "token_types.weight",
            ),
            ("emb_ln.weight", "token_embd_norm.weight"),
            ("emb_ln.bias", "token_embd_norm.bias"),
        ],
        "encoder.layers.",
        &[
            ("attn.Wqkv", "attn_qkv"),
            ("attn.out_proj", "attn_output"),
            ("norm1", "attn_output_norm"),
            ("mlp.fc11", "ffn_up"),
            ("mlp.fc12", "ffn_gate"),
            ("mlp.fc2", "ffn_down"),
            ("norm2", "layer_output_norm"),
        ],
    )
}

pub fn load(
    config: BertConfig,
    get: &mut dyn FnMut(&str) -> Result<Tensor>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Bert> {
    let BertKind::Nomic { rope_base } = config.kind else {
        unreachable!("nomic::load is for nomic-bert")
    };
    let eps = config.layer_norm_eps as f32;
    let (h, ff, heads) = (config.hidden_size, config.intermediate_size, config.heads);
    let matrix = |get: &mut dyn FnMut(&str) -> Result<Tensor>, name: &str, rows, cols| {
        let weight = expect_shape(get(&format!("{name}.weight"))?, &[rows, cols], name)?;
        Ok::<_, crate::ModelError>(Linear::new(weight, None))
    };
    let norm = |get: &mut dyn FnMut(&str) -> Result<Tensor>, name: &str| {
        Ok::<_, crate::ModelError>(Norm {
            weight: expect_shape(get(&format!("{name}.weight"))?, &[h], name)?,
            bias: expect_shape(get(&format!("{name}.bias"))?, &[h], name)?,
            eps,
        })
    };
    let word = expect_shape(
        get("embeddings.word_embeddings.weight")?,
        &[config.vocab_size, h],
        "word embeddings",
    )?;
    let token_type = get("embeddings.token_type_embeddings.weight")?;
    let embedding_norm = norm(get, "emb_ln")?;
    let head_dim = h / heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut layers = Vec::with_capacity(config.layers);
    for i in 0..config.layers {
        let p = format!("encoder.layers.{i}");
        let qkv = matrix(get, &format!("{p}.attn.Wqkv"), 3 * h, h)?;
        // The query's rows pre-scaled, as BERT's are (rotation is linear: the order is free).
        let weight = qkv.weight();
        let qkv = Linear::new(
            Tensor::cat(
                &[
                    (weight.narrow(0, 0, h)? * scale)?,
                    weight.narrow(0, h, 2 * h)?,
                ],
                0,
            )?,
            None,
        );
        layers.push(Layer {
            qkv,
            attention_out: matrix(get, &format!("{p}.attn.out_proj"), h, h)?,
            attention_norm: norm(get, &format!("{p}.norm1"))?,
            mlp: Mlp::SwiGlu {
                up: matrix(get, &format!("{p}.mlp.fc11"), ff, h)?,
                gate: matrix(get, &format!("{p}.mlp.fc12"), ff, h)?,
                down: matrix(get, &format!("{p}.mlp.fc2"), h, ff)?,
            },
            output_norm: norm(get, &format!("{p}.norm2"))?,
        });
        progress(i + 1, config.layers);
    }
    let rope = Rope::new(rope_base, head_dim, config.max_positions, word.device())?;
    Ok(Bert {
        config,
        word,
        positions: Positions::Rotary(rope),
        token_type,
        embedding_norm,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_reads_either_naming_and_refuses_what_it_does_not_run() {
        let gpt2 = json!({"model_type": "nomic_bert", "n_embd": 64, "n_head": 4, "n_inner": 128,
            "n_layer": 2, "n_positions": 2048, "vocab_size": 100, "rotary_emb_base": 1000,
            "rotary_emb_fraction": 1.0, "activation_function": "swiglu", "prenorm": false});
        let usual = json!({"model_type": "nomic_bert", "hidden_size": 64,
            "num_attention_heads": 4, "intermediate_size": 128, "num_hidden_layers": 2,
            "max_position_embeddings": 2048, "vocab_size": 100, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}});
        assert_eq!(config(&gpt2).unwrap(), config(&usual).unwrap());
        assert_eq!(
            config(&gpt2).unwrap().kind,
            BertKind::Nomic { rope_base: 1000.0 }
        );
        for (key, value) in [
            ("prenorm", json!(true)),
            ("qkv_proj_bias", json!(true)),
            ("rotary_emb_fraction", json!(0.5)),
            ("rotary_scaling_factor", json!(2.0)),
            ("activation_function", json!("gelu")),
        ] {
            let mut bad = gpt2.clone();
            bad[key] = value;
            let err = config(&bad).unwrap_err().to_string();
            assert!(
                err.contains(key.split('_').next().unwrap()) || err.contains("activation"),
                "{key}: {err}"
            );
        }
    }
}
