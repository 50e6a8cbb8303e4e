//! Quantized weights (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) times f32 activations on the CPU, the way
//! ggml does it: activations are quantized to 8-bit blocks of 32, each block pair is an
//! integer dot product (AVX2, or AVX-512 VNNI where the CPU has it), scaled and summed in
//! float.
//!
//! The layout is built for the register, not for the file. Rows are stored in octets, and in
//! each block of an octet the quants are interleaved four bytes at a time: one 256-bit load
//! holds bytes `4c..4c+4` of all eight rows, one lane per row. A token's four matching
//! activation bytes are broadcast to every lane, so one multiply-add advances eight rows at
//! once. What that buys, against the row-per-register layout it replaces:
//! - no horizontal sums: a lane ends as one output, and eight outputs leave in one store;
//! - scales are applied once per block for eight rows (one vector of row scales times the
//!   token's scale), not once per row;
//! - AVX2 sums a 4-bit block in 16-bit lanes and widens once per block (the products of a
//!   nibble and a byte cannot overflow there), so the hot loop is one multiply-add and one
//!   add per token and chunk;
//! - a call takes up to eight tokens (`TOKENS`), chosen per call by how many are left: each
//!   weight chunk is unpacked once for all of them;
//! - the work is cut into tiles of rows × tokens, sized so the rows' weights stay in L1 while
//!   the tile's tokens pass over them, and the tokens' activations stay in L2;
//! - weights are prefetched 4 KiB ahead into L1 (and, for one token of a 4- to 6-bit format,
//!   32 KiB ahead into L2): decode reads each weight once, straight from DRAM;
//! - k-quants keep the file's size: Q4_K's, Q5_K's and Q6_K's sub-block scales stay small integers
//!   beside one f16 per 256 weights, so decode streams no more bytes than the file holds.
//!
//! A scalar reference computes the same sums from the same layout; the tests hold every SIMD
//! tile to it.

use super::huge_pages::HugeBuf;
use super::team;
use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

const BLOCK: usize = 32;
/// Rows interleaved in one block: one lane of a 256-bit register each.
const ROWS: usize = 8;
/// Most tokens one kernel call takes.
pub const TOKENS: usize = 8;
/// Tokens of one parallel task: their activations (48 bytes a block) stay in L2.
const TASK_TOKENS: usize = 32;
/// Steps of at most this many tokens (a decode, a short draft) cut their products into narrow
/// tasks: many of them, to balance the threads.
const NARROW_TOKENS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `d · (q - 8)`, 4-bit q.
    Q4_0,
    /// `d · q + m`, 4-bit q.
    Q4_1,
    /// `d · q`, signed 8-bit q (stored as q + 128, see `Block::ggml`).
    Q8_0,
    /// `(d · sc) · q - (dmin · m)`, 4-bit q, with a 6-bit `sc` and `m` per block and f16 `d`
    /// and `dmin` per super-block of eight blocks.
    Q4K,
    /// As Q4_K with a fifth bit: `(d · sc) · q - (dmin · m)`, 5-bit q.
    Q5K,
    /// `(d · sc) · (q - 32)`, 6-bit q, with an i8 `sc` per sixteen and an f16 `d` per
    /// super-block of eight blocks.
    Q6K,
}

impl Format {
    /// Bytes of quants in one block of one row.
    fn quant_bytes(self) -> usize {
        match self {
            Format::Q4_0 | Format::Q4_1 | Format::Q4K => 16,
            // Sixteen bytes of low nibbles, then four of the fifth bits (see `q5_k_blocks`).
            Format::Q5K => 20,
            // Sixteen bytes of low nibbles, then eight of the two high bits (see `q6_k_blocks`).
            Format::Q6K => 24,
            Format::Q8_0 => 32,
        }
    }

    /// Whether there is a second f16 per scale group: Q4_1's `m`, Q4_K's `-dmin`.
    fn has_extra(self) -> bool {
        matches!(self, Format::Q4_1 | Format::Q4K | Format::Q5K)
    }

    /// Whether blocks carry two small integer scales (Q4_K's `sc` and `m`, Q6_K's two `sc`)
    /// under an f16 per super-block.
    fn is_k_quant(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K | Format::Q6K)
    }

    /// Blocks that share one f16 `d` (and `extra`).
    fn blocks_per_scale(self) -> usize {
        if self.is_k_quant() {
            8
        } else {
            1
        }
    }
}

