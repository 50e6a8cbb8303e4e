//! Elementwise steps over f32 slices, one pass and one call each:
//! - with an exponential (SwiGLU's SiLU, attention's softmax): a polynomial over eight lanes
//!   where the CPU has AVX2 and FMA. libm's `expf`, one call per element, was most of a decode
//!   step's SwiGLU (28 µs a layer for 5,632 elements on the 1.3B shape);
//! - f16 to f32 (the KV cache read back by attention): `half`'s slice conversion makes a call
//!   per eight values, a fifth of a decode step's attention.

use rayon::prelude::*;

/// Rows of `silu_mul` one parallel task takes: below this a prompt's rows stay on one thread.
const ROWS_PER_TASK: usize = 8;

/// `silu(gate) · up` per row of `gate_up` (`[rows, 2 · width]`, gate first), as `[rows, width]`.
pub fn silu_mul(gate_up: &[f32], width: usize) -> Vec<f32> {
    assert_eq!(gate_up.len() % (2 * width), 0, "rows of gate then up");
    let mut out = vec![0f32; gate_up.len() / 2];
    let row = |(src, dst): (&[f32], &mut [f32])| {
        let (gate, up) = src.split_at(width);
        silu_mul_row(gate, up, dst);
    };
    if out.len() > ROWS_PER_TASK * width {
        gate_up
            .par_chunks_exact(2 * width)
            .zip(out.par_chunks_exact_mut(width))
            .with_min_len(ROWS_PER_TASK)
            .for_each(row);
    } else {
        gate_up
            .chunks_exact(2 * width)
            .zip(out.chunks_exact_mut(width))
            .for_each(row);
    }
    out
}

/// `row[i] = exp(row[i] - max)`; returns their sum. With `max` the row's largest value, what a
/// softmax divides by.
pub fn exp_shifted(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // Safety: only reached where the CPU has AVX2 and FMA.
        return unsafe { avx2::exp_shifted(row, max) };
    }
    exp_shifted_scalar(row, max, 0.0)
}

/// [`exp_shifted`] one element at a time, with libm's exp, adding onto `sum` (the SIMD loop's
/// last few go on from its lanes' total).
fn exp_shifted_scalar(row: &mut [f32], max: f32, mut sum: f32) -> f32 {
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    sum
}

/// `dst = src` as f32.
pub fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // Safety: only reached where the CPU has F16C and AVX.
        return unsafe { avx2::widen_f16(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

fn silu_mul_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // Safety: only reached where the CPU has AVX2 and FMA.
        return unsafe { avx2::silu_mul(gate, up, out) };
    }
    silu_mul_scalar(gate, up, out);
}

/// [`silu_mul_row`] one element at a time, with libm's exp (and the SIMD loop's last few).
fn silu_mul_scalar(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `e^x` in eight lanes, within 2 ulp of libm over the range that does not overflow
    /// (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial for `e^r`, `2^n` put into the
    /// exponent). Inputs are clamped to [-87, 88]: below, the result is about 1.6e-38 rather
    /// than 0; above, where f32 would overflow, about 1.7e38.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
            _mm256_set1_ps(88.0),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x - n ln 2, with ln 2 in two parts so that n · ln2_hi is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        // 2^n: n + 127 in the exponent field.
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len();
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, u));
            i += 8;
        }
        super::silu_mul_scalar(&gate[i..], &up[i..], &mut out[i..]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(row: &mut [f32], max: f32) -> f32 {
        let n = row.len();
        let m = _mm256_set1_ps(max);
        let mut sums = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let p = row.as_mut_ptr().add(i);
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p), m));
            _mm256_storeu_ps(p, e);
            sums = _mm256_add_ps(sums, e);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
        super::exp_shifted_scalar(&mut row[i..], max, lanes.iter().sum())
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
        let n = dst.len();
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        for (d, s) in dst[i..].iter_mut().zip(&src[i..]) {
            *d = s.to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within `ulps` units in the last place of `want`, or both tiny.
    fn close(got: f32, want: f32, ulps: u32) -> bool {
        if want.abs() < 1e-30 {
            return got.abs() < 1e-30;
        }
        (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() <= ulps as u64
    }

    #[test]
    fn exp_shifted_matches_libm_within_two_ulp() {
        // Every 1/64 from -100 to 90, less 3 (the whole range short of overflow) or less 90 (a
        // softmax's row: nothing above 0), at lengths that leave a tail.
        for (shift, len) in [(3.0, 12_161), (90.0, 12_161), (3.0, 1), (3.0, 7), (90.0, 9)] {
            let mut row: Vec<f32> = (0..len).map(|i| -100.0 + i as f32 / 64.0).collect();
            let want: Vec<f32> = row.iter().map(|&x| (x - shift).exp()).collect();
            let sum = exp_shifted(&mut row, shift);
            for (i, (&g, &w)) in row.iter().zip(&want).enumerate() {
                let x = -100.0 + i as f32 / 64.0 - shift;
                assert!(close(g, w, 2), "exp({x}) = {g}, libm {w}");
            }
            // The sum is of what was written.
            let written: f64 = row.iter().map(|&x| x as f64).sum();
            if shift == 90.0 {
                assert!(
                    (sum as f64 - written).abs() <= 1e-5 * written,
                    "{sum} against {written}"
                );
            }
        }
    }

    #[test]
    fn widen_f16_is_exact() {
        // Every finite, infinite and NaN f16, at a length that leaves a tail.
        let src: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
        let mut dst = vec![0f32; src.len() - 3];
        widen_f16(&src[3..], &mut dst);
        for (s, d) in src[3..].iter().zip(&dst) {
            let want = s.to_f32();
            assert!(
                want.to_bits() == d.to_bits() || (want.is_nan() && d.is_nan()),
                "{s}"
            );
        }
    }

    #[test]
    fn silu_mul_matches_the_formula_per_row() {
        let width = 37; // four whole vectors and a tail
        let rows = 20; // above ROWS_PER_TASK: the parallel path
        let gate_up: Vec<f32> = (0..rows * 2 * width)
            .map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0)
            .collect();
        let out = silu_mul(&gate_up, width);
        for (r, row) in gate_up.chunks_exact(2 * width).enumerate() {
            for i in 0..width {
                let (g, u) = (row[i] as f64, row[width + i] as f64);
                let want = (g / (1.0 + (-g).exp()) * u) as f32;
                let got = out[r * width + i];
                assert!(
                    (got - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(1e-6),
                    "row {r}, {i}: {got} against {want}"
                );
            }
        }
    }
}
