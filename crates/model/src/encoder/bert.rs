//! BERT, the encoder behind sentence-transformers models (all-MiniLM, mxbai-embed-large): token,
//! position and type embeddings, then post-norm layers of bidirectional attention and a GELU
//! MLP. Weights are named as Hugging Face names them; a GGUF file's names are mapped to those
//! (see [`gguf_name`]), so one forward serves both formats.

use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;

/// The shape of a BERT encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    pub layer_norm_eps: f64,
    pub kind: BertKind,
}

/// Which member of the BERT family: where positions come from, and the MLP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BertKind {
    /// Learned absolute positions, biases everywhere, a GELU MLP.
    Bert,
    /// nomic-bert (`nomic-embed-text`): rotary positions (NeoX halves) at `rope_base`, no
    /// biases on the projections, a SwiGLU MLP; post-norm as BERT.
    Nomic { rope_base: f32 },
}

impl BertConfig {
    /// From a Hugging Face `config.json` of `model_type` bert.
    pub fn from_hf_json(config: &serde_json::Value) -> Result<Self> {
        let int = |key: &str| {
            config[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Config(format!("config.json has no integer `{key}`")))
        };
        if let Some(act) = config["hidden_act"].as_str() {
            if act != "gelu" {
                return Err(ModelError::Unsupported(format!(
                    "BERT with hidden_act `{act}` (only gelu)"
                )));
            }
        }
        if let Some(kind) = config["position_embedding_type"].as_str() {
            if kind != "absolute" {
                return Err(ModelError::Unsupported(format!(
                    "BERT with position_embedding_type `{kind}` (only absolute)"
                )));
            }
        }
        Self {
            vocab_size: int("vocab_size")?,
            hidden_size: int("hidden_size")?,
            layers: int("num_hidden_layers")?,
            heads: int("num_attention_heads")?,
            intermediate_size: int("intermediate_size")?,
            max_positions: int("max_position_embeddings")?,
            layer_norm_eps: config["layer_norm_eps"].as_f64().unwrap_or(1e-12),
            kind: BertKind::Bert,
        }
        .checked()
    }

    /// From a GGUF's `bert.*` (or `nomic-bert.*`) metadata.
    pub fn from_gguf(file: &crate::weights::GgufFile) -> Result<Self> {
        let arch = file.string("general.architecture").unwrap_or("bert");
        let int = |key: &str| {
            file.uint(&format!("{arch}.{key}"))
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Config(format!("GGUF has no `{arch}.{key}`")))
        };
        let kind = match arch {
            "nomic-bert" => BertKind::Nomic {
                rope_base: file
                    .float("nomic-bert.rope.freq_base")
                    .map_or(1000.0, |b| b as f32),
            },
            _ => BertKind::Bert,
        };
        let vocab_size = file
            .array("tokenizer.ggml.tokens")
            .map(Vec::len)
            .ok_or_else(|| ModelError::Config("GGUF has no tokenizer.ggml.tokens".into()))?;
        Self {
            vocab_size,
            hidden_size: int("embedding_length")?,
            layers: int("block_count")?,
            heads: int("attention.head_count")?,
            intermediate_size: int("feed_forward_length")?,
            max_positions: int("context_length")?,
            layer_norm_eps: file
                .float(&format!("{arch}.attention.layer_norm_epsilon"))
                .unwrap_or(1e-12),
            kind,
        }
        .checked()
    }

    pub(super) fn checked(self) -> Result<Self> {
        if self.heads == 0 || !self.hidden_size.is_multiple_of(self.heads) || self.layers == 0 {
            return Err(ModelError::Config(format!(
                "BERT with hidden size {} over {} heads and {} layers",
                self.hidden_size, self.heads, self.layers
            )));
        }
        Ok(self)
    }
}

/// The GGUF name llama.cpp's converter gives a Hugging Face BERT tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    map_name(
        hf,
        &[
            ("embeddings.word_embeddings.weight", "token_embd.weight"),
            (
                "embeddings.position_embeddings.weight",
                "position_embd.weight",
            ),
            (
                "embeddings.token_type_embeddings.weight",
                "token_types.weight",
            ),
            ("embeddings.LayerNorm.weight", "token_embd_norm.weight"),
            ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
        ],
        "encoder.layer.",
        &[
            ("attention.self.query", "attn_q"),
            ("attention.self.key", "attn_k"),
            ("attention.self.value", "attn_v"),
            ("attention.output.dense", "attn_output"),
            ("attention.output.LayerNorm", "attn_output_norm"),
            ("intermediate.dense", "ffn_up"),
            ("output.dense", "ffn_down"),
            ("output.LayerNorm", "layer_output_norm"),
        ],
    )
}

