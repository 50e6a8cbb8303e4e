//! Loads a model for a subcommand, with a progress bar on the terminal.

use crate::resolve::resolve;
use anyhow::Context;
use ferrollama_model::{LoadOptions, LoadedModel, ModelSource};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

pub struct Loaded {
    pub model: LoadedModel,
    pub took: Duration,
    /// Bytes of weights on disk (0 for random weights).
    pub size_bytes: u64,
    /// What it is, from its files' headers.
    pub description: ferrollama_model::Description,
}

pub fn load_with_progress(reference: &str, options: &LoadOptions) -> anyhow::Result<Loaded> {
    let source = resolve(reference)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers")
            .expect("valid template"),
    );
    bar.set_message(reference.to_string());
    let start = Instant::now();
    let model = ferrollama_model::load(&source, options, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("loading {reference}"))?;
    bar.finish_and_clear();
    let size_bytes = size_on_disk(reference);
    let description = ferrollama_model::Description::of(&source)?;
    Ok(Loaded {
        model,
        took: start.elapsed(),
        size_bytes,
        description,
    })
}

/// Loads an embedding model (a BERT encoder) for the server, with a progress bar.
pub fn load_encoder_with_progress(
    reference: &str,
    device: &candle_core::Device,
) -> anyhow::Result<ferrollama_model::Encoder> {
    let source = resolve(reference)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers")
            .expect("valid template"),
    );
    bar.set_message(reference.to_string());
    let encoder = ferrollama_model::Encoder::load(&source, device, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("loading {reference}"))?;
    bar.finish_and_clear();
    Ok(encoder)
}

/// Bytes of a model's weights on disk: its GGUF, its directory's files; 0 for random weights
/// or what cannot be read.
pub fn size_on_disk(reference: &str) -> u64 {
    match resolve(reference) {
        Ok(ModelSource::Gguf(path)) => std::fs::metadata(path).map_or(0, |m| m.len()),
        Ok(ModelSource::Safetensors(dir)) => std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
        Ok(ModelSource::Random { .. }) | Err(_) => 0,
    }
}
