//! Turns a row of logits into the next token: penalties, temperature, top-k, top-p, min-p,
//! then a draw from the sequence's own seeded generator (so a sequence's output does not
//! depend on what else shares its batch).

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

    /// top-k, softmax with temperature, top-p, min-p, then a draw.
    fn draw(&mut self, candidates: &mut Vec<(u32, f32)>) -> u32 {
        let p = &self.params;
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            candidates.truncate(p.top_k);
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
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

    fn apply_penalties(&self, logits: &mut [f32], context: &[u32], generated: usize) {
        let p = &self.params;
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let window = &context[context.len().saturating_sub(p.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in window {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
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
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
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
}
