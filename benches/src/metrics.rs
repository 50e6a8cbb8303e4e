//! From the records of one load level to the figures users compare servers by, named as vLLM's
//! benchmark names them: TTFT, TPOT (per output token after the first), ITL (between chunks)
//! and end-to-end latency, each as mean, median, p90 and p99, in milliseconds.

use crate::client::Record;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Distribution {
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Distribution {
    /// Of `values` in seconds, reported in milliseconds; zeros when there are none.
    pub fn of_seconds(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted: Vec<f64> = values.iter().map(|v| v * 1e3).collect();
        sorted.sort_by(f64::total_cmp);
        Self {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            median: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
        }
    }
}

/// Linear interpolation between closest ranks, as numpy's default.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// How a level loads the server.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(tag = "mode", content = "value", rename_all = "snake_case")]
pub enum Load {
    /// This many requests in flight at all times.
    Concurrency(usize),
    /// Poisson arrivals at this many requests per second.
    RequestRate(f64),
}

impl Load {
    pub fn value(&self) -> f64 {
        match *self {
            Load::Concurrency(c) => c as f64,
            Load::RequestRate(r) => r,
        }
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Concurrency(c) => write!(f, "concurrency {c}"),
            Load::RequestRate(r) => write!(f, "{r} req/s"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LevelSummary {
    pub load: Load,
    pub requests: usize,
    pub completed: usize,
    pub failed: usize,
    /// First request sent to last response finished, seconds.
    pub duration_s: f64,
    pub request_throughput: f64,
    /// Output tokens per second over the level.
    pub output_throughput: f64,
    /// Prompt and output tokens per second over the level.
    pub total_token_throughput: f64,
    /// Prompt tokens per second of time to first token: the prompt-processing rate when one
    /// request runs at a time.
    pub prefill_throughput: f64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub ttft_ms: Distribution,
    pub tpot_ms: Distribution,
    pub itl_ms: Distribution,
    pub e2e_ms: Distribution,
    /// Requests that ended with fewer tokens than asked for (the server stopped at an
    /// end-of-sequence token it was told to ignore, or at its context limit).
    pub short_outputs: usize,
    /// The first few errors, verbatim.
    pub errors: Vec<String>,
}

pub fn summarize(load: Load, records: &[Record], asked: &[u32], duration_s: f64) -> LevelSummary {
    let done: Vec<&Record> = records.iter().filter(|r| r.ok).collect();
    let prompt_tokens: u64 = done.iter().map(|r| r.prompt_tokens).sum();
    let output_tokens: u64 = done.iter().map(|r| r.output_tokens).sum();
    let ttft: Vec<f64> = done.iter().map(|r| r.ttft).collect();
    let tpot: Vec<f64> = done
        .iter()
        .filter(|r| r.output_tokens > 1)
        .map(|r| (r.e2e - r.ttft) / (r.output_tokens - 1) as f64)
        .collect();
    let itl: Vec<f64> = done.iter().flat_map(|r| r.itl.iter().copied()).collect();
    let e2e: Vec<f64> = done.iter().map(|r| r.e2e).collect();
    let ttft_total: f64 = ttft.iter().sum();
    let per_s = |n: f64| {
        if duration_s > 0.0 {
            n / duration_s
        } else {
            0.0
        }
    };
    LevelSummary {
        load,
        requests: records.len(),
        completed: done.len(),
        failed: records.len() - done.len(),
        duration_s,
        request_throughput: per_s(done.len() as f64),
        output_throughput: per_s(output_tokens as f64),
        total_token_throughput: per_s((prompt_tokens + output_tokens) as f64),
        prefill_throughput: if ttft_total > 0.0 {
            prompt_tokens as f64 / ttft_total
        } else {
            0.0
        },
        prompt_tokens,
        output_tokens,
        ttft_ms: Distribution::of_seconds(&ttft),
        tpot_ms: Distribution::of_seconds(&tpot),
        itl_ms: Distribution::of_seconds(&itl),
        e2e_ms: Distribution::of_seconds(&e2e),
        short_outputs: records
            .iter()
            .zip(asked)
            .filter(|(r, &n)| r.ok && r.output_tokens < n as u64)
            .count(),
        errors: records
            .iter()
            .filter_map(|r| r.error.clone())
            .take(5)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let d = Distribution::of_seconds(&[0.004, 0.001, 0.003, 0.002]);
        assert_eq!(d.mean, 2.5);
        assert_eq!(d.median, 2.5);
        assert!((d.p90 - 3.7).abs() < 1e-9, "{}", d.p90);
        assert!((d.p99 - 3.97).abs() < 1e-9, "{}", d.p99);
    }

    #[test]
    fn summary_counts_tokens_latencies_and_failures() {
        let ok = |ttft: f64, e2e: f64, out: u64| Record {
            ok: true,
            prompt_tokens: 10,
            output_tokens: out,
            ttft,
            e2e,
            itl: vec![(e2e - ttft) / (out - 1) as f64; out as usize - 1],
            ..Record::default()
        };
        let failed = Record {
            error: Some("HTTP 500".into()),
            ..Record::default()
        };
        let records = vec![ok(0.5, 1.5, 11), ok(1.0, 3.0, 5), failed];
        let s = summarize(Load::Concurrency(2), &records, &[11, 11, 11], 4.0);
        assert_eq!((s.completed, s.failed), (2, 1));
        assert_eq!((s.prompt_tokens, s.output_tokens), (20, 16));
        assert_eq!(s.output_throughput, 4.0);
        assert_eq!(s.total_token_throughput, 9.0);
        assert_eq!(s.request_throughput, 0.5);
        assert!((s.prefill_throughput - 20.0 / 1.5).abs() < 1e-9);
        // TPOT: 1.0 s / 10 tokens and 2.0 s / 4 tokens.
        assert!((s.tpot_ms.mean - 300.0).abs() < 1e-9, "{}", s.tpot_ms.mean);
        assert_eq!(s.ttft_ms.median, 750.0);
        assert_eq!(s.short_outputs, 1);
        assert_eq!(s.errors, vec!["HTTP 500".to_string()]);
    }
}
