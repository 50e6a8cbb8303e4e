//! The draw over every token's softmax: a request without top-k, as OpenAI's API has by
//! default. Its candidates are ranked a head at a time, so a row of 32k logits is not sorted
//! to draw one token, and on a GPU only the row's head and its normalizer cross to the host
//! while the draw stays within that head (it almost always does: a model puts nearly all its
//! mass on few tokens).

use std::cmp::Ordering;

use ferrollama_model::top_k::ranked;

use super::SamplingParams;

/// How many of a row's highest logits a GPU brings back for a draw over every token; past
/// them the row comes back whole.
pub const HEAD: usize = 128;

/// A row's highest logit and Σ exp((logit − max) / temperature) over all its tokens: the
/// softmax's normalizer. On a GPU it is summed on the device, from the row before penalties;
/// penalties then move it token by token ([`Normalizer::penalized`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalizer {
    pub max: f32,
    pub sum: f64,
}

impl Normalizer {
    /// Summed on the host.
    pub fn of(row: &[f32], temperature: f32) -> Self {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        Self::with_max(row, max, temperature)
    }

    fn with_max(row: &[f32], max: f32, temperature: f32) -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            let sum = unsafe { sum_weights_avx2(row, max, temperature) };
            return Self { max, sum };
        }
        Self {
            max,
            sum: sum_weights(row, max, temperature),
        }
    }

    /// The normalizer after penalties changed the logits of some tokens from `before` to
    /// `after`. None where that leaves too little of the sum to trust (the penalty took the
    /// most of the mass away), or raised a logit so far above the max that its weight leaves
    /// `exp`'s range (negative OpenAI penalties can): then it is summed again from the
    /// penalized row, around that row's own max.
    pub fn penalized(
        self,
        temperature: f32,
        changes: impl Iterator<Item = (f32, f32)>,
    ) -> Option<Self> {
        let mut sum = self.sum;
        for (before, after) in changes {
            if (after - self.max) / temperature > 80.0 {
                return None;
            }
            sum += weight(after, self.max, temperature) - weight(before, self.max, temperature);
        }
        (sum.is_finite() && sum >= self.sum * 1e-3).then_some(Self { sum, ..self })
    }

    fn probability(&self, logit: f32, temperature: f32) -> f64 {
        weight(logit, self.max, temperature) / self.sum
    }
}

fn weight(logit: f32, max: f32, temperature: f32) -> f64 {
    exp((logit - max) / temperature) as f64
}

/// Σ weight over the row, in eight lanes that add up in a fixed order: the same sum whether
/// the compiler makes it SSE or AVX2 code.
#[inline(always)]
fn sum_weights(row: &[f32], max: f32, temperature: f32) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        add_weights(
            &mut lanes,
            chunk.try_into().expect("eight"),
            max,
            temperature,
        );
    }
    // The ragged end, padded with logits whose weight is 0.
    let mut last = [f32::NEG_INFINITY; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    add_weights(&mut lanes, &last, max, temperature);
    lanes.iter().sum()
}

