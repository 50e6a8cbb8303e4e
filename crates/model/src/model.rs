//! The Mistral/Llama-family transformer: RMSNorm, rotary attention with grouped KV heads over
//! the paged cache, SwiGLU MLP. One `forward` serves any mix of prefill and decode chunks.

use crate::attention::{paged_attention, write_kv, HeadShape, TokenSlots};
use crate::batch::{Batch, Logits};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::linear::{Linear, Projections};
use crate::rope::Rope;
use crate::weights::{Param, WeightSource};
use candle_core::quantized::QMatMul;
use candle_core::{Device, Tensor};
use candle_nn::ops::rms_norm;
use candle_nn::rotary_emb::rope_thd;

pub struct Model {
    config: ModelConfig,
    device: Device,
    embedding: QMatMul,
    layers: Vec<Layer>,
    output_norm: Tensor,
    lm_head: Linear,
    rope: Rope,
}

struct Layer {
    attn_norm: Tensor,
    /// q, k, v.
    qkv: Projections,
    o: Linear,
    ffn_norm: Tensor,
    /// gate, up.
    gate_up: Projections,
    down: Linear,
}

impl Model {
    /// Loads every weight from `weights`; `progress(done, total)` reports each loaded layer.
    pub fn load(
        config: &ModelConfig,
        weights: &mut dyn WeightSource,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        config.validate()?;
        // Embedding, the layers, then the head.
        let total = config.num_layers + 2;
        let embedding = weights.matrix(Param::TokenEmbedding)?;
        progress(1, total);
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let layer = Layer {
                attn_norm: weights.vector(Param::AttnNorm(l))?,
                qkv: Projections::new(vec![
                    weights.matrix(Param::Q(l))?,
                    weights.matrix(Param::K(l))?,
                    weights.matrix(Param::V(l))?,
                ])?,
                o: Linear::new(weights.matrix(Param::O(l))?)?,
                ffn_norm: weights.vector(Param::FfnNorm(l))?,
                gate_up: Projections::new(vec![
                    weights.matrix(Param::Gate(l))?,
                    weights.matrix(Param::Up(l))?,
                ])?,
                down: Linear::new(weights.matrix(Param::Down(l))?)?,
            };
            layers.push(layer);
            progress(l + 2, total);
        }
        let output_norm = weights.vector(Param::OutputNorm)?;
        let lm_head = Linear::new(if weights.contains(Param::Output) {
            weights.matrix(Param::Output)?
        } else {
            embedding.clone()
        })?;
        progress(total, total);
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            embedding,
            layers,
            output_norm,
            lm_head,
            rope: Rope::new(config),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs one batch. Writes the new tokens' keys and values into `cache` and returns f32
    /// logits: `[sequences, vocab]` for [`Logits::Last`], `[tokens, vocab]` for [`Logits::All`].
    pub fn forward(&self, batch: &Batch<'_>, cache: &mut KvCache) -> Result<Tensor> {
        self.check(batch, cache)?;
        let c = &self.config;
        let shape = HeadShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            sliding_window: c.sliding_window,
        };
        let n = batch.num_tokens();
        let ids: Vec<u32> = batch
            .seqs
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let slots = TokenSlots::new(cache, &batch.seqs);
        let (cos, sin) = self.rope.cos_sin(&slots.positions, &self.device)?;
        let eps = c.rms_norm_eps as f32;

        let mut x = self.embedding.embedding(&Tensor::new(ids, &self.device)?)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let [q, k, v]: [Tensor; 3] = layer
                .qkv
                .forward(&h)?
                .try_into()
                .expect("three projections");
            let q = q.reshape((1, n, c.num_heads, c.head_dim))?;
            let k = k.reshape((1, n, c.num_kv_heads, c.head_dim))?;
            let q = rope_thd(&q.contiguous()?, &cos, &sin)?;
            let k = rope_thd(&k.contiguous()?, &cos, &sin)?;

            let width = cache.slot_width();
            let kv_layer = cache.layer_mut(l);
            write_kv(kv_layer, width, &slots, &to_vec(&k)?, &to_vec(&v)?);
            let attn = paged_attention(kv_layer, &slots, &to_vec(&q)?, shape);
            let attn = Tensor::from_vec(attn, (n, c.num_heads * c.head_dim), &self.device)?;
            x = (x + layer.o.forward(&attn)?)?;

            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up]: [Tensor; 2] = layer
                .gate_up
                .forward(&h)?
                .try_into()
                .expect("two projections");
            let mlp = layer.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
            x = (x + mlp)?;
        }

        let x = match batch.logits {
            Logits::All => x,
            Logits::Last => {
                let mut last = Vec::with_capacity(batch.seqs.len());
                let mut end = 0u32;
                for seq in &batch.seqs {
                    end += seq.tokens.len() as u32;
                    last.push(end - 1);
                }
                x.index_select(&Tensor::new(last, &self.device)?, 0)?
            }
        };
        let x = rms_norm(&x.contiguous()?, &self.output_norm, eps)?;
        Ok(self.lm_head.forward(&x)?)
    }

    fn check(&self, batch: &Batch<'_>, cache: &KvCache) -> Result<()> {
        if batch.seqs.is_empty() {
            return Err(ModelError::Batch("empty batch".into()));
        }
        for seq in &batch.seqs {
            if seq.tokens.is_empty() {
                return Err(ModelError::Batch("a sequence without new tokens".into()));
            }
            if let Some(&bad) = seq
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::Batch(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            cache.check_table(seq.block_table, seq.context_len())?;
        }
        Ok(())
    }
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}
