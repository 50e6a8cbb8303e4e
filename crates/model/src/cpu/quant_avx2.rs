//! The AVX2 (and AVX-512 VNNI) tiles of `cpu::quant`, held to its scalar reference by the tests.

use super::{block_scale, Octet, BLOCK, Q8, ROWS, TOKENS};
use std::arch::x86_64::*;

pub const Q4_0: u8 = 0;
pub const Q4_1: u8 = 1;
pub const Q8_0: u8 = 2;
pub const Q4_K: u8 = 3;
pub const Q6_K: u8 = 4;
pub const Q5_K: u8 = 5;

type Out = [[f32; ROWS]; TOKENS];
/// A tile's outputs, from its first token's: a group of tokens writes into its place in `Out`.
type Rows = [[f32; ROWS]];

/// How far ahead of the block being multiplied its weights are prefetched. A decode step
/// streams every weight once from DRAM; measured end to end on the 1.3B Q4_0 model (2
/// cores, AMD EPYC), TPOT fell from 44 ms with none to 38 ms at 2-4 KiB ahead, and rose
/// again at 8 KiB.
const PREFETCH_BYTES: usize = 4096;
/// One-token tiles of the 4- to 6-bit formats also ask for the weights 32 KiB ahead, into L2. A
/// prefetch into L1 holds one of the core's few L1 miss buffers until its line comes, so the
/// near prefetch alone keeps only some tens of lines in flight; the far one queues in L2, and
/// the near one then finds its line on the way. Decode loop A/B in alternation (2 cores, AMD
/// EPYC, context ~96): 1.3B Q4_0 1.09x, Q4_K_M 1.10-1.12x, 7B Q4_0 1.13-1.16x. Not for Q8_0,
/// which streams twice the bytes per multiply and read no faster with it (0.95-0.98x at 16,
/// 32 and 64 KiB), nor for wider tiles, which pass over each octet once per group of tokens
/// and paid for the extra prefetches (16 and 128 tokens: 0.91-0.96x).
const PREFETCH_FAR_BYTES: usize = 32768;

/// The kernel for format `F` on this CPU, chosen once per matrix product: AVX-512 VNNI
/// does the byte dot product and its accumulation in one instruction where AVX2 needs
/// three. The caller has checked AVX2, FMA and F16C.
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
/// registers: up to `TOKENS` (8) at once with AVX-512VL's 32 vector registers, up to four with
/// AVX2's 16 (more go in groups of four, each reading the octet again, from L1). Q6_K's
/// unpacking holds more registers: it takes four at a time either way (eight ran at 0.73x of
/// four, one thread, 16 tokens; the other formats 1.06-1.09x).
pub(super) fn tile_any<const F: u8, const VNNI: bool>(
    octet: Octet<'_>,
    xs: &[&[Q8]],
    out: &mut Out,
) {
    // Safety: handed out by `pick`, only where the CPU has the features (VNNI included
    // when VNNI is true); the tests check the same before calling.
    unsafe {
        if VNNI && F != Q6_K {
            match xs.len() {
                1 => vnni_tile::<F, 1>(octet, xs, out),
                2 => vnni_tile::<F, 2>(octet, xs, out),
                3 => vnni_tile::<F, 3>(octet, xs, out),
                4 => vnni_tile::<F, 4>(octet, xs, out),
                5 => vnni_tile::<F, 5>(octet, xs, out),
                6 => vnni_tile::<F, 6>(octet, xs, out),
                7 => vnni_tile::<F, 7>(octet, xs, out),
                _ => vnni_tile::<F, 8>(octet, xs, out),
            }
            return;
        }
        for (g, group) in xs.chunks(AVX2_TOKENS).enumerate() {
            let out = &mut out[g * AVX2_TOKENS..];
            match (group.len(), VNNI) {
                (1, false) => avx2_tile::<F, 1>(octet, group, out),
                (2, false) => avx2_tile::<F, 2>(octet, group, out),
                (3, false) => avx2_tile::<F, 3>(octet, group, out),
                (_, false) => avx2_tile::<F, 4>(octet, group, out),
                (1, true) => vnni_tile::<F, 1>(octet, group, out),
                (2, true) => vnni_tile::<F, 2>(octet, group, out),
                (3, true) => vnni_tile::<F, 3>(octet, group, out),
                (_, true) => vnni_tile::<F, 4>(octet, group, out),
            }
        }
    }
}

