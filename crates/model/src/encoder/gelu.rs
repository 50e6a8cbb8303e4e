//! GELU (the erf form BERT uses) over f32 slices, in branch-free arithmetic the compiler turns
//! into SIMD: candle's CPU `gelu_erf` calls libm's `erff` per element, which was 8% of an
//! encoder's time. erf is Abramowitz and Stegun 7.1.26 (|error| <= 1.5e-7) over an exp in the
//! Cephes form (relative error ~2e-7).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// e^x for x <= 0 (all GELU needs), clamped below where f32 underflows.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest by adding and removing 1.5 * 2^23 (no call to roundf, which the
    // compiler cannot vectorize without SSE4.1).
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // x - n ln 2, in two parts so that the remainder stays exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * r
        * r
        + r
        + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp_nonpositive(-a * a)).copysign(x)
}

pub fn gelu_erf_in_place(values: &mut [f32]) {
    values.par_chunks_mut(8192).for_each(|chunk| {
        for v in chunk {
            *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// GELU of `x`: the SIMD form on the CPU, candle's elsewhere.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return x.gelu_erf();
    }
    let mut values = x.flatten_all()?.to_vec1::<f32>()?;
    gelu_erf_in_place(&mut values);
    Tensor::from_vec(values, x.shape(), x.device())
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_libm_gelu_over_the_range_that_matters() {
        let mut worst = 0f64;
        let xs: Vec<f32> = (-120_000..=120_000)
            .map(|i| i as f32 * 1e-4)
            .chain([-1e4, 1e4, 0.0, -0.0])
            .collect();
        let mut ours = xs.clone();
        super::gelu_erf_in_place(&mut ours);
        for (&x, &y) in xs.iter().zip(&ours) {
            let x = x as f64;
            let exact = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            // Absolute near zero, relative above one.
            let err = (y as f64 - exact).abs() / exact.abs().max(1.0);
            worst = worst.max(err);
        }
        assert!(worst < 4e-7, "worst error {worst:e}");
        eprintln!("worst error {worst:e}");
    }
}
