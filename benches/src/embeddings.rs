//! `ferrollama bench --embeddings`: inputs per second through `/v1/embeddings` at each batch
//! size (inputs per request), one request at a time, with the same texts every run (one per
//! line of `--texts`, or random words at `--input-len`), so another embedder can be timed on
//! exactly them (`benches/compare_embeddings.sh` puts sentence-transformers beside it).

use crate::workload;
use anyhow::{bail, Context, Result};
use ferrollama_model::rng::SplitMix64;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct EmbeddingLevel {
    pub batch: usize,
    pub requests: usize,
    /// Median over the requests.
    pub inputs_per_s: f64,
    pub latency_ms_p50: f64,
    pub prompt_tokens: u64,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingReport {
    pub label: String,
    pub base_url: String,
    pub model: String,
    pub levels: Vec<EmbeddingLevel>,
}

/// The texts: `--texts` lines, else random words (seeded: the same every run).
pub fn texts(
    path: Option<&std::path::Path>,
    count: usize,
    words: u32,
    seed: u64,
) -> Result<Vec<String>> {
    if let Some(path) = path {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--texts {}", path.display()))?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if lines.is_empty() {
            bail!("--texts {} has no text", path.display());
        }
        return Ok(lines.iter().cycle().take(count).cloned().collect());
    }
    let mut rng = SplitMix64::new(seed);
    Ok((0..count)
        .map(|_| workload::random_words(words as usize, &mut rng))
        .collect())
}

pub async fn bench(
    base_url: &str,
    model: &str,
    api_key: Option<&str>,
    label: &str,
    batches: &[usize],
    requests: usize,
    texts: &[String],
) -> Result<EmbeddingReport> {
    let client = reqwest::Client::new();
    let url = format!("{}/embeddings", base_url.trim_end_matches('/'));
    let send = |inputs: &[String]| {
        let mut request = client
            .post(&url)
            .json(&serde_json::json!({"model": model, "input": inputs}));
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        async move {
            let response = request.send().await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            if !status.is_success() {
                bail!("{status}: {body}");
            }
            Ok::<_, anyhow::Error>(body["usage"]["prompt_tokens"].as_u64().unwrap_or(0))
        }
    };
    send(&texts[..1]).await.context("warm-up request")?;
    let progress = ProgressBar::new((batches.len() * requests) as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} requests · {msg}",
        )
        .expect("a valid template"),
    );
    let mut levels = Vec::new();
    for &batch in batches {
        progress.set_message(format!("batch {batch}"));
        let mut rates = Vec::new();
        let mut latencies = Vec::new();
        let mut prompt_tokens = 0;
        for r in 0..requests {
            let start = (r * batch) % texts.len();
            let inputs: Vec<String> = texts
                .iter()
                .cycle()
                .skip(start)
                .take(batch)
                .cloned()
                .collect();
            let began = Instant::now();
            prompt_tokens += send(&inputs).await?;
            let took = began.elapsed().as_secs_f64();
            rates.push(batch as f64 / took);
            latencies.push(took * 1e3);
            progress.inc(1);
        }
        let level = EmbeddingLevel {
            batch,
            requests,
            inputs_per_s: median(&mut rates),
            latency_ms_p50: median(&mut latencies),
            prompt_tokens,
        };
        progress.println(format!(
            "batch {batch}: {:.1} inputs/s, p50 {:.1} ms per request",
            level.inputs_per_s, level.latency_ms_p50
        ));
        levels.push(level);
    }
    progress.finish_and_clear();
    Ok(EmbeddingReport {
        label: label.into(),
        base_url: base_url.into(),
        model: model.into(),
        levels,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn table(report: &EmbeddingReport) -> String {
    let mut out = format!(
        "{:>6} {:>12} {:>14}\n",
        "batch", "inputs/s", "p50 ms/request"
    );
    for l in &report.levels {
        out += &format!(
            "{:>6} {:>12.1} {:>14.1}\n",
            l.batch, l.inputs_per_s, l.latency_ms_p50
        );
    }
    out
}
