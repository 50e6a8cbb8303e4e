//! Engine throughput on SmolLM2-135M-Instruct Q4_1, in one run on one machine:
//! - the prompt-processing rate (tokens/s prefilling a 1,000-token prompt): on a CPU a decode
//!   step over 16 sequences does about the matrix work of prefilling 16 tokens, so this is the
//!   ceiling batching can reach;
//! - aggregate generated tokens/s at 1, 4, 16 and 32 concurrent streams of 128 new tokens;
//! - the worst gap between two tokens of a running stream while a 2,000-token prompt is
//!   prefilled, with chunked prefill on and off.
//!
//! Run: `SMOLLM2_GGUF="$(models/smollm2-path.sh)" cargo bench -p ferrollama-engine --bench throughput`

use ferrollama_engine::{
    start, EngineConfig, EngineHandle, Event, GenerationRequest, SamplingParams,
};
use ferrollama_model::{load, LoadOptions, LoadedModel, ModelSource};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let path =
        std::env::var("SMOLLM2_GGUF").expect("set SMOLLM2_GGUF (models/smollm2-path.sh prints it)");
    let source = ModelSource::from_path(path.as_ref()).unwrap();
    let model = Arc::new(load(&source, &LoadOptions::cpu(), &mut |_, _| {}).unwrap());
    let text =
        "Ferrollama serves Mistral for GitLab Duo on one GPU; this is benchmark filler text. "
            .repeat(200);
    let corpus = model.tokenizer.encode_prompt(&text).unwrap();
    println!(
        "model: SmolLM2-135M-Instruct Q4_1, threads: {}",
        rayon_threads()
    );

    let engine = start(
        model.clone(),
        EngineConfig {
            max_seqs: 32,
            ..Default::default()
        },
    )
    .unwrap();
    let prefill = (0..2)
        .map(|i| prefill_rate(&engine, &corpus[i..i + 1000]))
        .fold(0.0, f64::max);
    println!("prefill: 1000-token prompt at {prefill:.1} tokens/s");

    println!(
        "{:>8} {:>14} {:>16}",
        "streams", "tokens/s", "x prefill rate"
    );
    for streams in [1, 4, 16, 32] {
        let rate = decode_rate(&engine, &corpus, streams, 128);
        println!("{streams:>8} {rate:>14.1} {:>16.2}", rate / prefill);
    }

    for chunked in [true, false] {
        let engine = start(
            model.clone(),
            EngineConfig {
                chunked_prefill: chunked,
                ..Default::default()
            },
        )
        .unwrap();
        let gap = worst_gap_during_prefill(&engine, &corpus, &model);
        println!("worst inter-token gap while a 2000-token prompt is prefilled, chunked prefill {}: {:.0} ms", if chunked { "on " } else { "off" }, gap.as_secs_f64() * 1e3);
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn request(prompt: &[u32], max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..GenerationRequest::new(prompt.to_vec(), max_tokens)
    }
}

fn prefill_rate(engine: &EngineHandle, prompt: &[u32]) -> f64 {
    let mut stream = engine.submit(request(prompt, 1)).unwrap();
    loop {
        if let Some(Event::Finished { timings, .. }) = stream.blocking_next() {
            return prompt.len() as f64 / timings.prefill.as_secs_f64();
        }
    }
}

/// Generated tokens per second over `streams` concurrent requests, from the first token to
/// the last (their short prompts prefill first and are not counted).
fn decode_rate(engine: &EngineHandle, corpus: &[u32], streams: usize, new: usize) -> f64 {
    let mut handles: Vec<_> = (0..streams)
        .map(|i| {
            engine
                .submit(request(&corpus[i * 3..i * 3 + 32], new))
                .unwrap()
        })
        .collect();
    // Wait until every stream has its first token, then time the rest.
    for h in handles.iter_mut() {
        assert!(matches!(h.blocking_next(), Some(Event::Token { .. })));
    }
    let start = Instant::now();
    let mut tokens = 0;
    for mut h in handles {
        while let Some(Event::Token { .. }) = h.blocking_next() {
            tokens += 1;
        }
    }
    tokens as f64 / start.elapsed().as_secs_f64()
}

fn worst_gap_during_prefill(
    engine: &EngineHandle,
    corpus: &[u32],
    model: &LoadedModel,
) -> Duration {
    let long_prompt: Vec<u32> = corpus.iter().cycle().take(2000).copied().collect();
    assert!(long_prompt.len() < model.config().max_position_embeddings);
    let mut running = engine.submit(request(&corpus[..16], 300)).unwrap();
    for _ in 0..5 {
        running.blocking_next();
    }
    let mut big = engine.submit(request(&long_prompt, 1)).unwrap();
    let mut last = Instant::now();
    let mut worst = Duration::ZERO;
    // Stream tokens until the big prompt has been answered.
    let big_done = std::thread::spawn(move || {
        while !matches!(big.blocking_next(), Some(Event::Finished { .. }) | None) {}
    });
    while !big_done.is_finished() {
        match running.blocking_next() {
            Some(Event::Token { .. }) => {
                worst = worst.max(last.elapsed());
                last = Instant::now();
            }
            _ => break,
        }
    }
    worst
}