/// A quantized `rows × cols` matrix in interleaved row octets (the last octet padded with
/// zero rows).
pub struct QuantMatrix {
    format: Format,
    rows: usize,
    blocks_per_row: usize,
    /// `d` per scale group (a block, or a k-quant's super-block) as f16 bits:
    /// `[octet][group][row in octet]`.
    scales: HugeBuf<u16>,
    /// The group's second f16 (`m` for Q4_1, `-dmin` for Q4_K), same order; empty for other
    /// formats.
    extra: HugeBuf<u16>,
    /// k-quants only: two small scales per block, `[octet][block][which][row in octet]`
    /// (Q4_K: `sc` then `m`, unsigned; Q6_K: the two sixteens' `sc`, signed).
    sub_scales: HugeBuf<u8>,
    /// `[octet][block][chunk c][row r][4 bytes]`: bytes `4c..4c+4` of row `r`'s block.
    quants: HugeBuf<u8>,
}

impl QuantMatrix {
    /// The kernel format a GGUF tensor type runs in, if this module has one.
    pub fn format_for(dtype: GgmlDType) -> Option<Format> {
        match dtype {
            GgmlDType::Q4_0 => Some(Format::Q4_0),
            GgmlDType::Q4_1 => Some(Format::Q4_1),
            GgmlDType::Q8_0 => Some(Format::Q8_0),
            GgmlDType::Q4K => Some(Format::Q4K),
            GgmlDType::Q5K => Some(Format::Q5K),
            GgmlDType::Q6K => Some(Format::Q6K),
            _ => None,
        }
    }

