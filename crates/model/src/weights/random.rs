//! Random weights at a real shape (vLLM's "dummy" load): for benchmarks that need the cost of
//! a model, not its answers. Seeded, so two runs build the same model.

use super::{Param, WeightSource};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::rng::SplitMix64;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};

/// How random matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomDType {
    F32,
    F16,
    Q8_0,
    Q4_0,
}

impl std::str::FromStr for RandomDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            other => Err(format!(
                "unknown random weight type `{other}` (f32, f16, q8_0, q4_0)"
            )),
        }
    }
}

pub struct RandomWeights {
    config: ModelConfig,
    seed: u64,
    dtype: RandomDType,
    device: Device,
}

impl RandomWeights {
    pub fn new(config: &ModelConfig, seed: u64, dtype: RandomDType, device: &Device) -> Self {
        Self {
            config: config.clone(),
            seed,
            dtype,
            device: device.clone(),
        }
    }

    fn shape(&self, param: Param) -> (usize, usize) {
        let c = &self.config;
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        match param {
            Param::TokenEmbedding | Param::Output => (c.vocab_size, c.hidden_size),
            Param::Q(_) => (q, c.hidden_size),
            Param::K(_) | Param::V(_) => (kv, c.hidden_size),
            Param::O(_) => (c.hidden_size, q),
            Param::Gate(_) | Param::Up(_) => (c.intermediate_size, c.hidden_size),
            Param::Down(_) => (c.hidden_size, c.intermediate_size),
            Param::OutputNorm | Param::AttnNorm(_) | Param::FfnNorm(_) => (1, c.hidden_size),
        }
    }

    fn values(&self, param: Param, len: usize, scale: f32) -> Vec<f32> {
        // Each parameter gets its own stream, so the load order does not matter.
        let mut rng = SplitMix64::new(self.seed ^ fnv1a(&format!("{param:?}")));
        (0..len).map(|_| (rng.unit() * 2.0 - 1.0) * scale).collect()
    }
}

impl WeightSource for RandomWeights {
    fn matrix(&mut self, param: Param) -> Result<QMatMul> {
        let (rows, cols) = self.shape(param);
        // Uniform in ±sqrt(3/cols) has variance 1/cols: activations keep their size.
        let scale = (3.0 / cols as f32).sqrt();
        let t = Tensor::from_vec(
            self.values(param, rows * cols, scale),
            (rows, cols),
            &Device::Cpu,
        )?;
        let quantized = match self.dtype {
            RandomDType::F32 => return Ok(QMatMul::Tensor(t.to_device(&self.device)?)),
            RandomDType::F16 => {
                let t = t.to_dtype(candle_core::DType::F16)?;
                return Ok(QMatMul::Tensor(t.to_device(&self.device)?));
            }
            RandomDType::Q8_0 => QTensor::quantize_onto(&t, GgmlDType::Q8_0, &self.device)?,
            RandomDType::Q4_0 => QTensor::quantize_onto(&t, GgmlDType::Q4_0, &self.device)?,
        };
        Ok(QMatMul::from_qtensor(quantized)?)
    }

    fn vector(&mut self, param: Param) -> Result<Tensor> {
        let (_, len) = self.shape(param);
        let noise = self.values(param, len, 0.1);
        let ones: Vec<f32> = noise.into_iter().map(|n| 1.0 + n).collect();
        Ok(Tensor::from_vec(ones, len, &self.device)?)
    }

    fn contains(&self, param: Param) -> bool {
        param != Param::Output || !self.config.tie_word_embeddings
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
