//! Drives one load level: a fixed number of requests always in flight, or Poisson arrivals at
//! a rate (optionally capped in concurrency). Every finished request ticks the progress bar.

use crate::client::{self, Record, Target};
use crate::metrics::Load;
use crate::workload::Prompt;
use ferrollama_model::rng::SplitMix64;
use indicatif::ProgressBar;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Runs `prompts` under `load`; returns the records in prompt order and the level's duration.
pub async fn run_level(
    client: &reqwest::Client,
    target: &Arc<Target>,
    prompts: Vec<Prompt>,
    load: Load,
    max_concurrency: Option<usize>,
    seed: u64,
    progress: &ProgressBar,
) -> (Vec<Record>, f64) {
    let prompts = Arc::new(prompts);
    let start = Instant::now();
    let records = match load {
        Load::Concurrency(c) => closed_loop(client, target, &prompts, c, progress).await,
        Load::RequestRate(rate) => {
            let cap = max_concurrency.unwrap_or(usize::MAX >> 4);
            poisson(client, target, &prompts, rate, cap, seed, progress).await
        }
    };
    (records, start.elapsed().as_secs_f64())
}

/// `concurrency` workers, each sending its next prompt as soon as its last one finished.
async fn closed_loop(
    client: &reqwest::Client,
    target: &Arc<Target>,
    prompts: &Arc<Vec<Prompt>>,
    concurrency: usize,
    progress: &ProgressBar,
) -> Vec<Record> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.min(prompts.len()))
        .map(|_| {
            let (client, target, prompts, next, progress) = (
                client.clone(),
                target.clone(),
                prompts.clone(),
                next.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(prompt) = prompts.get(i) else {
                        break done;
                    };
                    done.push((i, client::send(&client, &target, prompt).await));
                    progress.inc(1);
                }
            })
        })
        .collect();
    let mut records: Vec<Option<Record>> = vec![None; prompts.len()];
    for worker in workers {
        for (i, record) in worker.await.expect("a benchmark worker panicked") {
            records[i] = Some(record);
        }
    }
    records
        .into_iter()
        .map(|r| r.expect("every prompt sent"))
        .collect()
}

/// Requests arrive with exponential gaps of mean `1 / rate` seconds, whatever the server's
/// speed (an open loop), at most `cap` in flight.
async fn poisson(
    client: &reqwest::Client,
    target: &Arc<Target>,
    prompts: &Arc<Vec<Prompt>>,
    rate: f64,
    cap: usize,
    seed: u64,
    progress: &ProgressBar,
) -> Vec<Record> {
    let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9);
    let slots = Arc::new(Semaphore::new(cap));
    let mut tasks = Vec::with_capacity(prompts.len());
    for i in 0..prompts.len() {
        if i > 0 {
            let gap = -(1.0 - rng.unit() as f64).ln() / rate;
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        }
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let (client, target, prompts, progress) = (
            client.clone(),
            target.clone(),
            prompts.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let record = client::send(&client, &target, &prompts[i]).await;
            drop(permit);
            progress.inc(1);
            record
        }));
    }
    let mut records = Vec::with_capacity(tasks.len());
    for task in tasks {
        records.push(task.await.expect("a benchmark request panicked"));
    }
    records
}