    /// From ggml's raw bytes of a `rows × cols` tensor of `dtype` (row-major blocks).
    pub fn from_ggml(dtype: GgmlDType, raw: &[u8], rows: usize, cols: usize) -> Self {
        let format = Self::format_for(dtype).expect("a type with a CPU kernel");
        assert_eq!(cols % dtype.block_size(), 0, "rows must be whole blocks");
        let file_block = dtype.type_size();
        let file_blocks_per_row = cols / dtype.block_size();
        assert_eq!(raw.len(), rows * file_blocks_per_row * file_block);
        let qb = format.quant_bytes();
        let blocks_per_row = cols / BLOCK;
        let per_scale = format.blocks_per_scale();
        let slots = rows.div_ceil(ROWS) * blocks_per_row * ROWS;
        let groups = slots / per_scale;
        let mut scales = HugeBuf::zeroed(groups);
        let mut extra = HugeBuf::zeroed(if format.has_extra() { groups } else { 0 });
        let mut sub_scales = HugeBuf::zeroed(if format.is_k_quant() { 2 * slots } else { 0 });
        let mut quants = HugeBuf::zeroed(slots * qb);
        for (r, row) in raw
            .chunks_exact(file_blocks_per_row * file_block)
            .enumerate()
        {
            let blocks: Vec<Block> = match dtype {
                GgmlDType::Q4K => row.chunks_exact(file_block).flat_map(q4_k_blocks).collect(),
                GgmlDType::Q5K => row.chunks_exact(file_block).flat_map(q5_k_blocks).collect(),
                GgmlDType::Q6K => row.chunks_exact(file_block).flat_map(q6_k_blocks).collect(),
                _ => row
                    .chunks_exact(file_block)
                    .map(|src| Block::ggml(format, src))
                    .collect(),
            };
            for (b, block) in blocks.iter().enumerate() {
                let slot = (r / ROWS) * blocks_per_row + b;
                let lane = r % ROWS;
                // A super-block's eight blocks all carry its f16s; they land in one place.
                let group = slot / per_scale;
                scales[group * ROWS + lane] = block.d;
                if format.has_extra() {
                    extra[group * ROWS + lane] = block.extra;
                }
                if format.is_k_quant() {
                    sub_scales[(2 * slot) * ROWS + lane] = block.sub[0];
                    sub_scales[(2 * slot + 1) * ROWS + lane] = block.sub[1];
                }
                for (c, four) in block.quants[..qb].chunks_exact(4).enumerate() {
                    let at = slot * ROWS * qb + (c * ROWS + lane) * 4;
                    quants[at..at + 4].copy_from_slice(four);
                }
            }
        }
        Self {
            format,
            rows,
            blocks_per_row,
            scales,
            extra,
            sub_scales,
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

    fn octets(&self) -> usize {
        self.rows.div_ceil(ROWS)
    }

    fn octet(&self, o: usize) -> Octet<'_> {
        let blocks = o * self.blocks_per_row..(o + 1) * self.blocks_per_row;
        let lanes = blocks.start * ROWS..blocks.end * ROWS;
        let per_scale = self.format.blocks_per_scale();
        let groups = lanes.start / per_scale..lanes.end / per_scale;
        let qb = self.format.quant_bytes();
        Octet {
            blocks: self.blocks_per_row,
            scales: &self.scales[groups.clone()],
            extra: if self.extra.is_empty() {
                &[]
            } else {
                &self.extra[groups]
            },
            sub_scales: if self.sub_scales.is_empty() {
                &[]
            } else {
                &self.sub_scales[2 * lanes.start..2 * lanes.end]
            },
            quants: &self.quants[lanes.start * qb..lanes.end * qb],
        }
    }
}

/// One 32-element block of one row in a kernel format: `d` and the second f16 (see
/// `Format::has_extra`) as bits, for k-quants those of the block's super-block and its two
/// small scales (see `QuantMatrix::sub_scales`); the quants in ggml's order for that format
/// (4-bit: byte `j` holds elements `j` and `j + 16`).
struct Block {
    d: u16,
    extra: u16,
    sub: [u8; 2],
    quants: [u8; 32],
}

impl Block {
    /// A block of a file already in `format`.
    fn ggml(format: Format, src: &[u8]) -> Self {
        let qb = format.quant_bytes();
        let mut quants = [0u8; 32];
        quants[..qb].copy_from_slice(&src[src.len() - qb..]);
        if format == Format::Q8_0 {
            // Stored as w + 128, unsigned: VNNI multiplies unsigned bytes by signed ones, and
            // then takes x as it is (the tile subtracts Σ 128 x).
            quants.iter_mut().for_each(|q| *q ^= 0x80);
        }
        Self {
            d: u16::from_le_bytes([src[0], src[1]]),
            extra: if format == Format::Q4_1 {
                u16::from_le_bytes([src[2], src[3]])
            } else {
                0
            },
            sub: [0; 2],
            quants,
        }
    }
}

/// One Q4_K super-block (256 weights: f16 `d` and `dmin`, eight 6-bit scales and mins, 4-bit
/// quants) as eight blocks of 32: the same quants in the 4-bit order, each block's `sc` and
/// `m` unpacked to a byte, and `-dmin` stored so the kernel adds the offset term.
fn q4_k_blocks(src: &[u8]) -> impl Iterator<Item = Block> + '_ {
    let (d, minus_dmin) = k_super_scales(src);
    let scales = &src[4..16];
    let qs = &src[16..144];
    (0..8).map(move |sub| Block {
        d,
        extra: minus_dmin,
        sub: k4_scale_min(scales, sub),
        quants: k4_nibbles(qs, sub),
    })
}

/// One Q5_K super-block (Q4_K's scales, then 32 bytes of fifth bits and 128 of nibbles) as
/// eight blocks of 32. A block's 20 bytes: Q4_K's sixteen of nibbles, then four of fifth bits
/// where byte `i`'s bit `k` belongs to element `4k + i` (k < 4: the low nibbles' elements)
/// or `16 + 4(k - 4) + i`. Interleaved like every quant, those four bytes become one
/// register, and chunk `c` takes its bits with one shift by `c` (low nibbles) or `4 + c`.
fn q5_k_blocks(src: &[u8]) -> impl Iterator<Item = Block> + '_ {
    let (d, minus_dmin) = k_super_scales(src);
    let scales = &src[4..16];
    let (qh, qs) = (&src[16..48], &src[48..176]);
    (0..8).map(move |sub| {
        let mut quants = k4_nibbles(qs, sub);
        // ggml's dequantize_row_q5_K: element `l` of block `sub` has its fifth bit at bit
        // `sub` of `qh[l]`.
        let fifth = |l: usize| (qh[l] >> sub) & 1;
        for i in 0..4 {
            quants[16 + i] = (0..4)
                .map(|k| (fifth(4 * k + i) << k) | (fifth(16 + 4 * k + i) << (4 + k)))
                .fold(0, |a, v| a | v);
        }
        Block {
            d,
            extra: minus_dmin,
            sub: k4_scale_min(scales, sub),
            quants,
        }
    })
}