/// Most tokens one AVX2 tile (or Q6_K's VNNI tile) holds in its registers.
const AVX2_TOKENS: usize = 4;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_tile<const F: u8, const N: usize>(octet: Octet<'_>, xs: &[&[Q8]], out: &mut Rows) {
    tile::<F, N, false>(octet, xs, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn vnni_tile<const F: u8, const N: usize>(octet: Octet<'_>, xs: &[&[Q8]], out: &mut Rows) {
    tile::<F, N, true>(octet, xs, out)
}

/// Eight interleaved weight rows (one per lane) against `N` tokens, block by block,
/// reading the octet's memory front to back.
#[inline(always)]
unsafe fn tile<const F: u8, const N: usize, const VNNI: bool>(
    octet: Octet<'_>,
    xs: &[&[Q8]],
    out: &mut Rows,
) {
    let xs: &[&[Q8]; N] = xs.try_into().expect("N activation rows");
    let chunk_bytes = ROWS * 4;
    let block_bytes = match F {
        Q8_0 => 8 * chunk_bytes,
        Q6_K => 6 * chunk_bytes,
        Q5_K => 5 * chunk_bytes,
        _ => 4 * chunk_bytes,
    };
    let k_quant = F == Q4_K || F == Q5_K || F == Q6_K;
    let per_scale = if k_quant { 8 } else { 1 };
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    // The scale group's f16s, as eight f32 rows: reloaded once per group.
    let (mut group_d, mut group_extra) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    // (Helpers are functions, not closures: a closure does not take the caller's target
    // features, and an intrinsic that is not inlined costs a hundredfold.)
    for b in 0..octet.blocks {
        let quants = octet.quants.as_ptr().add(b * block_bytes);
        prefetch_lines::<_MM_HINT_T0>(quants.wrapping_add(PREFETCH_BYTES), block_bytes);
        if N == 1 && F != Q8_0 {
            prefetch_lines::<_MM_HINT_T1>(quants.wrapping_add(PREFETCH_FAR_BYTES), block_bytes);
        }
        if b % per_scale == 0 {
            group_d = rows_f16(octet.scales, b / per_scale);
            if F == Q4_1 || F == Q4_K || F == Q5_K {
                group_extra = rows_f16(octet.extra, b / per_scale);
            }
        }
        let ys: [&Q8; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
        let chunk = |c: usize| quants.add(c * chunk_bytes) as *const __m256i;
        if F == Q8_0 {
            // The weights are stored as w + 128 (unsigned; see `Block::ggml`).
            let sums = if VNNI {
                q8_0_vnni::<N>(chunk, &ys)
            } else {
                q8_0_avx2::<N>(chunk, &ys)
            };
            scale_into(&mut acc, &sums, group_d, &ys);
            continue;
        }
        if F == Q6_K {
            // q in 0..64 stands for q - 32; each sixteen is summed and scaled apart.
            // - VNNI sums in i32: q (unsigned) times x as it is, and the offset once per token
            //   and sixteen, Σ (q - 32) x = Σ q x - 32 Σ x, as Q4_0 does.
            // - AVX2 sums a sixteen in i16, which Σ q x would overflow: q - 32 is signed like
            //   Q8_0 (its sign moves onto x), and four pairs of |q - 32| ≤ 32 times |x| ≤ 127
            //   stay under 2^15.
            // One sixteen at a time keeps N sums live, not 2N: the nibbles are read twice,
            // from L1.
            for h in 0..2 {
                let top = _mm256_loadu_si256(chunk(4 + h));
                let mut sums = [_mm256_setzero_si256(); N];
                for c in 0..4 {
                    let packed = _mm256_loadu_si256(chunk(c));
                    let nibbles = if h == 0 {
                        packed
                    } else {
                        _mm256_srli_epi16::<4>(packed)
                    };
                    let q = _mm256_or_si256(_mm256_and_si256(nibbles, low), high_bits(top, c));
                    if VNNI {
                        for t in 0..N {
                            let x = _mm256_set1_epi32(ys[t].four(c + 4 * h));
                            sums[t] = _mm256_dpbusd_epi32(sums[t], q, x);
                        }
                        continue;
                    }
                    let q = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
                    let q_abs = _mm256_abs_epi8(q);
                    for t in 0..N {
                        let x = _mm256_sign_epi8(_mm256_set1_epi32(ys[t].four(c + 4 * h)), q);
                        sums[t] = _mm256_add_epi16(sums[t], _mm256_maddubs_epi16(q_abs, x));
                    }
                }
                if VNNI {
                    for t in 0..N {
                        let offset = _mm256_set1_epi32(32 * i32::from(ys[t].halves[h]));
                        sums[t] = _mm256_sub_epi32(sums[t], offset);
                    }
                } else {
                    widen::<N, VNNI>(&mut sums);
                }
                let scale = _mm256_mul_ps(group_d, small_scales::<F>(octet, b, h));
                scale_into(&mut acc, &sums, scale, &ys);
            }
            continue;
        }
        // 4-bit weights: i32 sums (VNNI) or, for AVX2, pairs of i16 sums widened after the
        // block (a nibble times a byte, summed sixteen times, stays under 2^15). Q5_K's fifth
        // bit doubles the bound: its AVX2 sums are widened per chunk.
        let mut sums = [_mm256_setzero_si256(); N];
        // VNNI: the high nibbles' products go to a second sum, so no chain of eight
        // dependent multiply-adds holds the block back.
        let mut sums_hi = [_mm256_setzero_si256(); N];
        let fifths = if F == Q5_K {
            _mm256_loadu_si256(chunk(4))
        } else {
            _mm256_setzero_si256()
        };
        for c in 0..rolled::<N, VNNI>(4) {
            let packed = _mm256_loadu_si256(chunk(c));
            // Low nibbles are elements 4c..4c+4 of each row, high ones 16+4c...
            let mut lo = _mm256_and_si256(packed, low);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low);
            if F == Q5_K {
                lo = _mm256_or_si256(lo, fifth_bits(fifths, c as i32));
                hi = _mm256_or_si256(hi, fifth_bits(fifths, 4 + c as i32));
            }
            for t in 0..N {
                let x_lo = _mm256_set1_epi32(ys[t].four(c));
                let x_hi = _mm256_set1_epi32(ys[t].four(c + 4));
                sums[t] = if VNNI {
                    sums_hi[t] = _mm256_dpbusd_epi32(sums_hi[t], hi, x_hi);
                    _mm256_dpbusd_epi32(sums[t], lo, x_lo)
                } else {
                    let a = _mm256_maddubs_epi16(lo, x_lo);
                    let b = _mm256_maddubs_epi16(hi, x_hi);
                    if F == Q5_K {
                        let pairs = _mm256_madd_epi16(_mm256_add_epi16(a, b), ones);
                        _mm256_add_epi32(sums[t], pairs)
                    } else {
                        _mm256_add_epi16(sums[t], _mm256_add_epi16(a, b))
                    }
                };
            }
        }
        if VNNI {
            for t in 0..N {
                sums[t] = _mm256_add_epi32(sums[t], sums_hi[t]);
            }
        } else if F != Q5_K {
            widen::<N, VNNI>(&mut sums);
        }
        if F == Q4_0 {
            // Σ (q - 8) x = Σ q x - 8 Σ x: the offset once per token and block.
            for t in 0..N {
                sums[t] = _mm256_sub_epi32(sums[t], _mm256_set1_epi32(8 * ys[t].sum));
            }
        }
        // The eight rows' scales at once, times each token's; then the offset term.
        let (d, m) = if F == Q4_K || F == Q5_K {
            let m = _mm256_mul_ps(group_extra, small_scales::<F>(octet, b, 1));
            (_mm256_mul_ps(group_d, small_scales::<F>(octet, b, 0)), m)
        } else {
            (group_d, group_extra)
        };
        scale_into(&mut acc, &sums, d, &ys);
        if F == Q4_1 || F == Q4_K || F == Q5_K {
            for t in 0..N {
                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(ys[t].s), acc[t]);
            }
        }
    }
    for t in 0..N {
        _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
}

/// Q8_0's block of eight rows against `N` tokens, with VNNI: i32 sums of (w + 128) x, the
/// stored bytes as they are, less Σ 128 x once per token.
#[inline(always)]
unsafe fn q8_0_vnni<const N: usize>(
    chunk: impl Fn(usize) -> *const __m256i,
    ys: &[&Q8; N],
) -> [__m256i; N] {
    // Even and odd chunks in two sums: two chains of four dependent multiply-adds, not one
    // of eight.
    let mut sums = [[_mm256_setzero_si256(); N]; 2];
    for c in 0..8 {
        let stored = _mm256_loadu_si256(chunk(c));
        for t in 0..N {
            let x = _mm256_set1_epi32(ys[t].four(c));
            let sum = &mut sums[c % 2][t];
            *sum = _mm256_dpbusd_epi32(*sum, stored, x);
        }
    }
    std::array::from_fn(|t| {
        let sum = _mm256_add_epi32(sums[0][t], sums[1][t]);
        _mm256_sub_epi32(sum, _mm256_set1_epi32(128 * ys[t].sum))
    })
}

/// Q8_0's block of eight rows against `N` tokens, AVX2 only: pairs of (w + 128) x would
/// overflow i16, so the stored bytes go back to signed w, whose sign moves onto x (u8 × i8
/// needs an unsigned side). The chunk loop stays rolled (see `rolled`). One sum per token, not
/// two chains: an add's latency is one cycle.
#[inline(always)]
unsafe fn q8_0_avx2<const N: usize>(
    chunk: impl Fn(usize) -> *const __m256i,
    ys: &[&Q8; N],
) -> [__m256i; N] {
    let ones = _mm256_set1_epi16(1);
    let mut sums = [_mm256_setzero_si256(); N];
    for c in 0..rolled::<N, false>(8) {
        let w = _mm256_xor_si256(_mm256_loadu_si256(chunk(c)), _mm256_set1_epi8(-128));
        let w_abs = _mm256_sign_epi8(w, w);
        for t in 0..N {
            let x = _mm256_sign_epi8(_mm256_set1_epi32(ys[t].four(c)), w);
            let pairs = _mm256_maddubs_epi16(w_abs, x);
            sums[t] = _mm256_add_epi32(sums[t], _mm256_madd_epi16(pairs, ones));
        }
    }
    sums
}

/// A chunk loop's trip count, hidden from the compiler when the loop serves several tokens.
///
/// Such a loop must stay chunk by chunk: each chunk's unpacked weights serve every token, then
/// die. With a count it can see, LLVM unrolled it and reordered it token by token, which keeps
/// every chunk's weights live at once (Q8_0: `w` and `|w|` of eight chunks, 16 registers),
/// spilled to the stack and reloaded for every product. Rolled, on one AVX2 core (AMD EPYC,
/// 5632 x 2048, 64 tokens): Q8_0 41 -> 54 GMAC/s, Q4_0 75 -> 82, Q4_K 69 -> 81. Q6_K's loop,
/// rolled, ran at its unrolled rate (43), so it stays unrolled, with its constant shifts. One
/// token reuses nothing, and its unrolled loop is as fast or faster. With VNNI (AVX-512VL's 32
/// registers) the loops stay as they were measured on that host: unrolled.
#[inline(always)]
fn rolled<const N: usize, const VNNI: bool>(count: usize) -> usize {
    if N == 1 || VNNI {
        count
    } else {
        std::hint::black_box(count)
    }
}

/// Asks for the cache lines of `bytes` from `at` into the cache level `HINT` names. A hint
/// only: past the end of the matrix it reads nothing and cannot fault.
#[inline(always)]
fn prefetch_lines<const HINT: i32>(at: *const u8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        // Safety: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<HINT>(at.wrapping_add(line) as *const i8) };
    }
}

/// Eight rows' f16s of scale group `group`, as f32.
#[inline(always)]
unsafe fn rows_f16(v: &[u16], group: usize) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(
        v.as_ptr().add(group * ROWS) as *const __m128i
    ))
}

