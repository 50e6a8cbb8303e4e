//! Rotary position embedding: the frequencies (with long-context scaling) and the cos/sin rows
//! for the positions of a batch.

use crate::config::{ModelConfig, RopeScaling};
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let dim = config.head_dim;
        let mut inv_freq: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / dim as f64))
            .collect();
        match &config.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::Factors(factors)) => {
                for (f, &d) in inv_freq.iter_mut().zip(factors) {
                    *f /= d as f64;
                }
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old_len = *original_max_position_embeddings as f64;
                let low_wavelen = old_len / low_freq_factor;
                let high_wavelen = old_len / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Self {
            inv_freq: inv_freq.into_iter().map(|f| f as f32).collect(),
        }
    }

    /// `(cos, sin)`, each `[positions.len(), head_dim / 2]`, computed in f32 as transformers does.
    pub fn cos_sin(&self, positions: &[u32], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }
}

/// One step's rotary rows: cos and sin `[tokens, head_dim / 2]` in f32 (what our CUDA kernel
/// reads) and in the model's dtype (what candle's rope takes).
pub struct RopeRows {
    pub cos: Tensor,
    pub sin: Tensor,
    pub cos_in_dtype: Tensor,
    pub sin_in_dtype: Tensor,
}

impl RopeRows {
    pub fn new(rope: &Rope, positions: &[u32], device: &Device, dtype: DType) -> Result<Self> {
        let (cos, sin) = rope.cos_sin(positions, device)?;
        Ok(Self {
            cos_in_dtype: cos.to_dtype(dtype)?,
            sin_in_dtype: sin.to_dtype(dtype)?,
            cos,
            sin,
        })
    }
}