/// A Q4_K or Q5_K super-block's f16 `d` and `-dmin` (negated so the kernel adds the offset
/// term), as bits.
fn k_super_scales(src: &[u8]) -> (u16, u16) {
    let d = u16::from_le_bytes([src[0], src[1]]);
    let minus_dmin = (-f16::from_bits(u16::from_le_bytes([src[2], src[3]]))).to_bits();
    (d, minus_dmin)
}

/// Block `j`'s 6-bit scale and min: ggml's get_scale_min_k4.
fn k4_scale_min(scales: &[u8], j: usize) -> [u8; 2] {
    if j < 4 {
        [scales[j] & 63, scales[j + 4] & 63]
    } else {
        [
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        ]
    }
}

/// Block `sub`'s nibbles in the 4-bit order (byte `j`: elements `j` and `j + 16`), from a
/// k-quant's 128 bytes where blocks 2g and 2g+1 are the low and high nibbles of the same 32.
fn k4_nibbles(qs: &[u8], sub: usize) -> [u8; 32] {
    let bytes = &qs[32 * (sub / 2)..][..32];
    let nibble = |l: usize| {
        if sub % 2 == 0 {
            bytes[l] & 0x0F
        } else {
            bytes[l] >> 4
        }
    };
    let mut quants = [0u8; 32];
    for (j, q) in quants[..16].iter_mut().enumerate() {
        *q = nibble(j) | (nibble(j + 16) << 4);
    }
    quants
}

/// One Q6_K super-block (256 weights: 4+2-bit quants in `ql` and `qh`, sixteen i8 scales, f16
/// `d` last) as eight blocks of 32, still six bits a weight. A block's 24 bytes: sixteen of
/// low nibbles in the 4-bit order, then four bytes holding the two high bits of elements
/// 0..16 and four of elements 16..32, where byte `i`'s bits `2k..2k+2` belong to element
/// `4k + i` (of that sixteen). Interleaved like every quant, those eight bytes become two
/// registers, and chunk `c` of the nibbles takes its high bits with one shift by `2c`.
fn q6_k_blocks(src: &[u8]) -> impl Iterator<Item = Block> + '_ {
    let (ql, qh, scales) = (&src[..128], &src[128..192], &src[192..208]);
    let d = u16::from_le_bytes([src[208], src[209]]);
    // ggml's dequantize_row_q6_K: each half of 128 takes 64 bytes of ql and 32 of qh; its four
    // runs of 32 take low nibbles, low nibbles 32 on, high nibbles, high nibbles 32 on, with
    // two bits of qh each. The result is q + 32, in 0..64.
    let quant = move |e: usize| -> u8 {
        let (half, run, l) = (e / 128, e % 128 / 32, e % 32);
        let low = ql[64 * half + l + 32 * (run % 2)];
        let low = if run < 2 { low & 0x0F } else { low >> 4 };
        let high = (qh[32 * half + l] >> (2 * run)) & 3;
        low | (high << 4)
    };
    (0..8).map(move |b| {
        let q: [u8; 32] = std::array::from_fn(|j| quant(32 * b + j));
        let mut quants = [0u8; 32];
        for j in 0..16 {
            quants[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        }
        for (sixteen, top) in [(0, 16), (16, 20)] {
            for i in 0..4 {
                quants[top + i] = (0..4)
                    .map(|k| (q[sixteen + 4 * k + i] >> 4) << (2 * k))
                    .fold(0, |a, v| a | v);
            }
        }
        Block {
            d,
            extra: 0,
            sub: [scales[2 * b], scales[2 * b + 1]],
            quants,
        }
    })
}

/// Eight interleaved rows, every block of them.
#[derive(Clone, Copy)]
struct Octet<'a> {
    blocks: usize,
    /// Per scale group (see `Format::blocks_per_scale`), eight rows each.
    scales: &'a [u16],
    extra: &'a [u16],
    /// Per block, two × eight rows.
    sub_scales: &'a [u8],
    quants: &'a [u8],
}

