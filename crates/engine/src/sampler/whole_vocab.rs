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
    /// Summed on the host, in id order.
    pub fn of(row: &[f32], temperature: f32) -> Self {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = row.iter().map(|&l| weight(l, max, temperature)).sum();
        Self { max, sum }
    }

    /// The normalizer after penalties changed the logits of some tokens from `before` to
    /// `after`. None where that leaves too little of the sum to trust (the penalty took the
    /// most of the mass away, or made a weight overflow): then it is summed again from the
    /// penalized row.
    pub fn penalized(
        self,
        temperature: f32,
        changes: impl Iterator<Item = (f32, f32)>,
    ) -> Option<Self> {
        let mut sum = self.sum;
        for (before, after) in changes {
            sum += weight(after, self.max, temperature) - weight(before, self.max, temperature);
        }
        (sum.is_finite() && sum >= self.sum * 1e-3).then_some(Self { sum, ..self })
    }

    fn probability(&self, logit: f32, temperature: f32) -> f64 {
        weight(logit, self.max, temperature) / self.sum
    }
}

fn weight(logit: f32, max: f32, temperature: f32) -> f64 {
    ((logit - max) / temperature).exp() as f64
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

/// [`draw`] over a whole row of candidates, ranking only as much of it as the draw reaches:
/// the highest `HEAD / 2`, then four times as many, and so on.
pub fn draw_from_row(
    params: &SamplingParams,
    normalizer: &Normalizer,
    candidates: &mut [(u32, f32)],
    unit: f32,
) -> u32 {
    let mut ranked_len = 0;
    loop {
        let len = candidates.len();
        let next = (ranked_len * 4).max(HEAD / 2).min(len);
        let rest = &mut candidates[ranked_len..];
        if next < len {
            rest.select_nth_unstable_by(next - ranked_len - 1, ranked);
        }
        rest[..next - ranked_len].sort_unstable_by(ranked);
        ranked_len = next;
        let complete = ranked_len == len;
        if let Some(token) = draw(
            params,
            normalizer,
            &candidates[..ranked_len],
            complete,
            unit,
        ) {
            return token;
        }
        if complete {
            // Only an empty row gets here.
            return 0;
        }
    }
}

/// How many of `candidates` (after penalties, in the ranked order) certainly come before
/// every token of the row that the shortlist lacks: those ranked no lower than `boundary`,
/// the lowest of the row's highest logits that it holds (tokens it lacks are not penalized,
/// so they rank below that).
pub fn known(candidates: &[(u32, f32)], boundary: &(u32, f32)) -> usize {
    candidates.partition_point(|c| ranked(c, boundary) != Ordering::Greater)
}
