//! Quantized weights (Q4_0, Q4_1, Q8_0) times f32 activations on the CPU, the way ggml does
//! it: activations are quantized to 8-bit blocks of 32, each block pair is an integer dot
//! product (AVX2, or AVX-512 VNNI where the CPU has it), scaled and summed in float.
//!
//! What makes it fast, measured against candle's CPU path and llama.cpp:
//! - rows are stored in interleaved quads (block `b` of rows `4q..4q+4` side by side, as
//!   llama.cpp's repacked Q4_0 does), so a matrix-vector product reads memory in one straight
//!   line, which is what decode, being memory-bound, needs;
//! - each kernel call computes four rows by up to four tokens: tokens share each unpacked
//!   weight block, rows share each activation block, and the sixteen accumulators are
//!   independent chains that hide the FMA latency;
//! - each weight row is read once per batch, not once per token;
//! - scales stay f16 as in the file (one instruction to widen; less memory to stream).

use half::f16;
use rayon::prelude::*;

const BLOCK: usize = 32;
/// Rows stored side by side and computed together.
const QUAD: usize = 4;
/// Quads per parallel task: big enough to amortise scheduling, small enough to balance.
const QUADS_PER_TASK: usize = 4;
/// Tokens that share one unpacked weight block.
const TOKENS_PER_PASS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `d · (q - 8)`, 4-bit q.
    Q4_0,
    /// `d · q + m`, 4-bit q.
    Q4_1,
    /// `d · q`, signed 8-bit q.
    Q8_0,
}

impl Format {
    /// Bytes of one block in ggml's layout.
    fn ggml_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }

    /// Bytes of quants in one block.
    fn quant_bytes(self) -> usize {
        match self {
            Format::Q4_0 | Format::Q4_1 => 16,
            Format::Q8_0 => 32,
        }
    }
}

/// A quantized `rows × cols` matrix in interleaved row quads (the last quad padded with zero
/// rows).
pub struct QuantMatrix {
    format: Format,
    rows: usize,
    blocks_per_row: usize,
    /// `d` per block as f16 bits: `[quad][block][row in quad]`.
    scales: Vec<u16>,
    /// `m` per block (f16 bits) for Q4_1, same order; empty otherwise.
    mins: Vec<u16>,
    /// `quant_bytes` per block, same order.
    quants: Vec<u8>,
}

impl QuantMatrix {
    /// From ggml's raw bytes of a `rows × cols` tensor (row-major blocks).
    pub fn from_ggml(format: Format, raw: &[u8], rows: usize, cols: usize) -> Self {
        assert_eq!(cols % BLOCK, 0, "rows must be whole blocks");
        let (gb, qb) = (format.ggml_bytes(), format.quant_bytes());
        let blocks_per_row = cols / BLOCK;
        assert_eq!(raw.len(), rows * blocks_per_row * gb);
        let quads = rows.div_ceil(QUAD);
        let slots = quads * blocks_per_row * QUAD;
        let mut scales = vec![0u16; slots];
        let mut mins = vec![0u16; if format == Format::Q4_1 { slots } else { 0 }];
        let mut quants = vec![0u8; slots * qb];
        for r in 0..rows {
            for b in 0..blocks_per_row {
                let src = &raw[(r * blocks_per_row + b) * gb..][..gb];
                let slot = ((r / QUAD) * blocks_per_row + b) * QUAD + r % QUAD;
                scales[slot] = u16::from_le_bytes([src[0], src[1]]);
                if format == Format::Q4_1 {
                    mins[slot] = u16::from_le_bytes([src[2], src[3]]);
                }
                quants[slot * qb..][..qb].copy_from_slice(&src[gb - qb..]);
            }
        }
        Self {
            format,
            rows,
            blocks_per_row,
            scales,
            mins,
            quants,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.blocks_per_row * BLOCK
    }

    pub fn format(&self) -> Format {
        self.format
    }

    fn quad(&self, q: usize) -> Quad<'_> {
        let slots = q * self.blocks_per_row * QUAD..(q + 1) * self.blocks_per_row * QUAD;
        let qb = self.format.quant_bytes();
        Quad {
            scales: &self.scales[slots.clone()],
            mins: if self.mins.is_empty() {
                &[]
            } else {
                &self.mins[slots.clone()]
            },
            quants: &self.quants[slots.start * qb..slots.end * qb],
        }
    }
}