/// Eight rows' small scales of block `b`, `which` of two, as f32 (signed for Q6_K).
#[inline(always)]
unsafe fn small_scales<const F: u8>(octet: Octet<'_>, b: usize, which: usize) -> __m256 {
    let at = octet.sub_scales.as_ptr().add((2 * b + which) * ROWS);
    let bytes = _mm_loadl_epi64(at as *const __m128i);
    _mm256_cvtepi32_ps(if F == Q6_K {
        _mm256_cvtepi8_epi32(bytes)
    } else {
        _mm256_cvtepu8_epi32(bytes)
    })
}

/// Q6_K's two high bits of chunk `c` (bits `2c..2c+2` of each byte of `top`), moved to bits
/// 4 and 5 above the nibble: one constant shift and a mask (a 16-bit shift carries bits
/// across bytes, and the mask drops them). `c` is a constant once the chunk loop unrolls.
#[inline(always)]
unsafe fn high_bits(top: __m256i, c: usize) -> __m256i {
    let moved = match c {
        0 => _mm256_slli_epi16::<4>(top),
        1 => _mm256_slli_epi16::<2>(top),
        2 => top,
        _ => _mm256_srli_epi16::<2>(top),
    };
    _mm256_and_si256(moved, _mm256_set1_epi8(0x30))
}

