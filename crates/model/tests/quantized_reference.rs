//! Quantized weights against their exact reference: the same GGUF with every matrix
//! dequantized to f32 at load and the forward in f32. A quantized matmul's only departures
//! from it are its activation rounding (our CPU kernels quantize activations to 8 bits, as
//! llama.cpp does), so this bounds how far a correct quantized path may be from it; the GPU
//! test (gpu.rs) holds candle's CUDA kernels to twice the CPU's distance.

mod common;

use common::*;
use ferrollama_model::AttentionKind;

#[test]
fn quantized_cpu_paths_stay_near_their_exact_reference() {
    // Measured: 1.7e-2 (Q4_0) and 2.3e-2 (Q8_0). The weights' format hardly matters: the
    // error is the activations' 8-bit rounding, large in a 32-wide random model where one
    // scale covers a whole row.
    for (file, bound) in [
        ("tiny-mistral-q4_0.gguf", 0.05),
        ("tiny-mistral-q8_0.gguf", 0.05),
    ] {
        let path = tiny_dir().join(file);
        let exact = mixed_steps(&exact_reference(&path).model);
        let quantized = mixed_steps(&load_model_f32_cache(&path, AttentionKind::Native).model);
        let err = worst_relative(&exact, &quantized);
        eprintln!("{file}: CPU worst relative logit error against the exact reference {err:.2e}");
        assert!(err < bound, "{file}: {err} >= {bound}");
        // Dequantizing is exact: with nothing quantized but the weights, the reference is the
        // quantized file's own f32 forward, so it differs from the f32 safetensors it came from.
        let original = mixed_steps(&load_model_f32_cache(&tiny_dir(), AttentionKind::Native).model);
        assert!(
            worst_relative(&original, &exact) > 1e-4,
            "{file}: the weights were quantized"
        );
    }
}
