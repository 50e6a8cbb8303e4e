//! Q4_1 weights times f32 activations on the CPU, the way ggml does it: activations are
//! quantized to Q8_1 blocks, each block pair is an integer dot product (AVX2 where the CPU has
//! it), and each weight row is read once for every token of the batch.
//!
//! candle's own Q4_1 path is scalar and walks the batch token by token; this is the same math
//! in a fraction of the time.

use half::f16;
use rayon::prelude::*;

const BLOCK: usize = 32;
/// d (f16), m (f16), 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;

/// A Q4_1 matrix with its block scales decoded to f32 once, at load, instead of for every
/// token (decoding them in the inner loop cost a third of the time).
pub struct Q4_1Matrix {
    rows: usize,
    cols: usize,
    /// `(d, m)` per block, row-major.
    scales: Vec<(f32, f32)>,
    /// 16 bytes of nibbles per block, row-major.
    nibbles: Vec<[u8; 16]>,
}

impl Q4_1Matrix {
    /// From ggml's raw bytes of a `rows × cols` Q4_1 tensor.
    pub fn from_ggml(raw: &[u8], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(raw.len(), rows * cols / BLOCK * Q4_1_BYTES);
        let blocks = raw.chunks_exact(Q4_1_BYTES);
        let scales = blocks.clone().map(block_scales).collect();
        let nibbles = blocks
            .map(|b| b[4..20].try_into().expect("16 nibble bytes"))
            .collect();
        Self {
            rows,
            cols,
            scales,
            nibbles,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// One Q8_1 block of activations, with ggml's rounding: `d` in f16, `s = f16(d * Σq)`.
#[derive(Clone, Copy)]
struct Q8_1 {
    d: f32,
    s: f32,
    qs: [i8; BLOCK],
}

fn quantize_row(x: &[f32]) -> Vec<Q8_1> {
    x.chunks_exact(BLOCK)
        .map(|xs| {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; BLOCK];
            let mut sum = 0i32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            Q8_1 {
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
                qs,
            }
        })
        .collect()
}

/// `out[t][r] = Σ_k w[r][k] * x[t][k]` for `x` of `tokens × cols`.
pub fn matmul(w: &Q4_1Matrix, x: &[f32], tokens: usize) -> Vec<f32> {
    let (rows, blocks) = (w.rows, w.cols / BLOCK);
    let xq: Vec<Vec<Q8_1>> = x.par_chunks_exact(w.cols).map(quantize_row).collect();
    let dot = pick_dot();
    // Rows in parallel; each row's weights stay in cache while every token uses them.
    let mut out_t = vec![0f32; rows * tokens];
    out_t
        .par_chunks_mut(tokens)
        .enumerate()
        .for_each(|(r, out)| {
            let span = r * blocks..(r + 1) * blocks;
            let (scales, nibbles) = (&w.scales[span.clone()], &w.nibbles[span]);
            for (o, xs) in out.iter_mut().zip(&xq) {
                *o = dot(scales, nibbles, xs);
            }
        });
    // [rows, tokens] → [tokens, rows]
    let mut out = vec![0f32; tokens * rows];
    for r in 0..rows {
        for t in 0..tokens {
            out[t * rows + r] = out_t[r * tokens + t];
        }
    }
    out
}

type Dot = fn(&[(f32, f32)], &[[u8; 16]], &[Q8_1]) -> f32;

fn pick_dot() -> Dot {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return |s, n, x| unsafe { dot_avx2(s, n, x) };
    }
    dot_scalar
}

fn block_scales(b: &[u8]) -> (f32, f32) {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
    (d, m)
}

fn dot_scalar(scales: &[(f32, f32)], nibbles: &[[u8; 16]], x: &[Q8_1]) -> f32 {
    let mut sum = 0f32;
    for ((&(d, m), q4), y) in scales.iter().zip(nibbles).zip(x) {
        let mut sumi = 0i32;
        for j in 0..BLOCK / 2 {
            let q = q4[j];
            sumi +=
                (q & 0x0F) as i32 * y.qs[j] as i32 + (q >> 4) as i32 * y.qs[j + BLOCK / 2] as i32;
        }
        sum += d * y.d * sumi as f32 + m * y.s;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(scales: &[(f32, f32)], nibbles: &[[u8; 16]], x: &[Q8_1]) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut sum = 0f32;
    for ((&(d, m), q4), y) in scales.iter().zip(nibbles).zip(x) {
        // 16 bytes of nibbles → 32 unsigned bytes: low nibbles first (values 0..16), then high.
        let packed = _mm_loadu_si128(q4.as_ptr() as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
        let q4 = _mm256_and_si256(both, low);
        let q8 = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        // u8 × i8 pairs summed to i16, then pairs of i16 summed to i32.
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones);
        let half = _mm_add_epi32(
            _mm256_castsi256_si128(sums),
            _mm256_extracti128_si256(sums, 1),
        );
        let quad = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b01_00_11_10));
        let sumi = _mm_cvtsi128_si32(_mm_add_epi32(quad, _mm_shuffle_epi32(quad, 0b10_11_00_01)));
        sum += d * y.d * sumi as f32 + m * y.s;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_dequantized_math_and_scalar() {
        let (rows, cols, tokens) = (24, 96, 5);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 104_729 % 997) as f32 / 498.0 - 1.0))
            .collect();
        let q = QTensor::quantize(
            &Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(),
            GgmlDType::Q4_1,
        )
        .unwrap();
        let raw = q.data().unwrap();
        let matrix = Q4_1Matrix::from_ggml(&raw, rows, cols);
        let ours = matmul(&matrix, &x, tokens);

        let wd = q.dequantize(&Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x.clone(), (tokens, cols), &Device::Cpu).unwrap();
        let exact: Vec<f32> = xt
            .matmul(&wd.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in ours.iter().zip(&exact) {
            assert!((a - b).abs() < 0.02 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let xq: Vec<Vec<Q8_1>> = x.chunks(cols).map(quantize_row).collect();
        for t in 0..tokens {
            for r in 0..rows {
                let span = r * (cols / 32)..(r + 1) * (cols / 32);
                let scalar =
                    dot_scalar(&matrix.scales[span.clone()], &matrix.nibbles[span], &xq[t]);
                assert!((scalar - ours[t * rows + r]).abs() <= 1e-5 * (1.0 + scalar.abs()));
            }
        }
    }
}