/// A Hugging Face tensor name in GGUF's: one of `fixed`, or `{layers}N.{module}.{kind}` as
/// `blk.N.{gguf module}.{kind}` by `modules`.
pub(super) fn map_name(
    hf: &str,
    fixed: &[(&str, &str)],
    layers: &str,
    modules: &[(&str, &str)],
) -> Option<String> {
    if let Some((_, gguf)) = fixed.iter().find(|(name, _)| *name == hf) {
        return Some(gguf.to_string());
    }
    let (layer, part) = hf.strip_prefix(layers)?.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let (_, gguf) = modules.iter().find(|(name, _)| *name == module)?;
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

pub(super) struct Norm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) eps: f32,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

pub(super) struct Layer {
    /// Query, key and value as one matrix (one GEMM instead of three), the query's rows
    /// pre-scaled by 1/sqrt(head_dim).
    pub(super) qkv: Linear,
    pub(super) attention_out: Linear,
    pub(super) attention_norm: Norm,
    pub(super) mlp: Mlp,
    pub(super) output_norm: Norm,
}

pub(super) enum Mlp {
    Gelu {
        up: Linear,
        down: Linear,
    },
    /// silu(gate(x)) * up(x), then down.
    SwiGlu {
        up: Linear,
        gate: Linear,
        down: Linear,
    },
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Mlp::Gelu { up, down } => down.forward(&super::gelu::gelu_erf(&up.forward(x)?)?)?,
            Mlp::SwiGlu { up, gate, down } => {
                let gated = (candle_nn::ops::silu(&gate.forward(x)?)? * up.forward(x)?)?;
                down.forward(&gated)?
            }
        })
    }
}

/// Where a token's position comes from.
pub(super) enum Positions {
    /// A learned row per position, added to the embeddings.
    Learned(Tensor),
    /// Rotary, applied to queries and keys in every layer.
    Rotary(super::rope::Rope),
}

/// A BERT-family encoder's weights, f32 on its device.
pub struct Bert {
    pub(super) config: BertConfig,
    pub(super) word: Tensor,
    pub(super) positions: Positions,
    pub(super) token_type: Tensor,
    pub(super) embedding_norm: Norm,
    pub(super) layers: Vec<Layer>,
}

