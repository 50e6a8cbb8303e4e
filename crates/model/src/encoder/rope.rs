//! Rotary positions for encoders that have them (nomic-bert): NeoX halves, the pair
//! (i, i + d/2) of each head turned by position * base^(-2i/d), as llama.cpp's NeoX rope.

use crate::error::Result;
use candle_core::{Device, Tensor};

pub struct Rope {
    /// cos and sin of every (position, i < d/2), row-major.
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    /// The same as (positions, d/2) tensors, for candle's rope on other devices.
    cos_t: Tensor,
    sin_t: Tensor,
}

impl Rope {
    pub fn new(base: f32, head_dim: usize, max_positions: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for i in 0..half {
                let angle = p as f32 * base.powf(-2.0 * i as f32 / head_dim as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos_t: Tensor::from_slice(&cos, (max_positions, half), device)?,
            sin_t: Tensor::from_slice(&sin, (max_positions, half), device)?,
            cos,
            sin,
            half,
        })
    }

    /// Turns the q and k parts of packed q|k|v rows (`positions[t]` is row t's position).
    pub fn rotate_rows(&self, qkv: &mut [f32], positions: &[u32], heads: usize) {
        let half = self.half;
        let width = heads * 2 * half;
        for (row, &p) in qkv.chunks_exact_mut(3 * width).zip(positions) {
            let at = p as usize * half;
            let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
            for head in row[..2 * width].chunks_exact_mut(2 * half) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x, y) = (a[i], b[i]);
                    a[i] = x * cos[i] - y * sin[i];
                    b[i] = y * cos[i] + x * sin[i];
                }
            }
        }
    }

    /// Turns `x` (batch, heads, len, head_dim) at positions 0..len.
    pub fn rotate(&self, x: &Tensor) -> Result<Tensor> {
        let len = x.dim(2)?;
        Ok(candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &self.cos_t.narrow(0, 0, len)?,
            &self.sin_t.narrow(0, 0, len)?,
        )?)
    }
}