/// Four interleaved rows: slot `b * QUAD + i` is block `b` of row `i`.
#[derive(Clone, Copy)]
struct Quad<'a> {
    scales: &'a [u16],
    mins: &'a [u16],
    quants: &'a [u8],
}

fn f16_bits(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// One block of activations quantized as ggml's Q8_0/Q8_1: `d` rounded through f16, the
/// integer sum of the quants, and `s = f16(d · sum)` (the Q4_1 offset term uses it). One cache
/// line each, quants first, so the kernel's vector loads never straddle two lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Q8 {
    qs: [i8; BLOCK],
    d: f32,
    s: f32,
    sum: i32,
}

fn quantize_row(x: &[f32]) -> Vec<Q8> {
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
            Q8 {
                qs,
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
                sum,
            }
        })
        .collect()
}

/// `out[t][r] = Σ_k w[r][k] · x[t][k]` for `x` of `tokens × cols`.
pub fn matmul(w: &QuantMatrix, x: &[f32], tokens: usize) -> Vec<f32> {
    let cols = w.cols();
    // The kernels index activation blocks unchecked: a short input must never reach them.
    assert_eq!(x.len(), tokens * cols, "input is not tokens × cols");
    let xq: Vec<Vec<Q8>> = if tokens > 1 {
        x.par_chunks_exact(cols).map(quantize_row).collect()
    } else {
        vec![quantize_row(x)]
    };
    let xs: Vec<&[Q8]> = xq.iter().map(Vec::as_slice).collect();
    let kernel = pick_kernel(w.format);
    // Tasks own a band of quads; within it each group of tokens meets every quad of the band
    // while the band's weights stay in cache.
    let quads = w.rows.div_ceil(QUAD);
    let mut out_t = vec![0f32; quads * QUAD * tokens];
    out_t
        .par_chunks_mut(QUADS_PER_TASK * QUAD * tokens)
        .enumerate()
        .for_each(|(task, band)| {
            let band_quads = band.len() / (QUAD * tokens);
            for (g, group) in xs.chunks(TOKENS_PER_PASS).enumerate() {
                let t0 = g * TOKENS_PER_PASS;
                for i in 0..band_quads {
                    let mut tile = [[0f32; TOKENS_PER_PASS]; QUAD];
                    kernel(w.quad(task * QUADS_PER_TASK + i), group, &mut tile);
                    for (r, values) in tile.iter().enumerate() {
                        let at = (i * QUAD + r) * tokens + t0;
                        band[at..at + group.len()].copy_from_slice(&values[..group.len()]);
                    }
                }
            }
        });
    // [rows, tokens] → [tokens, rows], without the padding rows.
    let rows = w.rows;
    if tokens == 1 {
        out_t.truncate(rows);
        return out_t;
    }
    let mut out = vec![0f32; tokens * rows];
    for r in 0..rows {
        for t in 0..tokens {
            out[t * rows + r] = out_t[r * tokens + t];
        }
    }
    out
}

/// Dots a quad of weight rows with up to `TOKENS_PER_PASS` activation rows: `out[r][t]`.
type Kernel = fn(Quad<'_>, &[&[Q8]], &mut [[f32; TOKENS_PER_PASS]; QUAD]);

fn pick_kernel(format: Format) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        return match format {
            Format::Q4_0 => avx2::pick::<{ avx2::Q4_0 }>(),
            Format::Q4_1 => avx2::pick::<{ avx2::Q4_1 }>(),
            Format::Q8_0 => avx2::pick::<{ avx2::Q8_0 }>(),
        };
    }
    match format {
        Format::Q4_0 => |q, x, o| scalar_tile(Format::Q4_0, q, x, o),
        Format::Q4_1 => |q, x, o| scalar_tile(Format::Q4_1, q, x, o),
        Format::Q8_0 => |q, x, o| scalar_tile(Format::Q8_0, q, x, o),
    }
}

