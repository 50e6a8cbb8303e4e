//! nomic-bert (`nomic-embed-text`): BERT's post-norm layers with rotary positions, a fused
//! bias-free q|k|v projection and a SwiGLU MLP. Weights go by the names of nomic's Hugging
//! Face checkpoints; a GGUF's are mapped to them ([`gguf_name`]).

use super::bert::{expect_shape, Bert, BertConfig, BertKind, Layer, Mlp, Norm, Positions};
use super::rope::Rope;
use crate::error::Result;
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
