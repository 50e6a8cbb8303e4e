//! The model on a GPU against the same model on the CPU (native kernels, f32): through the
//! generic attention path and through our kernels (prompt chunks through the tensor-core
//! kernel in f16/bf16), in f32, f16 and (where the device and the build have it) bf16, and a
//! Q4_0 GGUF through candle's quantized CUDA matmuls against its exact reference. With no GPU
//! these print SKIPPED and return, unless FERROLLAMA_REQUIRE_GPU is set (the GPU check script
//! sets it), where a missing GPU fails them.
//!
//! SmolLM2 does not take part: its 98 MB GGUF cannot travel to the GPU machine (64 MiB).
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device};
use common::*;
use ferrollama_kernels::gpu_or_skip as gpu;
use ferrollama_model::device::{accelerator, compute_dtype};
use ferrollama_model::{load, AttentionKind, LoadOptions, LoadedModel, ModelSource};
use std::path::Path;

fn on(device: &Device, path: &Path, attention: AttentionKind, dtype: DType) -> LoadedModel {
    on_with(device, path, attention, dtype, false)
}

/// As `on`, with quantized weights dequantized at load when `dequantize`.
fn on_with(
    device: &Device,
    path: &Path,
    attention: AttentionKind,
    dtype: DType,
    dequantize: bool,
) -> LoadedModel {
    let source = ModelSource::from_path(path).unwrap();
    let mut options = LoadOptions::on(device.clone())
        .with_attention(attention)
        .with_dtype(dtype);
    if dequantize {
        options = options.dequantized();
    }
    if device.is_cpu() {
        // The reference keeps an f32 cache (the native default is f16).
        options = options.with_kv_dtype(DType::F32);
    }
    load(&source, &options, &mut |_, _| {}).unwrap()
}

/// The dtypes to try on `device`, each with the logit tolerance relative to the largest.
fn dtypes(device: &Device) -> Vec<(DType, f32)> {
    let mut dtypes = vec![(DType::F32, 1e-3), (DType::F16, 2e-2)];
    if compute_dtype(accelerator(device).unwrap()) == DType::BF16 {
        dtypes.push((DType::BF16, 5e-2));
    }
    dtypes
}

/// Greedy replies of `cpu` (the reference) and `gpu`: where they part, print the step and both
/// top-2 gaps, and require the reference's gap there to be within `tie`.
fn compare_greedy(cpu: &LoadedModel, gpu: &LoadedModel, label: &str, tie: f32) {
    let prompt = cpu
        .tokenizer
        .encode_prompt("The GPU and the CPU must agree on this sentence and what follows it.")
        .unwrap();
    let (a, b) = (greedy(cpu, &prompt, 32, &[]), greedy(gpu, &prompt, 32, &[]));
    match a.ids.iter().zip(&b.ids).position(|(x, y)| x != y) {
        None => eprintln!("{label}: 32 greedy tokens identical to the CPU's"),
        Some(step) => {
            let gaps = (top2_gap(&a.logits[step]), top2_gap(&b.logits[step]));
            eprintln!(
                "{label}: parts from the CPU at token {step}; top-2 logit gap CPU {}, GPU {}",
                gaps.0, gaps.1
            );
            assert!(gaps.0 < tie, "{label}: a real divergence at token {step}");
        }
    }
}

#[test]
fn tiny_mistral_on_the_gpu_tracks_the_cpu() {
    let Some(device) = gpu("tiny_mistral_on_the_gpu") else {
        return;
    };
    let cpu = load_model(&tiny_dir());
    let reference = mixed_steps(&cpu.model);
    for attention in [AttentionKind::Generic, AttentionKind::Cuda] {
        for (dtype, tolerance) in dtypes(&device) {
            let label = format!("tiny-mistral {attention:?} {dtype:?}");
            let model = on(&device, &tiny_dir(), attention, dtype);
            let worst = worst_relative(&reference, &mixed_steps(&model.model));
            eprintln!("{label}: worst relative logit error {worst:.2e} (bound {tolerance})");
            assert!(worst <= tolerance, "{label}: {worst}");
            compare_greedy(&cpu, &model, &label, 10.0 * tolerance);
        }
    }
}

/// Q4_0 on the GPU (candle's MMVQ/MMQ, 8-bit activations) held to the GGUF's exact reference
/// (its weights dequantized to f32, the forward in f32 on the CPU): its logit error may be at
/// most twice our CPU Q4_0 path's (8-bit activations too, another rounding), plus, in f16 and
/// bf16, what that dtype alone costs (the dequantized weights through the GPU in that dtype).
/// Greedy agreement is judged against the reference: a token may part only where the
/// reference's top-2 gap is within the GPU's own logit error.
#[test]
fn q4_0_gguf_on_the_gpu_tracks_its_exact_reference() {
    let Some(device) = gpu("q4_0_gguf_on_the_gpu") else {
        return;
    };
    let path = tiny_dir().join("tiny-mistral-q4_0.gguf");
    let exact = exact_reference(&path);
    let reference = mixed_steps(&exact.model);
    let cpu_err = worst_relative(
        &reference,
        &mixed_steps(&load_model_f32_cache(&path, AttentionKind::Native).model),
    );
    eprintln!("tiny-mistral Q4_0 CPU: worst relative logit error against the exact reference {cpu_err:.2e}");
    for (dtype, _) in dtypes(&device) {
        let label = format!("tiny-mistral Q4_0 cuda {dtype:?}");
        let model = on(&device, &path, AttentionKind::Cuda, dtype);
        let rows = mixed_steps(&model.model);
        let err = worst_relative(&reference, &rows);
        let dense_err = if dtype == DType::F32 {
            0.0
        } else {
            let dense = on_with(&device, &path, AttentionKind::Cuda, dtype, true);
            worst_relative(&reference, &mixed_steps(&dense.model))
        };
        let bound = 2.0 * (cpu_err + dense_err);
        eprintln!(
            "{label}: worst relative logit error against the exact reference {err:.2e} (CPU {cpu_err:.2e}, {dtype:?} alone {dense_err:.2e}; bound {bound:.2e})"
        );
        assert!(
            err <= bound,
            "{label}: {err:.2e} > {bound:.2e}: more than activation rounding"
        );
        let scale = reference.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        compare_greedy(&exact, &model, &label, 2.0 * err * scale);
    }
}

/// Not a check: the roofline figure for benches/gpu/check.sh. A device-to-device copy of
/// 1 GiB, ten times; reads plus writes over the time is the bandwidth a decode step can use.
#[test]
#[ignore = "a measurement, run by benches/gpu/check.sh"]
fn device_copy_bandwidth() {
    let Some(device) = gpu("device_copy_bandwidth") else {
        return;
    };
    let bytes = 1usize << 30;
    let source = candle_core::Tensor::zeros(bytes / 4, DType::F32, &device).unwrap();
    let _warm = source.copy().unwrap();
    device.synchronize().unwrap();
    let start = std::time::Instant::now();
    for _ in 0..10 {
        let _ = source.copy().unwrap();
    }
    device.synchronize().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "device-to-device copy: {:.0} GB/s",
        10.0 * 2.0 * bytes as f64 / seconds / 1e9
    );
}