/// The reference: plain integer dots per block.
fn scalar_tile(
    format: Format,
    quad: Quad<'_>,
    xs: &[&[Q8]],
    out: &mut [[f32; TOKENS_PER_PASS]; QUAD],
) {
    let qb = format.quant_bytes();
    for (r, out) in out.iter_mut().enumerate() {
        for (o, x) in out.iter_mut().zip(xs) {
            let mut sum = 0f32;
            for (b, y) in x.iter().enumerate() {
                let slot = b * QUAD + r;
                let q = &quad.quants[slot * qb..][..qb];
                let d = f16_bits(quad.scales[slot]) * y.d;
                sum += match format {
                    Format::Q4_0 => {
                        let sumi: i32 = (0..16)
                            .map(|j| {
                                ((q[j] & 0x0F) as i32 - 8) * y.qs[j] as i32
                                    + ((q[j] >> 4) as i32 - 8) * y.qs[j + 16] as i32
                            })
                            .sum();
                        d * sumi as f32
                    }
                    Format::Q4_1 => {
                        let sumi: i32 = (0..16)
                            .map(|j| {
                                (q[j] & 0x0F) as i32 * y.qs[j] as i32
                                    + (q[j] >> 4) as i32 * y.qs[j + 16] as i32
                            })
                            .sum();
                        d * sumi as f32 + f16_bits(quad.mins[slot]) * y.s
                    }
                    Format::Q8_0 => {
                        let sumi: i32 = (0..32).map(|j| q[j] as i8 as i32 * y.qs[j] as i32).sum();
                        d * sumi as f32
                    }
                };
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Quad, Q8, QUAD, TOKENS_PER_PASS};
    use std::arch::x86_64::*;

    pub const Q4_0: u8 = 0;
    pub const Q4_1: u8 = 1;
    pub const Q8_0: u8 = 2;

    type Out = [[f32; TOKENS_PER_PASS]; QUAD];

    /// The kernel for format `F` on this CPU, chosen once per matrix product: AVX-512 VNNI
    /// does the byte dot product in one instruction where AVX2 needs two, and gives sixteen
    /// more registers. The caller has checked AVX2, FMA and F16C.
    pub fn pick<const F: u8>() -> super::Kernel {
        if std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            tile_any::<F, true>
        } else {
            tile_any::<F, false>
        }
    }

    /// Dispatches on the token count, a constant inside, so the accumulators live in
    /// registers.
    pub(super) fn tile_any<const F: u8, const VNNI: bool>(
        quad: Quad<'_>,
        xs: &[&[Q8]],
        out: &mut Out,
    ) {
        // Safety: handed out by `pick`, only where the CPU has the features (VNNI included
        // when VNNI is true); the tests check the same before calling.
        unsafe {
            match (xs.len(), VNNI) {
                (1, true) => vnni_tile::<F, 1>(quad, xs, out),
                (2, true) => vnni_tile::<F, 2>(quad, xs, out),
                (3, true) => vnni_tile::<F, 3>(quad, xs, out),
                (_, true) => vnni_tile::<F, 4>(quad, xs, out),
                (1, false) => avx2_tile::<F, 1>(quad, xs, out),
                (2, false) => avx2_tile::<F, 2>(quad, xs, out),
                (3, false) => avx2_tile::<F, 3>(quad, xs, out),
                (_, false) => avx2_tile::<F, 4>(quad, xs, out),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2_tile<const F: u8, const N: usize>(quad: Quad<'_>, xs: &[&[Q8]], out: &mut Out) {
        tile::<F, N, false>(quad, xs, out)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn vnni_tile<const F: u8, const N: usize>(quad: Quad<'_>, xs: &[&[Q8]], out: &mut Out) {
        tile::<F, N, true>(quad, xs, out)
    }

    /// Four interleaved weight rows against `N` activation rows, block by block, reading the
    /// quad's memory front to back.
    #[inline(always)]
    unsafe fn tile<const F: u8, const N: usize, const VNNI: bool>(
        quad: Quad<'_>,
        xs: &[&[Q8]],
        out: &mut Out,
    ) {
        let xs: &[&[Q8]; N] = xs.try_into().expect("N activation rows");
        let qb = if F == Q8_0 { 32 } else { 16 };
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); N]; QUAD];
        // Q4_1's `m · s` per row and token.
        let mut extra = [[0f32; N]; QUAD];
        let blocks = quad.scales.len() / QUAD;
        for b in 0..blocks {
            // What the four rows share of each token's block: its quants, its scale, and for
            // Q4_0 the `8 · q` that turns unsigned nibbles back into `q - 8` (so the offset is
            // subtracted in integers, once per token rather than once per row).
            let mut q8 = [_mm256_setzero_si256(); N];
            let mut yd = [_mm256_setzero_ps(); N];
            let mut offset = [_mm256_setzero_si256(); N];
            for t in 0..N {
                let y = xs[t].get_unchecked(b);
                q8[t] = _mm256_load_si256(y.qs.as_ptr() as *const __m256i);
                yd[t] = _mm256_set1_ps(y.d);
                if F == Q4_0 {
                    offset[t] = dot_u8_i8::<VNNI>(_mm256_set1_epi8(8), q8[t], ones);
                }
            }
            // The quad's four scales (and mins) widened at once.
            let mut d = [0f32; QUAD];
            let bits = _mm_loadl_epi64(quad.scales.as_ptr().add(b * QUAD) as *const __m128i);
            _mm_storeu_ps(d.as_mut_ptr(), _mm_cvtph_ps(bits));
            let mut m = [0f32; QUAD];
            if F == Q4_1 {
                let bits = _mm_loadl_epi64(quad.mins.as_ptr().add(b * QUAD) as *const __m128i);
                _mm_storeu_ps(m.as_mut_ptr(), _mm_cvtph_ps(bits));
            }
            for r in 0..QUAD {
                let at = quad.quants.as_ptr().add((b * QUAD + r) * qb);
                // Unsigned weights (nibbles, 0..16) or, for Q8_0, |w| with the sign moved
                // onto x.
                let w = if F == Q8_0 {
                    _mm256_loadu_si256(at as *const __m256i)
                } else {
                    let packed = _mm_loadu_si128(at as *const __m128i);
                    let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                    _mm256_and_si256(both, low)
                };
                let w_abs = if F == Q8_0 { _mm256_sign_epi8(w, w) } else { w };
                let dr = _mm256_set1_ps(d[r]);
                for t in 0..N {
                    let x = if F == Q8_0 {
                        _mm256_sign_epi8(q8[t], w)
                    } else {
                        q8[t]
                    };
                    let mut sums = dot_u8_i8::<VNNI>(w_abs, x, ones);
                    if F == Q4_0 {
                        sums = _mm256_sub_epi32(sums, offset[t]);
                    }
                    let scale = _mm256_mul_ps(dr, yd[t]);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[r][t]);
                    if F == Q4_1 {
                        extra[r][t] += m[r] * xs[t].get_unchecked(b).s;
                    }
                }
            }
        }
        for r in 0..QUAD {
            for t in 0..N {
                out[r][t] = hsum(acc[r][t]) + extra[r][t];
            }
        }
    }

    /// u8 × i8 products summed in fours to i32: one VNNI instruction, or two AVX2 ones.
    #[inline(always)]
    unsafe fn dot_u8_i8<const VNNI: bool>(u: __m256i, i: __m256i, ones: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, i)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, i), ones)
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn check(dtype: GgmlDType, format: Format) {
        // 38 rows: the last quad is padded; 7 tokens: a full pass of four and one of three.
        let (rows, cols, tokens) = (38, 96, 7);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| (i * 104_729 % 997) as f32 / 498.0 - 1.0)
            .collect();
        let q = QTensor::quantize(
            &Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(),
            dtype,
        )
        .unwrap();
        let matrix = QuantMatrix::from_ggml(format, &q.data().unwrap(), rows, cols);
        let ours = matmul(&matrix, &x, tokens);

        // Against the dequantized weights in f32: only activation rounding differs.
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
            assert!(
                (a - b).abs() < 0.02 * (1.0 + b.abs()),
                "{format:?}: {a} vs {b}"
            );
        }
        // Against the scalar reference on the same quantized activations: float order only.
        let xq: Vec<Vec<Q8>> = x.chunks(cols).map(quantize_row).collect();
        for t in 0..tokens {
            for r in 0..rows {
                let mut scalar = [[0f32; TOKENS_PER_PASS]; QUAD];
                scalar_tile(format, matrix.quad(r / QUAD), &[&xq[t]], &mut scalar);
                let (want, got) = (scalar[r % QUAD][0], ours[t * rows + r]);
                assert!(
                    (want - got).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{format:?} t{t} r{r}: {want} vs {got}"
                );
            }
        }
        // One token (the decode path) gives the same numbers as inside a batch.
        let single = matmul(&matrix, &x[..cols], 1);
        assert_eq!(single, ours[..rows]);
    }

    /// Both SIMD kernels against the scalar reference, whichever one `pick_kernel` would
    /// choose on this CPU.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_simd_kernel_matches_the_scalar_reference() {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c")) {
            return; // nothing but the scalar kernel can run here
        }
        let vnni = has!("avx512vnni") && has!("avx512vl");
        let (rows, cols) = (4, 128);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 60.0)
            .collect();
        let x: Vec<f32> = (0..4 * cols)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 30.0)
            .collect();
        let xq: Vec<Vec<Q8>> = x.chunks(cols).map(quantize_row).collect();
        for (dtype, format) in [
            (GgmlDType::Q4_0, Format::Q4_0),
            (GgmlDType::Q4_1, Format::Q4_1),
            (GgmlDType::Q8_0, Format::Q8_0),
        ] {
            let t = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&t, dtype).unwrap();
            let matrix = QuantMatrix::from_ggml(format, &q.data().unwrap(), rows, cols);
            let xs: Vec<&[Q8]> = xq.iter().map(Vec::as_slice).collect();
            let mut want = [[0f32; TOKENS_PER_PASS]; QUAD];
            scalar_tile(format, matrix.quad(0), &xs, &mut want);
            let (plain, with_vnni): (Kernel, Kernel) = match format {
                Format::Q4_0 => (
                    avx2::tile_any::<{ avx2::Q4_0 }, false>,
                    avx2::tile_any::<{ avx2::Q4_0 }, true>,
                ),
                Format::Q4_1 => (
                    avx2::tile_any::<{ avx2::Q4_1 }, false>,
                    avx2::tile_any::<{ avx2::Q4_1 }, true>,
                ),
                Format::Q8_0 => (
                    avx2::tile_any::<{ avx2::Q8_0 }, false>,
                    avx2::tile_any::<{ avx2::Q8_0 }, true>,
                ),
            };
            let mut kernels = vec![("avx2", plain)];
            if vnni {
                kernels.push(("vnni", with_vnni));
            }
            for (name, kernel) in kernels {
                let mut got = [[0f32; TOKENS_PER_PASS]; QUAD];
                kernel(matrix.quad(0), &xs, &mut got);
                for r in 0..QUAD {
                    for t in 0..TOKENS_PER_PASS {
                        let (a, b) = (want[r][t], got[r][t]);
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                            "{name} {format:?} r{r} t{t}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q4_0_matches_dequantized_math_and_scalar() {
        check(GgmlDType::Q4_0, Format::Q4_0);
    }

    #[test]
    fn q4_1_matches_dequantized_math_and_scalar() {
        check(GgmlDType::Q4_1, Format::Q4_1);
    }

    #[test]
    fn q8_0_matches_dequantized_math_and_scalar() {
        check(GgmlDType::Q8_0, Format::Q8_0);
    }
}