impl Bert {
    /// Loads a BERT's weights through `get`, which takes Hugging Face names. (nomic-bert's
    /// are `nomic::load`'s.)
    pub fn load(
        config: BertConfig,
        get: &mut dyn FnMut(&str) -> Result<Tensor>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let eps = config.layer_norm_eps as f32;
        let matrix = |get: &mut dyn FnMut(&str) -> Result<Tensor>, name: &str, rows, cols| {
            let weight = expect_shape(get(&format!("{name}.weight"))?, &[rows, cols], name)?;
            let bias = expect_shape(get(&format!("{name}.bias"))?, &[rows], name)?;
            Ok::<_, ModelError>(Linear::new(weight, Some(bias)))
        };
        let norm = |get: &mut dyn FnMut(&str) -> Result<Tensor>, name: &str, size| {
            Ok::<_, ModelError>(Norm {
                weight: expect_shape(get(&format!("{name}.weight"))?, &[size], name)?,
                bias: expect_shape(get(&format!("{name}.bias"))?, &[size], name)?,
                eps,
            })
        };
        let (h, ff) = (config.hidden_size, config.intermediate_size);
        let word = expect_shape(
            get("embeddings.word_embeddings.weight")?,
            &[config.vocab_size, h],
            "word embeddings",
        )?;
        let position = get("embeddings.position_embeddings.weight")?;
        let token_type = get("embeddings.token_type_embeddings.weight")?;
        let embedding_norm = norm(get, "embeddings.LayerNorm", h)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = format!("encoder.layer.{i}");
            let scale = 1.0 / ((h / config.heads) as f64).sqrt();
            let q = matrix(get, &format!("{p}.attention.self.query"), h, h)?;
            let k = matrix(get, &format!("{p}.attention.self.key"), h, h)?;
            let v = matrix(get, &format!("{p}.attention.self.value"), h, h)?;
            let bias = |l: &Linear| l.bias().expect("loaded with a bias").clone();
            let qkv = Linear::new(
                Tensor::cat(
                    &[
                        (q.weight() * scale)?,
                        k.weight().clone(),
                        v.weight().clone(),
                    ],
                    0,
                )?,
                Some(Tensor::cat(&[(bias(&q) * scale)?, bias(&k), bias(&v)], 0)?),
            );
            layers.push(Layer {
                qkv,
                attention_out: matrix(get, &format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: norm(get, &format!("{p}.attention.output.LayerNorm"), h)?,
                mlp: Mlp::Gelu {
                    up: matrix(get, &format!("{p}.intermediate.dense"), ff, h)?,
                    down: matrix(get, &format!("{p}.output.dense"), h, ff)?,
                },
                output_norm: norm(get, &format!("{p}.output.LayerNorm"), h)?,
            });
            progress(i + 1, config.layers);
        }
        let max_positions = position.dim(0)?.min(config.max_positions);
        Ok(Self {
            config: BertConfig {
                max_positions,
                ..config
            },
            word,
            positions: Positions::Learned(position),
            token_type,
            embedding_norm,
            layers,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.word.device()
    }

    /// The last hidden states of sequences packed without padding, the CPU's way (no row of
    /// any matrix is padding): `ids` holds them one after another, sequence `b` `lens[b]`
    /// tokens long. Returns (sum of `lens`, hidden).
    pub fn forward_packed(&self, ids: &[u32], lens: &[usize]) -> Result<Tensor> {
        let device = self.device();
        let positions: Vec<u32> = lens.iter().flat_map(|&n| 0..n as u32).collect();
        let rows = ids.len();
        let x = self.embed(
            &Tensor::from_slice(ids, rows, device)?,
            &Tensor::from_slice(&positions, rows, device)?,
        )?;
        let (heads, head_dim) = self.heads();
        self.layers(x, &|qkv: &Tensor| {
            let mut rows = qkv.flatten_all()?.to_vec1::<f32>()?;
            if let Positions::Rotary(rope) = &self.positions {
                rope.rotate_rows(&mut rows, &positions, heads);
            }
            let out = super::attention::attend(&rows, heads, head_dim, lens);
            Ok(Tensor::from_vec(
                out,
                (ids.len(), heads * head_dim),
                device,
            )?)
        })
    }

    /// The last hidden states, (batch, len, hidden), of `ids` (batch, len) where `mask`
    /// (batch, len) is 1 on real tokens and 0 on padding: the way for candle's ops (a GPU),
    /// which add -1e30 to padded keys before the softmax (exp() makes exact zeros).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let h = self.config.hidden_size;
        let (heads, head_dim) = self.heads();
        let positions = Tensor::arange(0u32, len as u32, self.device())?.repeat(batch)?;
        let x = self.embed(&ids.flatten_all()?, &positions)?;
        let key_bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e30)?.reshape((batch, 1, 1, len))?;
        let x = self.layers(x, &|qkv: &Tensor| {
            // (batch, len, 3, heads, head_dim) -> three (batch, heads, len, head_dim).
            let qkv = qkv
                .reshape((batch, len, 3, heads, head_dim))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let (mut q, mut k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            if let Positions::Rotary(rope) = &self.positions {
                (q, k) = (rope.rotate(&q)?, rope.rotate(&k)?);
            }
            let scores = q.matmul(&k.t()?)?.broadcast_add(&key_bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            Ok(probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch * len, h))?)
        })?;
        Ok(x.reshape((batch, len, h))?)
    }

    fn heads(&self) -> (usize, usize) {
        let heads = self.config.heads;
        (heads, self.config.hidden_size / heads)
    }

    /// Token, position and type embeddings, normalised: one row per id.
    fn embed(&self, ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let mut embedded = self
            .word
            .index_select(ids, 0)?
            .broadcast_add(&self.token_type.get(0)?)?;
        if let Positions::Learned(table) = &self.positions {
            embedded = (embedded + table.index_select(positions, 0)?)?;
        }
        self.embedding_norm.forward(&embedded)
    }

    /// Every layer over the rows `x`; `attend` turns a layer's q|k|v rows into its context.
    fn layers(&self, mut x: Tensor, attend: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        for layer in &self.layers {
            let context = attend(&layer.qkv.forward(&x)?)?;
            let attended = (layer.attention_out.forward(&context)? + &x)?;
            x = layer.attention_norm.forward(&attended)?;
            let out = (layer.mlp.forward(&x)? + &x)?;
            x = layer.output_norm.forward(&out)?;
        }
        Ok(x)
    }
}

pub(super) fn expect_shape(t: Tensor, dims: &[usize], name: &str) -> Result<Tensor> {
    if t.dims() != dims {
        return Err(ModelError::Config(format!(
            "{name} has shape {:?}, expected {dims:?}",
            t.dims()
        )));
    }
    Ok(t.to_dtype(DType::F32)?.contiguous()?)
}

/// The mean of `hidden` (batch, len, hidden) over the tokens `mask` (batch, len) marks.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(summed.broadcast_div(&counts)?)
}
