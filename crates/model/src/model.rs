//! The Mistral/Llama-family transformer: RMSNorm, rotary attention with grouped KV heads over
//! the paged cache, SwiGLU MLP. One `forward` serves any mix of prefill and decode chunks.

use crate::attention::{self, Attention, AttentionKind, AttentionSpec, HeadShape, StepLayout};
use crate::batch::{Batch, Logits, Reduce};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::fused;
use crate::kv_cache::KvCache;
use crate::linear::{Linear, Projections};
use crate::rope::{Rope, RopeRows};
use crate::weights::{Param, WeightSource};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};
use candle_nn::ops::rms_norm;

/// What one forward gives back.
#[derive(Debug)]
pub struct StepOutput {
    /// f32 logits, as [`Batch::logits`] asks.
    pub logits: Tensor,
    /// Per sequence, its reduced final hidden states where [`Batch::hidden`] asks for them.
    pub hidden: Vec<Option<Vec<f32>>>,
}

pub struct Model {
    config: ModelConfig,
    device: Device,
    /// The activations' (and the KV cache's) float type.
    dtype: DType,
    attention: Box<dyn Attention>,
    embedding: QMatMul,
    layers: Vec<Layer>,
    output_norm: Tensor,
    lm_head: Linear,
    rope: Rope,
}

/// How the model is built, beyond its device and dtype.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelOptions {
    pub attention: AttentionSpec,
    /// Quantized matrices dequantized to the model's dtype at load: the exact reference that
    /// quantized paths are measured against (tests), or dense matmuls where they are faster.
    pub dequantize: bool,
}

impl From<AttentionSpec> for ModelOptions {
    fn from(attention: AttentionSpec) -> Self {
        Self {
            attention,
            dequantize: false,
        }
    }
}

