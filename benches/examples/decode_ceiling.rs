//! The most tokens a second one stream's decode can reach on this machine, by memory
//! bandwidth: every weight matrix is read once per token, so no server on these cores decodes
//! one stream faster than (read bandwidth) / (bytes of weights a token reads).
//!
//!   cargo run --release -p ferrollama-bench --example decode_ceiling -- MODEL.gguf [THREADS]
//!
//! Bandwidth is measured here as threads stream a 512 MiB buffer (far past every cache) with
//! 256-bit loads, the way the kernels read weights; it prints each pass, then the median.

use anyhow::Context;
use candle_core::quantized::gguf_file;
use std::time::Instant;

const BUFFER: usize = 512 << 20;
const PASSES: usize = 9;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: decode_ceiling MODEL.gguf [THREADS]"))?;
    let threads: usize = match args.next() {
        Some(t) => t.parse()?,
        None => std::thread::available_parallelism()?.get(),
    };
    let per_token = bytes_per_token(&path)?;
    println!(
        "{path}: {:.1} MB of weights read per decoded token",
        per_token as f64 / 1e6
    );
    let buffer: Vec<u64> = (0..BUFFER / 8).map(|i| i as u64 * 0x9e37_79b9).collect();
    let mut rates = Vec::new();
    for pass in 0..PASSES {
        let rate = read_rate(&buffer, threads);
        println!("pass {}: {:.1} GB/s", pass + 1, rate / 1e9);
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[PASSES / 2];
    println!(
        "read bandwidth, {threads} threads: median {:.1} GB/s (range {:.1}-{:.1})",
        median / 1e9,
        rates[0] / 1e9,
        rates[PASSES - 1] / 1e9
    );
    println!(
        "decode ceiling, one stream: {:.1} tok/s (median), {:.1}-{:.1} over the passes",
        median / per_token as f64,
        rates[0] / per_token as f64,
        rates[PASSES - 1] / per_token as f64
    );
    Ok(())
}

/// Bytes of every tensor a decode step reads: all of them, but of the token embedding only
/// the one row it looks up.
fn bytes_per_token(path: &str) -> anyhow::Result<u64> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    let content = gguf_file::Content::read(&mut file).with_context(|| format!("read {path}"))?;
    let mut total = 0u64;
    for (name, info) in &content.tensor_infos {
        let dtype = info.ggml_dtype;
        let elements = info.shape.elem_count();
        let bytes = (elements / dtype.block_size() * dtype.type_size()) as u64;
        total += if name == "token_embd.weight" {
            bytes / info.shape.dims()[0] as u64
        } else {
            bytes
        };
    }
    Ok(total)
}

/// Bytes a second that `threads` threads read, each streaming its own share of `buffer`.
fn read_rate(buffer: &[u64], threads: usize) -> f64 {
    let start = Instant::now();
    let sums: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = buffer
            .chunks(buffer.len().div_ceil(threads))
            .map(|share| scope.spawn(move || stream(share)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::hint::black_box(sums);
    std::mem::size_of_val(buffer) as f64 / start.elapsed().as_secs_f64()
}

/// A sum over `share`, in four independent lanes of four words (what the compiler turns into
/// 256-bit loads and adds): the loop is bound by memory, not by a dependency chain.
fn stream(share: &[u64]) -> u64 {
    let mut lanes = [[0u64; 4]; 4];
    for block in share.chunks_exact(16) {
        for (lane, words) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            for (l, w) in lane.iter_mut().zip(words) {
                *l = l.wrapping_add(*w);
            }
        }
    }
    lanes.iter().flatten().fold(0, |a, b| a.wrapping_add(*b))
}
