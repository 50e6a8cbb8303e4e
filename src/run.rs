//! `ferrollama run MODEL PROMPT`: one chat turn from the terminal, greedy, streamed.
//! Until the engine lands this drives the model directly, one sequence over a private cache.

use crate::resolve::resolve;
use anyhow::{bail, Context};
use ferrollama_model::device::{select_device, DeviceRequest};
use ferrollama_model::{Batch, ChatMessage, Detokenizer, KvCache, Role, SeqChunk};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::time::Instant;

#[derive(clap::Args)]
pub struct RunArgs {
    /// A GGUF file, a safetensors directory, or random:<shape>[:<dtype>].
    pub model: String,
    /// The user message.
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
}

const BLOCK_SIZE: usize = 16;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let source = resolve(&args.model)?;
    let device = select_device(DeviceRequest::Auto)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers")
            .expect("valid template"),
    );
    bar.set_message(args.model.clone());
    let loaded = ferrollama_model::load(&source, &device, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("loading {}", args.model))?;
    bar.finish_and_clear();

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new(Role::System, system.clone()));
    }
    messages.push(ChatMessage::new(Role::User, args.prompt.clone()));
    let prompt = loaded.chat_template.encode(&loaded.tokenizer, &messages)?;

    let context = loaded.config().max_position_embeddings;
    if prompt.len() >= context {
        bail!(
            "the prompt has {} tokens; the model's context is {context}",
            prompt.len()
        );
    }
    let max_len = context.min(prompt.len() + args.max_tokens);
    let blocks = max_len.div_ceil(BLOCK_SIZE);
    let mut cache = KvCache::new(loaded.config(), BLOCK_SIZE, blocks);
    let block_table: Vec<u32> = (0..blocks as u32).collect();

    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let mut detokenizer = Detokenizer::new();
    let mut stdout = std::io::stdout();
    let start = Instant::now();
    let mut tokens = prompt.clone();
    let mut new = &prompt[..];
    let mut prefill_time = None;
    let mut generated = 0usize;
    while tokens.len() < max_len {
        let chunk = SeqChunk {
            tokens: new,
            cached: tokens.len() - new.len(),
            block_table: &block_table,
        };
        let logits = model.forward(&Batch::new(vec![chunk]), &mut cache)?;
        let next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        prefill_time.get_or_insert_with(|| start.elapsed());
        generated += 1;
        if tokenizer.eos_ids().contains(&next) {
            break;
        }
        tokens.push(next);
        if let Some(text) = detokenizer.push(tokenizer, next)? {
            print!("{text}");
            stdout.flush()?;
        }
        new = &tokens[tokens.len() - 1..];
    }
    if let Some(text) = detokenizer.finish(tokenizer)? {
        print!("{text}");
    }
    println!();

    let prefill = prefill_time.unwrap_or_default();
    let decode = start.elapsed() - prefill;
    eprintln!(
        "prompt: {} tokens, {:.1} tokens/s | generation: {} tokens, {:.1} tokens/s",
        prompt.len(),
        prompt.len() as f64 / prefill.as_secs_f64(),
        generated,
        (generated.saturating_sub(1)) as f64 / decode.as_secs_f64().max(1e-9),
    );
    Ok(())
}
