//! Turns a row of logits into the next token: penalties, temperature, top-k, top-p, min-p,
//! then a draw from the sequence's own seeded generator (so a sequence's output does not
//! depend on what else shares its batch).
//!
//! On a GPU a row need not come back whole: with a top-k (or greedy) and penalties on few
//! tokens, its highest logits and the penalized tokens' own ones decide the draw exactly
//! ([`SamplingParams::shortlist_len`], [`Sampler::sample_shortlist`]).

use ferrollama_model::top_k::ranked;

use ferrollama_model::rng::SplitMix64;

/// Sampling parameters of one request. Defaults are Ollama's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no limit.
    pub top_k: usize,
    /// 1 means no limit.
    pub top_p: f32,
    /// 0 means no limit.
    pub min_p: f32,
    /// Ollama's repeat penalty over the last `repeat_last_n` tokens; 1 means none.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    /// OpenAI's penalties over the generated tokens.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// None draws a seed at random.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Plain argmax: no penalties, no randomness.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    /// Plain argmax of the raw logits: no temperature, no penalty. Such a row can be picked
    /// on the device, and only its token id copied back.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0
            && (self.repeat_penalty == 1.0 || self.repeat_last_n == 0)
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }

    /// How many of a row's highest logits (before penalties), with the own logits of the
    /// `penalized` tokens beside them, decide its draw exactly: top-k (1 for greedy) plus
    /// `penalized`, as a penalty moves at most that many tokens across the top-k line. None
    /// where the whole row is needed (no top-k: the softmax is over every token).
    pub fn shortlist_len(&self, penalized: usize) -> Option<usize> {
        if self.temperature == 0.0 {
            Some(1 + penalized)
        } else if self.top_k == 0 {
            None
        } else {
            Some(self.top_k + penalized)
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |what: &str| Err(format!("{what} is out of range"));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat_penalty");
        }
        if !(self.presence_penalty.is_finite() && self.frequency_penalty.is_finite()) {
            return bad("presence/frequency penalty");
        }
        Ok(())
    }
}

/// What of a logit row a sequence needs for its next token.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// Only its argmax (plain greedy), or nothing (a prompt chunk that samples no token).
    Argmax,
    /// Its `len` highest logits and the `penalized` tokens' own ([`Sampler::sample_shortlist`]).
    Shortlist { len: usize, penalized: Vec<u32> },
    /// All of it (a grammar masks it, or the draw is over every token).
    Whole,
}

