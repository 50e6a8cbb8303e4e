//! An encoder's bidirectional attention on the CPU, straight from the q|k|v GEMM's rows: one
//! task per (sequence, head) over sequences packed without padding, and the context written
//! in the row layout the output projection reads. Through candle ops the same step took a permute
//! copy, a mask add, a softmax pass, a transpose copy and two small GEMMs per (sequence, head).

use rayon::prelude::*;

/// `qkv`: rows of [q | k | v], each `heads * head_dim` wide, the query already scaled by
/// 1/sqrt(head_dim), packed: sequence `b`'s `lens[b]` rows follow sequence `b - 1`'s, with no
/// padding between them. Returns the context in the same packed rows, `heads * head_dim` wide.
pub fn attend(qkv: &[f32], heads: usize, head_dim: usize, lens: &[usize]) -> Vec<f32> {
    let h = heads * head_dim;
    let row = 3 * h;
    let starts: Vec<usize> = lens
        .iter()
        .scan(0, |at, &n| {
            let start = *at;
            *at += n;
            Some(start)
        })
        .collect();
    let total: usize = lens.iter().sum();
    // One task per (sequence, head), so that one sequence still uses every thread; each
    // writes its own (len, head_dim) block, scattered into the rows afterwards.
    let blocks: Vec<Vec<f32>> = (0..lens.len() * heads)
        .into_par_iter()
        .map(|task| {
            let (b, head) = (task / heads, task % heads);
            let n = lens[b];
            let seq = &qkv[starts[b] * row..(starts[b] + n) * row];
            let at = |token: usize, part: usize| {
                let start = token * row + part * h + head * head_dim;
                &seq[start..start + head_dim]
            };
            let mut block = vec![0f32; n * head_dim];
            let mut weights = vec![0f32; n];
            for (i, o) in block.chunks_exact_mut(head_dim).enumerate() {
                let q = at(i, 0);
                let mut max = f32::NEG_INFINITY;
                for (j, w) in weights.iter_mut().enumerate() {
                    *w = dot(q, at(j, 1));
                    max = max.max(*w);
                }
                let mut sum = 0f32;
                for w in weights.iter_mut() {
                    *w = (*w - max).exp();
                    sum += *w;
                }
                let scale = 1.0 / sum;
                for (j, w) in weights.iter().enumerate() {
                    let p = w * scale;
                    for (o, v) in o.iter_mut().zip(at(j, 2)) {
                        *o += p * v;
                    }
                }
            }
            block
        })
        .collect();
    let mut out = vec![0f32; total * h];
    for (task, block) in blocks.iter().enumerate() {
        let (b, head) = (task / heads, task % heads);
        for (i, o) in block.chunks_exact(head_dim).enumerate() {
            let start = (starts[b] + i) * h + head * head_dim;
            out[start..start + head_dim].copy_from_slice(o);
        }
    }
    out
}

/// Eight partial sums, so that the compiler keeps them in one SIMD register.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    /// Against the textbook formula in f64, on two packed sequences of two heads.
    #[test]
    fn matches_softmax_attention_per_sequence() {
        let (heads, d) = (2, 12);
        let h = heads * d;
        let lens = [5, 3];
        let starts = [0, 5];
        let qkv: Vec<f32> = (0..8 * 3 * h)
            .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
            .collect();
        let out = super::attend(&qkv, heads, d, &lens);
        assert_eq!(out.len(), 8 * h);
        for (b, &n) in lens.iter().enumerate() {
            for head in 0..heads {
                let get = |t: usize, part: usize, c: usize| {
                    qkv[(starts[b] + t) * 3 * h + part * h + head * d + c] as f64
                };
                for i in 0..n {
                    let got = &out[(starts[b] + i) * h + head * d..][..d];
                    let s: Vec<f64> = (0..n)
                        .map(|j| (0..d).map(|c| get(i, 0, c) * get(j, 1, c)).sum())
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (c, &value) in got.iter().enumerate() {
                        let want: f64 = (0..n).map(|j| e[j] / sum * get(j, 2, c)).sum();
                        assert!(
                            (value as f64 - want).abs() < 1e-5,
                            "b {b} head {head} row {i} col {c}"
                        );
                    }
                }
            }
        }
    }
}
