//! `ferrollama bench`: a serving benchmark for any OpenAI-compatible server (ferrollama,
//! llama.cpp's `llama-server`, vLLM, Ollama's `/v1`). It sweeps concurrency levels or Poisson
//! request rates, streams every request to time TTFT and inter-token latency, and reports a
//! terminal table, JSON and an SVG plot.
//!
//! - `workload`: what is sent (random-word prompts of set lengths, or a JSONL file)
//! - `client`: one streamed, timed request
//! - `runner`: one load level (closed loop or Poisson)
//! - `metrics`: records → the summary figures
//! - `report`, `plot`: the table and the SVG
//! - `embeddings`: `--embeddings`, inputs/s through /v1/embeddings at each batch size

pub mod client;
pub mod embeddings;
pub mod metrics;
mod plot;
mod report;
pub mod runner;
pub mod workload;

use anyhow::{bail, Context, Result};
use client::{Endpoint, Target};
use ferrollama_model::rng::SplitMix64;
use indicatif::{ProgressBar, ProgressStyle};
use metrics::{LevelSummary, Load};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use workload::{Lengths, Prompt};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The server's OpenAI base URL.
    #[arg(long, default_value = "http://127.0.0.1:11434/v1")]
    pub base_url: String,
    /// Model name to request; by default the first that `/models` lists.
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer token, if the server wants one.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, value_enum, default_value = "completions")]
    pub endpoint: Endpoint,
    /// Concurrency levels to sweep: this many requests always in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub concurrency: Vec<usize>,
    /// Poisson request rates (req/s) to sweep instead of concurrency levels.
    #[arg(long, value_delimiter = ',', conflicts_with = "concurrency")]
    pub request_rate: Vec<f64>,
    /// With --request-rate: at most this many requests in flight.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Requests per level [default: 4 × concurrency, at least 8; 64 per request rate].
    #[arg(long)]
    pub num_prompts: Option<usize>,
    /// Prompt length in tokens (exact with --tokenizer, in words otherwise).
    #[arg(long, default_value_t = 128)]
    pub input_len: u32,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 128)]
    pub output_len: u32,
    /// Spread lengths uniformly over `len × [1 - r, 1 + r]`.
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// Prompts from a JSONL file (`prompt` or `messages`, optional `max_tokens`), cycled.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// A tokenizer (GGUF file, tokenizer.json, or a model directory) to cut prompts to exact
    /// token lengths.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Do not ask the server to ignore end-of-sequence tokens (outputs may then end early).
    #[arg(long)]
    pub no_ignore_eos: bool,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// A JSON schema file: every request asks for output matching it (`response_format`
    /// json_schema), to measure what constrained decoding costs. Outputs end when the schema
    /// is complete, whatever --output-len says: give one whose output is long enough.
    #[arg(long)]
    pub json_schema: Option<PathBuf>,
    /// Requests sent and discarded before the first level. They also find out whether the
    /// server takes `ignore_eos`; with 0 it is sent without asking (a rerun against a server
    /// already warmed up).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seconds before one request is abandoned (and counted as failed).
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// A name for the server in the JSON and the plot.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Measure /v1/embeddings instead: inputs/s at each of --batch (inputs per request), one
    /// request at a time, --num-prompts requests per batch size (default 20).
    #[arg(long)]
    pub embeddings: bool,
    /// With --embeddings: the batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub batch: Vec<usize>,
    /// With --embeddings: the texts, one per line (else random words at --input-len).
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// Write an SVG plot of throughput and latency against load here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Run nothing: draw these saved reports (from --json; comma-separated) into --plot on
    /// shared axes, one line per label, so servers measured apart are read side by side.
    #[arg(long, value_delimiter = ',', requires = "plot")]
    pub compare: Vec<PathBuf>,
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub base_url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub ignore_eos: bool,
    pub input_len: u32,
    pub output_len: u32,
    pub range_ratio: f64,
    pub dataset: Option<PathBuf>,
    pub seed: u64,
    pub levels: Vec<LevelSummary>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !args.compare.is_empty() {
        return compare(&args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.embeddings {
        return runtime.block_on(bench_embeddings(&args));
    }
    let report = runtime.block_on(bench(&args))?;
    print!("{}", report::table(&report.levels));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON: {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!("{} · {} · {}", report.label, report.model, report.base_url);
        plot::write_svg(path, &title, &report.levels)?;
        eprintln!("plot: {}", path.display());
    }
    Ok(())
}

async fn bench_embeddings(args: &BenchArgs) -> Result<()> {
    let model = args
        .model
        .clone()
        .context("--embeddings needs --model (an embedding model)")?;
    let largest = args.batch.iter().copied().max().unwrap_or(1);
    let requests = args.num_prompts.unwrap_or(20).max(1);
    let texts = embeddings::texts(
        args.texts.as_deref(),
        largest * 4,
        args.input_len,
        args.seed,
    )?;
    let report = embeddings::bench(
        &args.base_url,
        &model,
        args.api_key.as_deref(),
        &args.label,
        &args.batch,
        requests,
        &texts,
    )
    .await?;
    print!("{}", embeddings::table(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON: {}", path.display());
    }
    Ok(())
}

/// The saved reports of `--compare`, levels merged per label, drawn into `--plot`.
fn compare(args: &BenchArgs) -> Result<()> {
    let mut servers: Vec<(String, Vec<LevelSummary>)> = Vec::new();
    for path in &args.compare {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        #[derive(serde::Deserialize)]
        struct Saved {
            label: String,
            levels: Vec<LevelSummary>,
        }
        let saved: Saved = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a `--json` report", path.display()))?;
        match servers.iter_mut().find(|(label, _)| *label == saved.label) {
            Some((_, levels)) => levels.extend(saved.levels),
            None => servers.push((saved.label, saved.levels)),
        }
    }
    for (_, levels) in &mut servers {
        levels.sort_by(|a, b| a.load.value().total_cmp(&b.load.value()));
    }
    let path = args
        .plot
        .as_ref()
        .expect("clap requires --plot with --compare");
    let title = args.label.clone();
    plot::write_comparison_svg(path, &title, &servers)?;
    eprintln!("plot: {}", path.display());
    Ok(())
}

pub async fn bench(args: &BenchArgs) -> Result<Report> {
    let levels = levels(args)?;
    // A fresh connection per request: servers close idle keep-alive connections on their own
    // schedule (llama-server does), and a request sent on one they just closed fails.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => client::first_model(&client, &args.base_url, args.api_key.as_deref())
            .await
            .map_err(anyhow::Error::msg)?,
    };
    let tokenizer = match &args.tokenizer {
        Some(path) => Some(
            ferrollama_model::load::load_tokenizer(path)
                .with_context(|| format!("tokenizer {}", path.display()))?,
        ),
        None => None,
    };
    let dataset = match &args.dataset {
        Some(path) => Some(workload::read_jsonl(path, args.output_len)?),
        None => None,
    };
    let mut target = Target {
        base_url: args.base_url.clone(),
        model: model.clone(),
        api_key: args.api_key.clone(),
        endpoint: args.endpoint,
        ignore_eos: !args.no_ignore_eos,
        temperature: args.temperature,
        timeout: Duration::from_secs(args.timeout),
        response_format: match &args.json_schema {
            None => None,
            Some(path) => {
                let schema: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("--json-schema {}", path.display()))?,
                )
                .with_context(|| format!("--json-schema {}: not JSON", path.display()))?;
                Some(serde_json::json!({"type": "json_schema",
                    "json_schema": {"name": "bench", "schema": schema}}))
            }
        },
    };
    let mut rng = SplitMix64::new(args.seed);
    let prompts_for = |count: usize, rng: &mut SplitMix64| -> Result<Vec<Prompt>> {
        match &dataset {
            Some(all) => Ok(all.iter().cycle().take(count).cloned().collect()),
            None => workload::random_prompts(count, lengths(args), tokenizer.as_ref(), rng),
        }
    };

    if args.warmup > 0 {
        warm_up(&client, &mut target, prompts_for(args.warmup, &mut rng)?).await?;
    }
    let sizes: Vec<usize> = levels
        .iter()
        .map(|l| requests_per_level(args, *l))
        .collect();
    let progress = ProgressBar::new(sizes.iter().sum::<usize>() as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} requests · {msg}",
        )
        .expect("a valid template"),
    );
    let target = Arc::new(target);
    let mut summaries = Vec::new();
    for (load, size) in levels.into_iter().zip(sizes) {
        progress.set_message(load.to_string());
        let prompts = prompts_for(size, &mut rng)?;
        let asked: Vec<u32> = prompts.iter().map(|p| p.max_tokens).collect();
        let (records, duration) = runner::run_level(
            &client,
            &target,
            prompts,
            load,
            args.max_concurrency,
            args.seed,
            &progress,
        )
        .await;
        let summary = metrics::summarize(load, &records, &asked, duration);
        progress.println(format!(
            "{load}: {:.1} output tok/s, TTFT p50 {:.0} ms, TPOT p50 {:.1} ms, {} failed",
            summary.output_throughput,
            summary.ttft_ms.median,
            summary.tpot_ms.median,
            summary.failed
        ));
        summaries.push(summary);
    }
    progress.finish_and_clear();
    for s in summaries.iter().filter(|s| s.short_outputs > 0) {
        eprintln!(
            "note: at {}, {} requests ended before max_tokens (the server may not honour ignore_eos)",
            s.load, s.short_outputs
        );
    }
    Ok(Report {
        label: args.label.clone(),
        base_url: args.base_url.clone(),
        model,
        endpoint: args.endpoint,
        ignore_eos: target.ignore_eos,
        input_len: args.input_len,
        output_len: args.output_len,
        range_ratio: args.range_ratio,
        dataset: args.dataset.clone(),
        seed: args.seed,
        levels: summaries,
    })
}