/// Per-sequence sampling state.
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Reused across tokens: one vocabulary-sized buffer per sequence, not per token.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(random_seed);
        Self {
            params,
            rng: SplitMix64::new(seed),
            candidates: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `context` is every token so far (prompt and generated);
    /// `generated` how many of them, at its end, were generated.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32], generated: usize) -> u32 {
        self.apply_penalties(logits, context, generated);
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let token = self.draw(&mut candidates);
        self.candidates = candidates;
        token
    }

    /// The tokens whose logits a penalty may change at any of the next `ahead` + 1 positions
    /// (a draft of `ahead` tokens is at the end of `context`): the repeat window reaching back
    /// that much further, and every generated token under OpenAI's penalties. Sorted, distinct.
    pub fn penalized(&self, context: &[u32], generated: usize, ahead: usize) -> Vec<u32> {
        let p = &self.params;
        let mut ids = Vec::new();
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let back = (p.repeat_last_n + ahead).min(context.len());
            ids.extend_from_slice(&context[context.len() - back..]);
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            ids.extend_from_slice(&context[context.len() - generated..]);
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// What the next `ahead` + 1 draws need of their rows (a draft of `ahead` tokens ends
    /// `context`), where shortlists may hold up to `max_shortlist` logits (0: none).
    pub fn need(
        &self,
        context: &[u32],
        generated: usize,
        ahead: usize,
        max_shortlist: usize,
    ) -> Need {
        if self.params.is_plain_greedy() {
            return Need::Argmax;
        }
        if max_shortlist == 0 {
            return Need::Whole;
        }
        let penalized = self.penalized(context, generated, ahead);
        match self.params.shortlist_len(penalized.len()) {
            Some(len) if len <= max_shortlist => Need::Shortlist { len, penalized },
            _ => Need::Whole,
        }
    }

    /// [`Sampler::sample`] from a shortlist of (id, logit before penalties): a row's
    /// [`SamplingParams::shortlist_len`] highest logits and the [`Sampler::penalized`] tokens'
    /// own, in any order and overlapping. The same token as from the whole row.
    pub fn sample_shortlist(
        &mut self,
        mut shortlist: Vec<(u32, f32)>,
        context: &[u32],
        generated: usize,
    ) -> u32 {
        shortlist.sort_unstable_by_key(|c| c.0);
        shortlist.dedup_by_key(|c| c.0);
        self.apply_penalties(&mut ById(&mut shortlist), context, generated);
        if self.params.temperature == 0.0 {
            // As `argmax` on the whole row: the highest, the lowest id among equals.
            return shortlist
                .iter()
                .min_by(|a, b| ranked(a, b))
                .map_or(0, |c| c.0);
        }
        self.draw(&mut shortlist)
    }

    /// top-k, softmax with temperature, top-p, min-p, then a draw.
    fn draw(&mut self, candidates: &mut Vec<(u32, f32)>) -> u32 {
        let p = &self.params;
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, ranked);
            candidates.truncate(p.top_k);
        }
        candidates.sort_unstable_by(ranked);
        // Softmax with temperature, in place.
        let max = candidates[0].1;
        let mut sum = 0.0;
        for c in candidates.iter_mut() {
            c.1 = ((c.1 - max) / p.temperature).exp();
            sum += c.1;
        }
        candidates.iter_mut().for_each(|c| c.1 /= sum);
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = candidates
                .iter()
                .position(|c| {
                    mass += c.1;
                    mass >= p.top_p
                })
                .map_or(candidates.len(), |i| i + 1);
            candidates.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = candidates[0].1 * p.min_p;
            candidates.retain(|c| c.1 >= floor);
        }
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        let mut draw = self.rng.unit() * total;
        for &(id, prob) in candidates.iter() {
            draw -= prob;
            if draw <= 0.0 {
                return id;
            }
        }
        candidates.last().expect("at least one candidate").0
    }

    /// Penalizes the logits `logits` has (a token it lacks is skipped).
    fn apply_penalties(
        &self,
        logits: &mut (impl Logits + ?Sized),
        context: &[u32],
        generated: usize,
    ) {
        let p = &self.params;
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let window = &context[context.len().saturating_sub(p.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in window {
                if seen.insert(t) {
                    if let Some(l) = logits.logit(t) {
                        // As llama.cpp: shrink positive logits, grow negative ones.
                        *l = if *l > 0.0 {
                            *l / p.repeat_penalty
                        } else {
                            *l * p.repeat_penalty
                        };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::new();
            for &t in &context[context.len() - generated..] {
                *counts.entry(t).or_insert(0u32) += 1;
            }
            for (t, n) in counts {
                if let Some(l) = logits.logit(t) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }
}

/// Logits found by token id: a whole row, or a shortlist.
trait Logits {
    fn logit(&mut self, id: u32) -> Option<&mut f32>;
}

impl Logits for [f32] {
    fn logit(&mut self, id: u32) -> Option<&mut f32> {
        self.get_mut(id as usize)
    }
}

/// (id, logit) pairs sorted by id.
struct ById<'a>(&'a mut [(u32, f32)]);

impl Logits for ById<'_> {
    fn logit(&mut self, id: u32) -> Option<&mut f32> {
        let i = self.0.binary_search_by_key(&id, |c| c.0).ok()?;
        Some(&mut self.0[i].1)
    }
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut logits(), &[], 0), 1);
    }

    #[test]
    fn penalties_change_the_pick() {
        let params = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        // Token 1 was just said: 3.0 / 2 = 1.5 < 2.9.
        assert_eq!(Sampler::new(params).sample(&mut logits(), &[1], 0), 4);
        let params = SamplingParams {
            frequency_penalty: 0.1,
            ..SamplingParams::greedy()
        };
        // Generated twice: 3.0 - 0.2 < 2.9.
        assert_eq!(Sampler::new(params).sample(&mut logits(), &[7, 1, 1], 2), 4);
    }

    #[test]
    fn seeds_repeat_and_top_k_limits() {
        let params = SamplingParams {
            temperature: 5.0,
            top_k: 2,
            top_p: 1.0,
            seed: Some(42),
            repeat_penalty: 1.0,
            ..SamplingParams::default()
        };
        let draw = |params: &SamplingParams| {
            let mut s = Sampler::new(params.clone());
            (0..50)
                .map(|_| s.sample(&mut logits(), &[], 0))
                .collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        assert!(
            a.iter().all(|&t| t == 1 || t == 4),
            "top_k 2 keeps tokens 1 and 4"
        );
        assert!(a.contains(&1) && a.contains(&4));
        assert_ne!(
            a,
            draw(&SamplingParams {
                seed: Some(43),
                ..params
            })
        );
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: Some(1),
            repeat_penalty: 1.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params.clone());
        // p(1) ≈ 0.39, p(4) ≈ 0.35: top_p 0.5 keeps exactly those two.
        assert!((0..100).all(|_| matches!(s.sample(&mut logits(), &[], 0), 1 | 4)));
        let mut s = Sampler::new(SamplingParams {
            top_p: 1.0,
            min_p: 0.5,
            ..params
        });
        assert!((0..100).all(|_| matches!(s.sample(&mut logits(), &[], 0), 1 | 2 | 4)));
    }

    /// A row's `n` highest logits by the ranked order, as the device's top-k gives them.
    fn top(row: &[f32], n: usize) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        all.sort_by(ranked);
        all.truncate(n);
        all
    }

    #[test]
    fn a_shortlist_draws_what_the_whole_row_draws() {
        // Rows with many equal logits (a top-k line through ties) and penalized tokens
        // crossing it both ways; every parameter mix that has a shortlist, many seeds.
        let mut rng = SplitMix64::new(7);
        let mut differ = 0;
        for case in 0..3000 {
            let vocab = 50 + (rng.unit() * 200.0) as usize;
            let row: Vec<f32> = (0..vocab)
                .map(|_| ((rng.unit() * 12.0) as i32 - 6) as f32 * 0.5)
                .collect();
            let context: Vec<u32> = (0..(rng.unit() * 80.0) as usize)
                .map(|_| (rng.unit() * vocab as f32) as u32)
                .collect();
            let generated = (rng.unit() * context.len() as f32) as usize;
            let params = SamplingParams {
                temperature: [0.0, 0.3, 0.8, 1.5][case % 4],
                top_k: 1 + (rng.unit() * 60.0) as usize,
                top_p: [1.0, 0.9, 0.5][case % 3],
                min_p: [0.0, 0.05][case % 2],
                repeat_penalty: [1.0, 1.1, 0.8, 2.0][(case / 4) % 4],
                repeat_last_n: (rng.unit() * 70.0) as usize,
                presence_penalty: [0.0, 0.5, -0.5][(case / 3) % 3],
                frequency_penalty: [0.0, 0.2][(case / 2) % 2],
                seed: Some(case as u64),
            };
            let sampler = Sampler::new(params.clone());
            let ahead = case % 3;
            let penalized = sampler.penalized(&context, generated, ahead);
            let len = params
                .shortlist_len(penalized.len())
                .expect("a top-k or greedy");
            // A draft of `ahead` tokens ends the context: its rows see the context without the
            // last `ahead`, ..., 0 tokens; each row's penalized tokens are in the shortlist.
            let j = case % (ahead + 1);
            let seen = context.len().saturating_sub(ahead - j);
            let (row_context, row_generated) =
                (&context[..seen], generated.saturating_sub(ahead - j));
            for t in sampler.penalized(row_context, row_generated, 0) {
                assert!(
                    penalized.binary_search(&t).is_ok(),
                    "case {case}: {t} is penalized"
                );
            }
            let mut whole = Sampler::new(params.clone());
            let mut short = Sampler::new(params);
            for _ in 0..3 {
                let a = whole.sample(&mut row.clone(), row_context, row_generated);
                let mut list = top(&row, len);
                list.extend(
                    penalized
                        .iter()
                        .filter_map(|&t| Some((t, *row.get(t as usize)?))),
                );
                let b = short.sample_shortlist(list, row_context, row_generated);
                differ += (a != b) as usize;
            }
        }
        assert_eq!(differ, 0, "draws that differ");
    }

    #[test]
    fn the_top_k_line_breaks_ties_by_id() {
        // Four equal logits, top_k 2: always the two lowest ids, whatever the row's order.
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            repeat_penalty: 1.0,
            seed: Some(3),
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params);
        let picks: Vec<u32> = (0..200)
            .map(|_| s.sample(&mut [0.0, 1.0, 1.0, 1.0, 1.0], &[], 0))
            .collect();
        assert!(picks.iter().all(|&t| t == 1 || t == 2), "{picks:?}");
    }
}
