//! Turns a row of logits into the next token: penalties, temperature, top-k, top-p, min-p,
//! then a draw from the sequence's own seeded generator (so a sequence's output does not
//! depend on what else shares its batch).
//!
//! On a GPU a row need not come back whole: its highest logits and the penalized tokens' own
//! decide the draw exactly ([`SamplingParams::shortlist_len`], [`Sampler::sample_shortlist`]),
//! under a top-k always, and without one (a softmax over every token, [`whole_vocab`]) with
//! the row's normalizer whenever the draw falls among them.

mod whole_vocab;

use ferrollama_model::top_k::ranked;

pub use whole_vocab::Normalizer;

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
    /// `penalized` tokens beside them, decide its draw: top-k (1 for greedy) plus `penalized`,
    /// as a penalty moves at most that many tokens across the top-k line. Without a top-k,
    /// a head of the row's highest ([`whole_vocab::HEAD`]) decides it whenever the draw falls
    /// within that head.
    pub fn shortlist_len(&self, penalized: usize) -> usize {
        if self.temperature == 0.0 {
            1 + penalized
        } else if self.top_k == 0 {
            whole_vocab::HEAD + penalized
        } else {
            self.top_k + penalized
        }
    }

    /// A draw from the softmax over every token (no top-k): it needs the row's normalizer.
    pub fn draws_over_every_token(&self) -> bool {
        self.temperature > 0.0 && self.top_k == 0
    }

    /// Each parameter in its range; the error names the first one out of it.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let out = |field: &'static str, value: f32, range: &str| {
            Err(SamplingError {
                field,
                message: format!("{field} must be {range}, got {value}"),
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return out("temperature", self.temperature, "at least 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return out("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return out("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return out("repeat_penalty", self.repeat_penalty, "above 0");
        }
        if !self.presence_penalty.is_finite() {
            return out("presence_penalty", self.presence_penalty, "finite");
        }
        if !self.frequency_penalty.is_finite() {
            return out("frequency_penalty", self.frequency_penalty, "finite");
        }
        Ok(())
    }
}

/// A sampling parameter out of its range, by the request field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SamplingError {
    pub field: &'static str,
    pub message: String,
}

/// What of a logit row a sequence needs for its next token.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// Only its argmax (plain greedy), or nothing (a prompt chunk that samples no token).
    Argmax,
    /// Its `len` highest logits and the `penalized` tokens' own ([`Sampler::sample_shortlist`]).
    Shortlist {
        len: usize,
        penalized: Vec<u32>,
        normalize: Option<f32>,
    },
    /// All of it (a grammar masks it, or penalties touch too many tokens).
    Whole { normalize: Option<f32> },
}

/// Where a draw is over every token (no top-k), the temperature at which a device sums the
/// row's [`Normalizer`] beside it; None where the host needs none from it.
fn normalize_at(params: &SamplingParams) -> Option<f32> {
    (params.temperature > 0.0 && params.top_k == 0).then_some(params.temperature)
}

/// What a device brings back of a row for a draw ([`Need::Shortlist`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shortlist {
    /// The row's highest (id, logit) pairs, in the ranked order.
    pub top: Vec<(u32, f32)>,
    /// Whether `top` holds every token of the row (a vocabulary no longer than the list).
    pub complete: bool,
    /// The penalized tokens' own (id, logit) pairs; some may be in `top` too.
    pub penalized: Vec<(u32, f32)>,
    /// The row's normalizer, for a draw over every token.
    pub normalizer: Option<Normalizer>,
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
        self.sample_row(logits, None, context, generated)
    }

    /// [`Sampler::sample`], with the row's normalizer where a device summed it (see
    /// [`Shortlist::normalizer`]); without one the host sums it.
    pub fn sample_row(
        &mut self,
        logits: &mut [f32],
        normalizer: Option<Normalizer>,
        context: &[u32],
        generated: usize,
    ) -> u32 {
        let changes = self.penalize(logits, context, generated);
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        let token = if self.params.top_k == 0 {
            let t = self.params.temperature;
            let normalizer = normalizer
                .and_then(|n| n.penalized(t, changes.into_iter()))
                .unwrap_or_else(|| Normalizer::of(logits, t));
            let unit = self.rng.unit();
            whole_vocab::draw_from_row(&self.params, &normalizer, logits, unit, &mut candidates)
        } else {
            // The top-k in one pass; `draw` then finds them already cut and ranked.
            whole_vocab::highest(logits, self.params.top_k, &mut candidates);
            self.draw(&mut candidates)
        };
        self.candidates = candidates;
        token
    }

    /// Applies the penalties; returns the (before, after) logits of the tokens they touch at
    /// this position, in id order.
    fn penalize(
        &self,
        logits: &mut (impl Logits + ?Sized),
        context: &[u32],
        generated: usize,
    ) -> Vec<(f32, f32)> {
        let touched = self.penalized(context, generated, 0);
        let before: Vec<Option<f32>> = touched.iter().map(|&t| logits.logit(t).copied()).collect();
        self.apply_penalties(logits, context, generated);
        touched
            .iter()
            .zip(before)
            .filter_map(|(&t, before)| Some((before?, *logits.logit(t)?)))
            .collect()
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
        let normalize = normalize_at(&self.params);
        if max_shortlist == 0 {
            return Need::Whole { normalize: None };
        }
        let penalized = self.penalized(context, generated, ahead);
        match self.params.shortlist_len(penalized.len()) {
            len if len <= max_shortlist => Need::Shortlist {
                len,
                penalized,
                normalize,
            },
            _ => Need::Whole { normalize },
        }
    }

    /// [`Sampler::sample_row`] from a [`Shortlist`]: the row's
    /// [`SamplingParams::shortlist_len`] highest logits and the [`Sampler::penalized`]
    /// tokens' own. The same token as from the whole row with the same normalizer, or None
    /// where a draw over every token falls past the shortlist (the caller then brings the
    /// row and calls [`Sampler::sample_row`]; no draw was spent).
    pub fn sample_shortlist(
        &mut self,
        shortlist: Shortlist,
        context: &[u32],
        generated: usize,
    ) -> Option<u32> {
        let boundary = shortlist.top.last().copied();
        let mut candidates = shortlist.top;
        candidates.extend(shortlist.penalized);
        candidates.sort_unstable_by_key(|c| c.0);
        candidates.dedup_by_key(|c| c.0);
        let changes = self.penalize(&mut ById(&mut candidates), context, generated);
        if self.params.temperature == 0.0 {
            // As `argmax` on the whole row: the highest, the lowest id among equals.
            return candidates.iter().min_by(|a, b| ranked(a, b)).map(|c| c.0);
        }
        if self.params.top_k != 0 {
            return Some(self.draw(&mut candidates));
        }
        let t = self.params.temperature;
        let normalizer = shortlist.normalizer?.penalized(t, changes.into_iter())?;
        candidates.sort_unstable_by(ranked);
        let known = match boundary {
            Some(boundary) if !shortlist.complete => whole_vocab::known(&candidates, &boundary),
            _ => candidates.len(),
        };
        let mut rng = self.rng.clone();
        let token = whole_vocab::draw(
            &self.params,
            &normalizer,
            &candidates[..known],
            shortlist.complete,
            rng.unit(),
        )?;
        self.rng = rng;
        Some(token)
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
mod tests;