fn lengths(args: &BenchArgs) -> Lengths {
    Lengths {
        input: args.input_len,
        output: args.output_len,
        range_ratio: args.range_ratio,
    }
}

fn levels(args: &BenchArgs) -> Result<Vec<Load>> {
    if args.max_concurrency == Some(0) {
        bail!("--max-concurrency must be at least 1");
    }
    if !args.request_rate.is_empty() {
        if let Some(bad) = args
            .request_rate
            .iter()
            .find(|r| r.partial_cmp(&&0.0) != Some(std::cmp::Ordering::Greater))
        {
            bail!("--request-rate must be positive, got {bad}");
        }
        return Ok(args
            .request_rate
            .iter()
            .map(|&r| Load::RequestRate(r))
            .collect());
    }
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs levels of at least 1");
    }
    Ok(args
        .concurrency
        .iter()
        .map(|&c| Load::Concurrency(c))
        .collect())
}

fn requests_per_level(args: &BenchArgs, load: Load) -> usize {
    args.num_prompts.unwrap_or(match load {
        Load::Concurrency(c) => (4 * c).max(8),
        Load::RequestRate(_) => 64,
    })
}

/// Sends the warm-up requests one by one. A server that rejects `ignore_eos` (a strict
/// OpenAI-compatible one) is asked again without it, and the run goes on with `max_tokens`
/// alone.
async fn warm_up(
    client: &reqwest::Client,
    target: &mut Target,
    prompts: Vec<Prompt>,
) -> Result<()> {
    for prompt in &prompts {
        let mut record = client::send(client, target, prompt).await;
        let rejected = record
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("HTTP 4"));
        if rejected && target.ignore_eos {
            target.ignore_eos = false;
            record = client::send(client, target, prompt).await;
            if record.ok {
                eprintln!("note: the server rejects ignore_eos; outputs may end before max_tokens");
            } else {
                target.ignore_eos = true;
            }
        }
        if let Some(error) = record.error {
            bail!("warm-up request to {} failed: {error}", target.base_url);
        }
    }
    Ok(())
}