fn f16_bits(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// One block of activations quantized as ggml's Q8_0/Q8_1: `d` rounded through f16, the
/// integer sum of the quants (and of each sixteen: Q6_K's offset is taken per sixteen), and
/// `s = f16(d · sum)` (the Q4_1 offset term uses it).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct Q8 {
    qs: [i8; BLOCK],
    d: f32,
    s: f32,
    sum: i32,
    /// The sums of quants `0..16` and `16..32`.
    halves: [i16; 2],
}

impl Q8 {
    /// `d` and `s` rounded through f16, as ggml keeps them.
    fn new(qs: [i8; BLOCK], d: f32) -> Self {
        let half = |h: usize| {
            qs[16 * h..16 * h + 16]
                .iter()
                .map(|&q| q as i16)
                .sum::<i16>()
        };
        let halves = [half(0), half(1)];
        let sum = i32::from(halves[0]) + i32::from(halves[1]);
        Q8 {
            qs,
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            sum,
            halves,
        }
    }

    /// Quants `4c..4c+4` as one little-endian word, to broadcast to every lane.
    #[inline(always)]
    fn four(&self, c: usize) -> i32 {
        i32::from_le_bytes([
            self.qs[4 * c] as u8,
            self.qs[4 * c + 1] as u8,
            self.qs[4 * c + 2] as u8,
            self.qs[4 * c + 3] as u8,
        ])
    }
}

pub fn quantize_row(x: &[f32]) -> Vec<Q8> {
    // A decode step quantizes each matrix's input on one thread while the others wait: the
    // scalar loop was 0.5 ms of a 1.3B model's 20 ms step. The SIMD one computes the same
    // bits (the tests hold it to `quantize_block`).
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: AVX2 was just checked.
        return x
            .chunks_exact(BLOCK)
            .map(|xs| unsafe { avx2::quantize_block(xs.try_into().expect("a block")) })
            .collect();
    }
    x.chunks_exact(BLOCK)
        .map(|xs| quantize_block(xs.try_into().expect("a block")))
        .collect()
}

/// One block: the scale from its largest magnitude, each value rounded half away from zero.
fn quantize_block(xs: &[f32; BLOCK]) -> Q8 {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, id) = block_scale(amax);
    let mut qs = [0i8; BLOCK];
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = round_half_away(v * id) as i8;
    }
    Q8::new(qs, d)
}