impl From<AttentionKind> for ModelOptions {
    fn from(kind: AttentionKind) -> Self {
        AttentionSpec::from(kind).into()
    }
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
    /// Loads every weight from `weights` onto `device`, computing in `dtype` with the
    /// attention implementation `options` names; `progress(done, total)` reports each layer.
    pub fn load(
        config: &ModelConfig,
        weights: &mut dyn WeightSource,
        device: &Device,
        dtype: DType,
        options: impl Into<ModelOptions>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        config.validate()?;
        let options = options.into();
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cuda) = device {
            ferrollama_kernels::prepare_device(cuda)?;
        }
        let attention = attention::build(options.attention, head_shape(config), dtype, device)?;
        // Dense matrices and norms compute in the model's dtype; quantized ones stay as they are
        // (unless asked to dequantize).
        let matrix = |weights: &mut dyn WeightSource, param| -> Result<QMatMul> {
            let m = weights.matrix(param)?;
            match m {
                QMatMul::QTensor(q) if options.dequantize => {
                    Ok(QMatMul::Tensor(q.dequantize(device)?.to_dtype(dtype)?))
                }
                m => in_dtype(m, dtype),
            }
        };
        let vector = |weights: &mut dyn WeightSource, param| -> Result<Tensor> {
            Ok(weights.vector(param)?.to_dtype(dtype)?)
        };
        // Embedding, the layers, then the head.
        let total = config.num_layers + 2;
        let embedding = matrix(weights, Param::TokenEmbedding)?;
        progress(1, total);
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let layer = Layer {
                attn_norm: vector(weights, Param::AttnNorm(l))?,
                qkv: Projections::new(vec![
                    matrix(weights, Param::Q(l))?,
                    matrix(weights, Param::K(l))?,
                    matrix(weights, Param::V(l))?,
                ])?,
                o: Linear::new(matrix(weights, Param::O(l))?)?,
                ffn_norm: vector(weights, Param::FfnNorm(l))?,
                gate_up: Projections::new(vec![
                    matrix(weights, Param::Gate(l))?,
                    matrix(weights, Param::Up(l))?,
                ])?,
                down: Linear::new(matrix(weights, Param::Down(l))?)?,
            };
            layers.push(layer);
            progress(l + 2, total);
        }
        let output_norm = vector(weights, Param::OutputNorm)?;
        let lm_head = Linear::new(if weights.contains(Param::Output) {
            matrix(weights, Param::Output)?
        } else {
            embedding.clone()
        })?;
        progress(total, total);
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            dtype,
            attention,
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

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The attention implementation's name (`native`, `generic`, `cuda`).
    pub fn attention(&self) -> &'static str {
        self.attention.name()
    }

    /// The KV cache's element type.
    pub fn kv_dtype(&self) -> DType {
        self.attention.kv_dtype()
    }

    /// Bytes of device memory one KV block of `block_size` tokens takes, every layer.
    pub fn kv_block_bytes(&self, block_size: usize) -> usize {
        let c = &self.config;
        let element = self.attention.kv_dtype().size_in_bytes();
        2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim * element
    }

    /// A KV cache of `num_blocks` blocks on the model's device, in its dtype and in the layout
    /// of its attention implementation.
    pub fn new_kv_cache(&self, block_size: usize, num_blocks: usize) -> Result<KvCache> {
        let layers = (0..self.config.num_layers)
            .map(|_| self.attention.allocate(num_blocks, block_size))
            .collect::<Result<_>>()?;
        Ok(KvCache::new(
            block_size,
            num_blocks,
            self.attention.name(),
            layers,
        ))
    }

    /// Runs one batch. Writes the new tokens' keys and values into `cache` and returns f32
    /// logits: `[sequences, vocab]` for [`Logits::Last`], `[tokens, vocab]` for [`Logits::All`].
    pub fn forward(&self, batch: &Batch<'_>, cache: &mut KvCache) -> Result<Tensor> {
        Ok(self
            .forward_until(batch, cache, &|| false)?
            .expect("never stopped")
            .logits)
    }

    /// As [`Model::forward`], but gives up between layers once `stop` says so (every caller of
    /// the batch has gone): `None`, with the cache's new slots half written, for sequences that
    /// are about to be dropped.
    pub fn forward_until(
        &self,
        batch: &Batch<'_>,
        cache: &mut KvCache,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<StepOutput>> {
        self.check(batch, cache)?;
        let c = &self.config;
        let ids: Vec<u32> = batch
            .seqs
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        // Everything about where the tokens go is built once here, not once per layer.
        let shape = head_shape(c);
        let layout = StepLayout::new(shape, cache.block_size(), &batch.seqs);
        let step = self.attention.prepare(&layout)?;
        let rope = RopeRows::new(&self.rope, &layout.positions, &self.device, self.dtype)?;
        let eps = c.rms_norm_eps as f32;

        let ids = Tensor::new(ids, &self.device)?;
        let mut x = self.embedding.embedding(&ids)?.to_dtype(self.dtype)?;
        // `h` is always the normed input of what comes next: each residual add is fused with
        // the norm after it.
        let mut h = rms_norm(&x, &self.layers[0].attn_norm, eps)?;
        for (l, layer) in self.layers.iter().enumerate() {
            if stop() {
                return Ok(None);
            }
            let qkv = layer.qkv.forward_joined(&h)?;
            let attn = step.forward_qkv(&cache.layers[l], &qkv, &shape, &rope)?;
            (x, h) = fused::add_rms_norm(&x, &layer.o.forward(&attn)?, &layer.ffn_norm, eps)?;
            let act = fused::swiglu(&layer.gate_up.forward_joined(&h)?)?;
            let next_norm = self
                .layers
                .get(l + 1)
                .map_or(&self.output_norm, |next| &next.attn_norm);
            (x, h) = fused::add_rms_norm(&x, &layer.down.forward(&act)?, next_norm, eps)?;
        }

        let hidden = self.reduce_hidden(batch, &h)?;
        let h = match batch.logits {
            Logits::All => h,
            Logits::Last => {
                let mut last = Vec::with_capacity(batch.seqs.len());
                let mut end = 0u32;
                for (i, seq) in batch.seqs.iter().enumerate() {
                    end += seq.tokens.len() as u32;
                    last.extend(end - batch.outputs_of(i) as u32..end);
                }
                h.index_select(&Tensor::new(last, &self.device)?, 0)?
            }
        };
        let logits = self.lm_head.forward(&h.contiguous()?)?;
        Ok(Some(StepOutput {
            logits: logits.to_dtype(DType::F32)?,
            hidden,
        }))
    }

    /// The final hidden states `h` (`[tokens, hidden]`) reduced as `batch.hidden` asks, per
    /// sequence, in f32.
    fn reduce_hidden(&self, batch: &Batch<'_>, h: &Tensor) -> Result<Vec<Option<Vec<f32>>>> {
        let mut out = Vec::with_capacity(batch.hidden.len());
        let mut start = 0;
        for (seq, reduce) in batch.seqs.iter().zip(&batch.hidden) {
            let n = seq.tokens.len();
            let row = match reduce {
                None => None,
                Some(Reduce::Sum) => Some(h.narrow(0, start, n)?.to_dtype(DType::F32)?.sum(0)?),
                Some(Reduce::First) => Some(h.get(start)?),
                Some(Reduce::Last) => Some(h.get(start + n - 1)?),
            };
            out.push(
                row.map(|r| r.to_dtype(DType::F32)?.to_vec1::<f32>())
                    .transpose()?,
            );
            start += n;
        }
        Ok(out)
    }

    fn check(&self, batch: &Batch<'_>, cache: &KvCache) -> Result<()> {
        if cache.layout != self.attention.name() {
            return Err(ModelError::Batch(format!(
                "a KV cache laid out for `{}` attention meets `{}`",
                cache.layout,
                self.attention.name()
            )));
        }
        if batch.seqs.is_empty() {
            return Err(ModelError::Batch("empty batch".into()));
        }
        if !batch.outputs.is_empty() && batch.outputs.len() != batch.seqs.len() {
            return Err(ModelError::Batch("one output count per sequence".into()));
        }
        if !batch.hidden.is_empty() && batch.hidden.len() != batch.seqs.len() {
            return Err(ModelError::Batch(
                "one hidden-state reduction per sequence".into(),
            ));
        }
        for (i, seq) in batch.seqs.iter().enumerate() {
            if seq.tokens.is_empty() {
                return Err(ModelError::Batch("a sequence without new tokens".into()));
            }
            if batch.outputs_of(i) > seq.tokens.len() || batch.outputs_of(i) == 0 {
                return Err(ModelError::Batch(format!(
                    "{} output rows from a chunk of {} tokens",
                    batch.outputs_of(i),
                    seq.tokens.len()
                )));
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

fn head_shape(c: &ModelConfig) -> HeadShape {
    HeadShape {
        num_heads: c.num_heads,
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        sliding_window: c.sliding_window,
    }
}

/// A dense matrix converted to `dtype`; a quantized one as it is.
fn in_dtype(matrix: QMatMul, dtype: DType) -> Result<QMatMul> {
    Ok(match matrix {
        QMatMul::Tensor(t) => QMatMul::Tensor(t.to_dtype(dtype)?),
        QMatMul::TensorF16(t) => QMatMul::Tensor(t.to_dtype(dtype)?),
        quantized => quantized,
    })
}
