//! The quant kernels against the scalar reference and candle's dequantized math.
use super::*;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

const FORMATS: [(GgmlDType, Format); 6] = [
    (GgmlDType::Q4_0, Format::Q4_0),
    (GgmlDType::Q4_1, Format::Q4_1),
    (GgmlDType::Q8_0, Format::Q8_0),
    (GgmlDType::Q4K, Format::Q4K),
    (GgmlDType::Q5K, Format::Q5K),
    (GgmlDType::Q6K, Format::Q6K),
];

/// Widths for `dtype`: whole super-blocks for k-quants.
fn width(dtype: GgmlDType, cols: usize) -> usize {
    cols.next_multiple_of(dtype.block_size())
}

fn weights(rows: usize, cols: usize, dtype: GgmlDType) -> QTensor {
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
        .collect();
    QTensor::quantize(
        &Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(),
        dtype,
    )
    .unwrap()
}

fn activations(tokens: usize, cols: usize) -> Vec<f32> {
    (0..tokens * cols)
        .map(|i| (i * 104_729 % 997) as f32 / 498.0 - 1.0)
        .collect()
}

fn close(a: f32, b: f32, tolerance: f32) -> bool {
    (a - b).abs() <= tolerance * (1.0 + a.abs().max(b.abs()))
}

/// Against the dequantized weights in f32: only activation rounding differs.
#[test]
fn every_format_matches_dequantized_math() {
    // 38 rows: the last octet is padded; 7 tokens: a call of four and one of three.
    let (rows, tokens) = (38, 7);
    for (dtype, format) in FORMATS {
        let cols = width(dtype, 96);
        let q = weights(rows, cols, dtype);
        let matrix = QuantMatrix::from_ggml(dtype, &q.data().unwrap(), rows, cols);
        let x = activations(tokens, cols);
        let ours = matmul(&matrix, &x, tokens);
        let wd = q.dequantize(&Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x, (tokens, cols), &Device::Cpu).unwrap();
        let exact: Vec<f32> = xt
            .matmul(&wd.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in ours.iter().zip(&exact) {
            assert!(close(*a, *b, 0.02), "{format:?}: {a} vs {b}");
        }
    }
}

/// Every kernel this CPU can run, through the whole product (tiles, ragged ends, padding
/// rows), against the scalar reference through the same product: for every format, token
/// counts 1 to 17 and row counts that are not a multiple of the octet.
#[test]
fn every_simd_tile_matches_the_scalar_reference() {
    let kernels = simd_kernels();
    assert!(
        !cfg!(target_arch = "x86_64") || !kernels.is_empty() || !has_avx2(),
        "an AVX2 CPU must test its AVX2 kernels"
    );
    for (dtype, format) in FORMATS {
        let reference = scalar_kernel(format);
        for (rows, cols) in [(1, 32), (7, 64), (8, 32), (13, 160), (38, 96)] {
            let cols = width(dtype, cols);
            let q = weights(rows, cols, dtype);
            let matrix = QuantMatrix::from_ggml(dtype, &q.data().unwrap(), rows, cols);
            for tokens in 1..=17 {
                let x = activations(tokens, cols);
                let want = matmul_with(&[(&matrix, reference)], &x, tokens, TOKENS);
                for (name, f, kernel) in &kernels {
                    if *f != format {
                        continue;
                    }
                    for per_call in [1, TOKENS] {
                        let got = matmul_with(&[(&matrix, *kernel)], &x, tokens, per_call);
                        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                            assert!(
                                close(*a, *b, 1e-5),
                                "{name} {format:?} {rows}x{cols} tokens {tokens} \
                                 per call {per_call} at {i}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A token's outputs do not depend on what it is batched with or how calls are cut: the
/// engine's chunking bit-identity rests on this.
#[test]
fn a_token_gives_the_same_bits_alone_and_in_a_batch() {
    let (rows, tokens) = (38, 11);
    for (dtype, format) in FORMATS {
        let cols = width(dtype, 96);
        let q = weights(rows, cols, dtype);
        let matrix = QuantMatrix::from_ggml(dtype, &q.data().unwrap(), rows, cols);
        let x = activations(tokens, cols);
        let batch = matmul(&matrix, &x, tokens);
        let one_by_one = matmul_tiled(&matrix, &x, tokens, Tiling::OneToken);
        assert_eq!(batch, one_by_one, "{format:?}");
        for t in 0..tokens {
            let alone = matmul(&matrix, &x[t * cols..(t + 1) * cols], 1);
            assert_eq!(
                alone,
                batch[t * rows..(t + 1) * rows],
                "{format:?} token {t}"
            );
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && has!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// (name, format, kernel) for each SIMD kernel this CPU has.
fn simd_kernels() -> Vec<(&'static str, Format, Kernel)> {
    #[allow(unused_mut)]
    let mut kernels: Vec<(&'static str, Format, Kernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        use std::arch::is_x86_feature_detected as has;
        let avx2: [(Format, Kernel); 6] = [
            (Format::Q4_0, avx2::tile_any::<{ avx2::Q4_0 }, false>),
            (Format::Q4_1, avx2::tile_any::<{ avx2::Q4_1 }, false>),
            (Format::Q8_0, avx2::tile_any::<{ avx2::Q8_0 }, false>),
            (Format::Q4K, avx2::tile_any::<{ avx2::Q4_K }, false>),
            (Format::Q5K, avx2::tile_any::<{ avx2::Q5_K }, false>),
            (Format::Q6K, avx2::tile_any::<{ avx2::Q6_K }, false>),
        ];
        kernels.extend(avx2.map(|(f, k)| ("avx2", f, k)));
        if has!("avx512vnni") && has!("avx512vl") {
            let vnni: [(Format, Kernel); 6] = [
                (Format::Q4_0, avx2::tile_any::<{ avx2::Q4_0 }, true>),
                (Format::Q4_1, avx2::tile_any::<{ avx2::Q4_1 }, true>),
                (Format::Q8_0, avx2::tile_any::<{ avx2::Q8_0 }, true>),
                (Format::Q4K, avx2::tile_any::<{ avx2::Q4_K }, true>),
                (Format::Q5K, avx2::tile_any::<{ avx2::Q5_K }, true>),
                (Format::Q6K, avx2::tile_any::<{ avx2::Q6_K }, true>),
            ];
            kernels.extend(vnni.map(|(f, k)| ("vnni", f, k)));
        } else {
            eprintln!("no AVX-512 VNNI on this CPU: its kernels are not tested here");
        }
    }
    kernels
}

#[test]
fn rounding_matches_roundf() {
    // Every half and its neighbours, past i8's range (saturating as `as i8` does), and the
    // values a block of tiny activations can make (an infinite scale).
    let mut x = -130.0f32;
    while x <= 130.0 {
        for y in [
            x,
            x.next_up(),
            x.next_down(),
            x + 0.5,
            (x + 0.5).next_down(),
        ] {
            assert_eq!(super::round_half_away(y) as i8, y.round() as i8, "{y}");
        }
        x += 0.0625;
    }
    for y in [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e30,
        127.6,
        -128.6,
    ] {
        assert_eq!(super::round_half_away(y) as i8, y.round() as i8, "{y}");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_quantization_is_the_scalar_one_bit_for_bit() {
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("no AVX2 on this CPU: its quantizer is not tested here");
        return;
    }
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut blocks: Vec<[f32; BLOCK]> = Vec::new();
    // Random blocks over many magnitudes, subnormals (an infinite inverse scale) included.
    for exp in [-140, -126, -60, -8, 0, 8, 60, 120] {
        for _ in 0..200 {
            blocks.push(std::array::from_fn(|_| next() * 2f32.powi(exp)));
        }
    }
    // Halves: 127 sets the scale to 1, so k + 0.5 lands on a half exactly, both signs.
    blocks.push(std::array::from_fn(|i| {
        if i == 0 {
            127.0
        } else {
            (i as f32 - 16.0) * 3.0 + 0.5
        }
    }));
    blocks.push(std::array::from_fn(|i| {
        if i == 0 {
            -127.0
        } else {
            -(i as f32) - 0.5
        }
    }));
    // Zeros, and blocks holding a NaN or an infinity.
    blocks.push([0.0; BLOCK]);
    let mut nan = blocks[5];
    nan[3] = f32::NAN;
    blocks.push(nan);
    let mut inf = blocks[900];
    inf[17] = f32::NEG_INFINITY;
    blocks.push(inf);
    for (i, block) in blocks.iter().enumerate() {
        let scalar = super::quantize_block(block);
        // Safety: AVX2 was checked above.
        let simd = unsafe { avx2::quantize_block(block) };
        assert_eq!(simd.qs, scalar.qs, "block {i}: {block:?}");
        assert_eq!(simd.sum, scalar.sum, "block {i}");
        assert_eq!(simd.d.to_bits(), scalar.d.to_bits(), "block {i}");
        assert_eq!(simd.s.to_bits(), scalar.s.to_bits(), "block {i}");
    }
    // The row function takes the SIMD path here and gives the same blocks.
    let row: Vec<f32> = blocks[..64].iter().flatten().copied().collect();
    for (got, block) in super::quantize_row(&row).iter().zip(&blocks) {
        assert_eq!(got.qs, super::quantize_block(block).qs);
    }
}

/// Matrices of mixed formats through one product give, token by token, each matrix's own
/// product side by side, bit for bit: on rayon's pool and on a team, padded octets included.
#[test]
fn parts_of_mixed_formats_are_their_own_products_side_by_side() {
    let cols = 256;
    let parts: Vec<QuantMatrix> = [
        (GgmlDType::Q4K, 38),
        (GgmlDType::Q6K, 13),
        (GgmlDType::Q4_0, 24),
    ]
    .iter()
    .map(|&(dtype, rows)| {
        QuantMatrix::from_ggml(
            dtype,
            &weights(rows, cols, dtype).data().unwrap(),
            rows,
            cols,
        )
    })
    .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for tokens in [1, 5, 40] {
        let x = activations(tokens, cols);
        let want: Vec<f32> = (0..tokens)
            .flat_map(|t| {
                let x = &x[t * cols..(t + 1) * cols];
                parts.iter().flat_map(move |m| matmul(m, x, 1))
            })
            .collect();
        let on_pool = pool.install(|| matmul_parts(&parts, &x, tokens));
        let on_team = pool.install(|| team::with_team(|| matmul_parts(&parts, &x, tokens)));
        assert_eq!(on_pool, want, "tokens {tokens}");
        assert_eq!(on_team, want, "tokens {tokens}, on a team");
    }
}

/// Weights and activations at the ends of their ranges, where integer sums are largest: the
/// AVX2 tiles' 16-bit partial sums must not overflow in any format.
#[test]
fn the_largest_sums_do_not_overflow() {
    let kernels = simd_kernels();
    for (dtype, format) in FORMATS {
        let (rows, cols) = (16, 256);
        // One low value a block sets the range; every other weight quantizes to the top.
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| if i % 32 == 0 { -1.0 } else { 1.0 })
            .collect();
        let q = QTensor::quantize(
            &Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(),
            dtype,
        )
        .unwrap();
        let matrix = QuantMatrix::from_ggml(dtype, &q.data().unwrap(), rows, cols);
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; cols * TOKENS];
            let want = matmul_with(&[(&matrix, scalar_kernel(format))], &x, TOKENS, TOKENS);
            for (name, f, kernel) in &kernels {
                if *f == format {
                    let got = matmul_with(&[(&matrix, *kernel)], &x, TOKENS, TOKENS);
                    for (a, b) in got.iter().zip(&want) {
                        // Float rounding differs in order; an overflow is off by thousands.
                        assert!(
                            close(*a, *b, 1e-5),
                            "{name} {format:?}, activations {sign}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