/// A block's scale and its inverse, from its largest magnitude.
fn block_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// `x.round() as i8` (halves away from zero, as ggml's `roundf`, saturating) in plain
/// arithmetic: `round` is a libm call per element, 3% of a 16-stream decode's CPU time.
#[inline(always)]
fn round_half_away(x: f32) -> i32 {
    // Saturates as `as i8` would (a block of tiny values can make the scale infinite).
    let x = x.clamp(-128.0, 127.0);
    let whole = x as i32; // towards zero
    let frac = x - whole as f32; // exact
    whole + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

/// Writes eight rows' outputs for each of up to `TOKENS` tokens: `out[t][r]`.
type Kernel = fn(Octet<'_>, &[&[Q8]], &mut [[f32; ROWS]; TOKENS]);

/// How a product is cut into kernel calls. `Auto` is what the model uses; the others exist
/// so the benchmark can show what each tile width buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiling {
    /// Up to `TOKENS` tokens per call, fewer only for the ragged end.
    Auto,
    /// One token per call: every token reads the weights on its own, like a matrix-vector
    /// product repeated.
    OneToken,
}

/// `out[t][r] = Σ_k w[r][k] · x[t][k]` for `x` of `tokens × cols`.
pub fn matmul(w: &QuantMatrix, x: &[f32], tokens: usize) -> Vec<f32> {
    matmul_tiled(w, x, tokens, Tiling::Auto)
}

/// The products of matrices that read the same input (`[tokens, Σ rows]`, each token's
/// outputs part after part), in any mix of formats: the input is quantized once and one
/// parallel loop runs them all (a Q4_K_M file keeps attention's v in Q6_K beside q and k).
pub fn matmul_parts(parts: &[QuantMatrix], x: &[f32], tokens: usize) -> Vec<f32> {
    let parts: Vec<_> = parts.iter().map(|w| (w, pick_kernel(w.format))).collect();
    matmul_with(&parts, x, tokens, TOKENS)
}

pub fn matmul_tiled(w: &QuantMatrix, x: &[f32], tokens: usize, tiling: Tiling) -> Vec<f32> {
    let per_call = match tiling {
        Tiling::Auto => TOKENS,
        Tiling::OneToken => 1,
    };
    matmul_with(&[(w, pick_kernel(w.format))], x, tokens, per_call)
}

fn matmul_with(
    parts: &[(&QuantMatrix, Kernel)],
    x: &[f32],
    tokens: usize,
    per_call: usize,
) -> Vec<f32> {
    let cols = parts[0].0.cols();
    // The kernels index activation blocks unchecked: a short input must never reach them.
    assert!(
        parts.iter().all(|(w, _)| w.cols() == cols),
        "parts of different widths"
    );
    assert_eq!(x.len(), tokens * cols, "input is not tokens × cols");
    let xq: Vec<Vec<Q8>> = if tokens > 1 {
        x.par_chunks_exact(cols).map(quantize_row).collect()
    } else {
        vec![quantize_row(x)]
    };
    let xs: Vec<&[Q8]> = xq.iter().map(Vec::as_slice).collect();
    // Tasks are tiles of (octets of one part × tokens). A decode step has one token, so its
    // tiles are narrow (many tasks to balance two to sixteen threads); a batch's are wider,
    // and each octet's weights stay in L1 while the tile's tokens pass over them.
    // On a team (one stream's step) each thread runs a contiguous share of eight tasks, then
    // helps with the others' (on 2 cores, 1.3B Q4_0, decode steps A/B against rayon: 4 tasks
    // a thread 1.01x, 8 1.04-1.07x, 16 1.02x, 32 1.01x).
    let octets: usize = parts.iter().map(|(w, _)| w.octets()).sum();
    let task_octets = if team::in_team() {
        octets.div_ceil(8 * rayon::current_num_threads()).max(2)
    } else if tokens <= NARROW_TOKENS {
        2
    } else {
        8
    };
    // Each part's first output column (its rows padded to whole octets), and its bands.
    let mut offsets = Vec::with_capacity(parts.len());
    let mut bands = Vec::new();
    let mut padded = 0;
    for (p, (w, _)) in parts.iter().enumerate() {
        offsets.push(padded);
        padded += w.octets() * ROWS;
        let starts = (0..w.octets()).step_by(task_octets);
        bands.extend(starts.map(|o| (p, o..w.octets().min(o + task_octets))));
    }
    let token_tiles = tokens.div_ceil(TASK_TOKENS);
    let mut out = vec![0f32; tokens * padded];
    let out_ptr = SharedOut(out.as_mut_ptr());
    team::for_each(bands.len() * token_tiles, |task| {
        let (band, tile) = (task % bands.len(), task / bands.len());
        let (p, ref band_octets) = bands[band];
        let (w, kernel) = parts[p];
        let tile_tokens = tile * TASK_TOKENS..(tokens).min((tile + 1) * TASK_TOKENS);
        for o in band_octets.clone() {
            let octet = w.octet(o);
            for t0 in tile_tokens.clone().step_by(per_call) {
                let group = &xs[t0..tile_tokens.end.min(t0 + per_call)];
                let mut tile_out = [[0f32; ROWS]; TOKENS];
                kernel(octet, group, &mut tile_out);
                for (i, values) in tile_out.iter().enumerate().take(group.len()) {
                    let at = (t0 + i) * padded + offsets[p] + o * ROWS;
                    // Safety: task tiles are disjoint (octet range of one part × token
                    // range), so no two tasks write the same element, and every index is
                    // inside `out`.
                    unsafe { out_ptr.write(at, values) };
                }
            }
        }
    });
    // Drop the padding rows of each part's last octet, if any has them.
    let rows: usize = parts.iter().map(|(w, _)| w.rows).sum();
    if padded == rows {
        return out;
    }
    let mut compact = Vec::with_capacity(tokens * rows);
    for t in 0..tokens {
        for ((w, _), offset) in parts.iter().zip(&offsets) {
            compact.extend_from_slice(&out[t * padded + offset..][..w.rows]);
        }
    }
    compact
}

/// The output buffer, shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// Safety: see the write in `matmul_tiled`: tasks never write the same element.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `at..at + ROWS` is inside the buffer and no other thread writes it.
    unsafe fn write(self, at: usize, values: &[f32; ROWS]) {
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), ROWS);
    }
}

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
            Format::Q4K => avx2::pick::<{ avx2::Q4_K }>(),
            Format::Q5K => avx2::pick::<{ avx2::Q5_K }>(),
            Format::Q6K => avx2::pick::<{ avx2::Q6_K }>(),
        };
    }
    scalar_kernel(format)
}