#[inline(always)]
fn add_weights(lanes: &mut [f64; 8], chunk: &[f32; 8], max: f32, temperature: f32) {
    let mut e = [0f32; 8];
    for j in 0..8 {
        e[j] = exp((chunk[j] - max) / temperature);
    }
    for j in 0..8 {
        lanes[j] += e[j] as f64;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_weights_avx2(row: &[f32], max: f32, temperature: f32) -> f64 {
    sum_weights(row, max, temperature)
}

/// e^x in f32 to about an ulp (Cephes' expf: a Cody–Waite reduction to 2^k · e^r, |r| ≤ ln2/2,
/// and a degree-6 polynomial), 0 below e^−87. Plain arithmetic, so it vectorizes where libm's
/// `expf` is a call per logit.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5 · 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = clamped * LOG2E + ROUND;
    let k = shifted - ROUND;
    // k as an integer: the low bits of `shifted`'s mantissa.
    let k_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = clamped - k * LN2_HI - k * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^k, or 0 below the range (a mask, not a branch, so that the loop vectorizes).
    let in_range = -((x >= -87.0) as i32) as u32;
    let two_k = f32::from_bits((((k_int + 127) as u32) << 23) & in_range);
    e_r * two_k
}

/// The token that `unit` (uniform in [0, 1)) draws from the softmax over every token, with
/// top-p and min-p, given the candidates' `head` (after penalties, in the ranked order) and
/// whether it holds every token. The same token whatever the head's length, or None where
/// this head is too short to tell.
pub fn draw(
    params: &SamplingParams,
    normalizer: &Normalizer,
    head: &[(u32, f32)],
    complete: bool,
    unit: f32,
) -> Option<u32> {
    let t = params.temperature;
    let p = |c: &(u32, f32)| normalizer.probability(c.1, t);
    let truncated = params.top_p < 1.0 || params.min_p > 0.0;
    // The kept candidates are a prefix of the ranked ones: top-p ends it at the first whose
    // mass reaches top_p, min-p before the first under the likeliest's share.
    let kept = if truncated {
        let floor = p(head.first()?) * params.min_p as f64;
        let mut mass = 0.0;
        let mut end = None;
        for (i, c) in head.iter().enumerate() {
            let pi = p(c);
            if pi < floor {
                end = Some(i);
                break;
            }
            mass += pi;
            if params.top_p < 1.0 && mass >= params.top_p as f64 {
                end = Some(i + 1);
                break;
            }
        }
        match end {
            Some(end) => end,
            None if complete => head.len(),
            None => return None,
        }
    } else {
        head.len()
    };
    // Untruncated, the kept mass is 1 by definition: no need to sum the whole row.
    let total: f64 = if truncated {
        head[..kept].iter().map(p).sum()
    } else {
        1.0
    };
    let mut left = unit as f64 * total;
    for c in &head[..kept] {
        left -= p(c);
        if left <= 0.0 {
            return Some(c.0);
        }
    }
    // Rounding left a sliver of the draw unspent: the last kept token, or where nothing cut
    // the tail (a sum that is 1 only up to rounding), the likeliest rather than the least.
    if truncated {
        Some(head[kept - 1].0)
    } else if complete {
        head.first().map(|c| c.0)
    } else {
        None
    }
}

/// [`draw`] over a whole row (after penalties), ranking only as much of it as the draw
/// reaches: its highest `HEAD / 2`, found in one pass, and only where the draw falls past
/// them eight times as many, and so on. `candidates` is scratch.
pub fn draw_from_row(
    params: &SamplingParams,
    normalizer: &Normalizer,
    row: &[f32],
    unit: f32,
    candidates: &mut Vec<(u32, f32)>,
) -> u32 {
    let mut n = HEAD / 2;
    loop {
        highest(row, n, candidates);
        let complete = candidates.len() == row.len();
        if let Some(token) = draw(params, normalizer, candidates, complete, unit) {
            return token;
        }
        if complete {
            // Only an empty row gets here.
            return 0;
        }
        n *= 8;
    }
}

/// The `n` highest of `row` as (id, logit) in the ranked order, into `out`: a buffer of 2n
/// cut back to its best n whenever it fills, so most logits cost one comparison.
pub fn highest(row: &[f32], n: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    if n == 0 {
        return;
    }
    // The n-th best so far: a logit that does not rank above it cannot make the cut. By the
    // ranked order itself (a total order: -0 below +0, NaN above all), as the GPU's top-k.
    let mut floor: Option<(u32, f32)> = None;
    for (i, &l) in row.iter().enumerate() {
        let candidate = (i as u32, l);
        // (A plain `<` rejects most logits at once: where it holds, the total order agrees.)
        let below = |f: (u32, f32)| l.partial_cmp(&f.1) == Some(Ordering::Less);
        if floor.is_none_or(|f| !below(f) && ranked(&candidate, &f) == Ordering::Less) {
            out.push(candidate);
            if out.len() == 2 * n {
                out.select_nth_unstable_by(n - 1, ranked);
                out.truncate(n);
                floor = Some(out[n - 1]);
            }
        }
    }
    if out.len() > n {
        out.select_nth_unstable_by(n - 1, ranked);
        out.truncate(n);
    }
    out.sort_unstable_by(ranked);
}

/// How many of `candidates` (after penalties, in the ranked order) certainly come before
/// every token of the row that the shortlist lacks: those ranked no lower than `boundary`,
/// the lowest of the row's highest logits that it holds (tokens it lacks are not penalized,
/// so they rank below that).
pub fn known(candidates: &[(u32, f32)], boundary: &(u32, f32)) -> usize {
    candidates.partition_point(|c| ranked(c, boundary) != Ordering::Greater)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrollama_model::rng::SplitMix64;

    #[test]
    fn exp_is_within_two_ulps_of_f64s() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-90.0), 0.0);
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(
            worst < 2.0 * f32::EPSILON as f64,
            "relative error {worst:e}"
        );
    }

    #[test]
    fn the_highest_are_the_first_of_a_full_ranking() {
        let mut rng = SplitMix64::new(11);
        let mut out = Vec::new();
        // Few distinct values (many ties across the cut), signed zeros, NaN and infinities.
        let values = [
            -0.0,
            0.0,
            1.0,
            2.0,
            -3.0,
            f32::NAN,
            f32::NEG_INFINITY,
            f32::INFINITY,
        ];
        for case in 0..300 {
            let len = 1 + (rng.unit() * 700.0) as usize;
            let row: Vec<f32> = (0..len)
                .map(|_| {
                    let i = (rng.unit() * if case % 2 == 0 { 5.0 } else { 8.0 }) as usize;
                    values[i]
                })
                .collect();
            let n = 1 + case % 80;
            highest(&row, n, &mut out);
            let mut all: Vec<(u32, f32)> = row
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect();
            all.sort_by(ranked);
            all.truncate(n);
            let bits =
                |v: &[(u32, f32)]| v.iter().map(|c| (c.0, c.1.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&all), "case {case}");
        }
    }
}