/// Q5_K's fifth bits of elements `4k + i` in byte `i`'s bit `k` (see `q5_k_blocks`), moved
/// above the nibble: bit `shift` of each byte, as 16.
#[inline(always)]
unsafe fn fifth_bits(fifths: __m256i, shift: i32) -> __m256i {
    let bit = _mm256_and_si256(
        _mm256_srl_epi16(fifths, _mm_cvtsi32_si128(shift)),
        _mm256_set1_epi8(1),
    );
    _mm256_slli_epi16::<4>(bit)
}

/// `sums` times each token's block scale times the rows' `scale`, into `acc`.
#[inline(always)]
unsafe fn scale_into<const N: usize>(
    acc: &mut [__m256; N],
    sums: &[__m256i; N],
    scale: __m256,
    ys: &[&Q8; N],
) {
    for t in 0..N {
        let s = _mm256_mul_ps(scale, _mm256_set1_ps(ys[t].d));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[t]), s, acc[t]);
    }
}

/// AVX2 has no byte dot product into i32: pairs go to i16 (`maddubs`) and are widened once
/// per sum, where the bounds allow it. VNNI's sums are i32 already.
#[inline(always)]
unsafe fn widen<const N: usize, const VNNI: bool>(sums: &mut [__m256i; N]) {
    if !VNNI {
        for s in sums.iter_mut() {
            *s = _mm256_madd_epi16(*s, _mm256_set1_epi16(1));
        }
    }
}