/// The scalar reference as a kernel for `format`.
fn scalar_kernel(format: Format) -> Kernel {
    match format {
        Format::Q4_0 => |o, x, out| scalar_tile(Format::Q4_0, o, x, out),
        Format::Q4_1 => |o, x, out| scalar_tile(Format::Q4_1, o, x, out),
        Format::Q8_0 => |o, x, out| scalar_tile(Format::Q8_0, o, x, out),
        Format::Q4K => |o, x, out| scalar_tile(Format::Q4K, o, x, out),
        Format::Q5K => |o, x, out| scalar_tile(Format::Q5K, o, x, out),
        Format::Q6K => |o, x, out| scalar_tile(Format::Q6K, o, x, out),
    }
}

/// The reference: each weight read back out of the interleaved layout, plain integer dots
/// per block (per sixteen for Q6_K), in the file's meaning of each format.
fn scalar_tile(format: Format, octet: Octet<'_>, xs: &[&[Q8]], out: &mut [[f32; ROWS]; TOKENS]) {
    let qb = format.quant_bytes();
    let per_scale = format.blocks_per_scale();
    // Byte `j` of row `r`'s quants in block `b`.
    let byte = |b: usize, r: usize, j: usize| {
        octet.quants[b * ROWS * qb + ((j / 4) * ROWS + r) * 4 + j % 4]
    };
    // Element `j` of a 4-bit block (nibble order: byte `j % 16`, low then high).
    let nibble = |b: usize, r: usize, j: usize| {
        let q = byte(b, r, j % 16);
        (if j < 16 { q & 0x0F } else { q >> 4 }) as i32
    };
    // Element `j` of a Q5_K block.
    let five = |b: usize, r: usize, j: usize| {
        let bit = j % 16 / 4 + 4 * (j / 16);
        let high = (byte(b, r, 16 + j % 4) >> bit) & 1;
        nibble(b, r, j) | (high << 4) as i32
    };
    // Element `j` of a Q6_K block, less 32.
    let six = |b: usize, r: usize, j: usize| {
        let (sixteen, k, i) = (j / 16, j % 16 / 4, j % 4);
        let high = (byte(b, r, 16 + 4 * sixteen + i) >> (2 * k)) & 3;
        (nibble(b, r, j) | (high << 4) as i32) - 32
    };
    let small = |b: usize, which: usize, r: usize| octet.sub_scales[(2 * b + which) * ROWS + r];
    for (x, out) in xs.iter().zip(out.iter_mut()) {
        for (r, o) in out.iter_mut().enumerate() {
            let mut sum = 0f32;
            for (b, y) in x.iter().enumerate().take(octet.blocks) {
                let group = b / per_scale * ROWS + r;
                let dot = |elements: std::ops::Range<usize>, w: &dyn Fn(usize) -> i32| -> f32 {
                    elements.map(|j| w(j) * y.qs[j] as i32).sum::<i32>() as f32
                };
                let d = f16_bits(octet.scales[group]);
                sum += match format {
                    Format::Q4_0 => d * y.d * dot(0..32, &|j| nibble(b, r, j) - 8),
                    Format::Q4_1 => {
                        d * y.d * dot(0..32, &|j| nibble(b, r, j))
                            + f16_bits(octet.extra[group]) * y.s
                    }
                    Format::Q8_0 => d * y.d * dot(0..32, &|j| byte(b, r, j) as i32 - 128),
                    Format::Q4K | Format::Q5K => {
                        let (sc, m) = (small(b, 0, r) as f32, small(b, 1, r) as f32);
                        let q = |j| {
                            if format == Format::Q5K {
                                five(b, r, j)
                            } else {
                                nibble(b, r, j)
                            }
                        };
                        d * sc * y.d * dot(0..32, &q) + f16_bits(octet.extra[group]) * m * y.s
                    }
                    Format::Q6K => (0..2)
                        .map(|h| {
                            let sc = small(b, h, r) as i8 as f32;
                            d * sc * y.d * dot(16 * h..16 * h + 16, &|j| six(b, r, j))
                        })
                        .sum(),
                };
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "quant_avx2.rs"]
mod avx2;

#[cfg(test)]
#[path = "quant_tests.rs"]
mod tests;