/// `super::quantize_block` in eight lanes, bit for bit: the same maximum, the same scale, each
/// product rounded half away from zero by the same steps (truncate, then compare the exact
/// remainder with ±0.5).
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_block(xs: &[f32; BLOCK]) -> Q8 {
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xs.as_ptr().add(8 * i)));
    let sign = _mm256_set1_ps(-0.0);
    // `max_ps` returns its second operand when either is NaN: a NaN input is passed over, as
    // `f32::max` does.
    let mut m = _mm256_setzero_ps();
    for x in v {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, x), m);
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    let (d, id) = block_scale(_mm_cvtss_f32(m));
    let id = _mm256_set1_ps(id);
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let (half, minus_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    let q: [__m256i; 4] = std::array::from_fn(|i| {
        let x = _mm256_mul_ps(v[i], id);
        // NaN (0 · inf) becomes 0, as `NaN as i32` does; then the scalar clamp.
        let x = _mm256_and_ps(x, _mm256_cmp_ps::<_CMP_ORD_Q>(x, x));
        let x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
        let whole = _mm256_cvttps_epi32(x);
        let frac = _mm256_sub_ps(x, _mm256_cvtepi32_ps(whole));
        // Compare masks are -1 where true.
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, minus_half));
        _mm256_add_epi32(_mm256_sub_epi32(whole, up), down)
    });
    // Packing works within 128-bit halves; the permutation puts the eight fours back in order.
    let words = _mm256_packs_epi32(q[0], q[1]);
    let words_2 = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(words, words_2);
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; BLOCK];
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, bytes);
    Q8::new(qs, d)
}
