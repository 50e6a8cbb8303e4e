//! `ferrollama run MODEL PROMPT`: one chat turn from the terminal, streamed through the
//! engine, then prompt and generation speeds.

use crate::engine_args::EngineArgs;
use crate::loading::load_with_progress;
use ferrollama_engine::{Event, GenerationRequest, SamplingParams};
use ferrollama_model::{ChatMessage, Role};
use std::io::Write;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct RunArgs {
    /// A GGUF file, a safetensors directory, or random:<shape>[:<dtype>].
    pub model: String,
    /// The user message.
    pub prompt: String,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 (the default here) is greedy and reproducible.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let model = Arc::new(load_with_progress(&args.model, &args.engine.load_options()?)?.model);

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new(Role::System, system.clone()));
    }
    messages.push(ChatMessage::new(Role::User, args.prompt.clone()));
    let prompt = model.chat_template.encode(&model.tokenizer, &messages)?;

    let config = args.engine.config(&model)?;
    let engine = ferrollama_engine::start(model, config)?;
    let sampling = match args.temperature {
        t if t <= 0.0 => SamplingParams::greedy(),
        t => SamplingParams {
            temperature: t,
            seed: args.seed,
            ..SamplingParams::default()
        },
    };
    let mut stream = engine.submit(GenerationRequest {
        sampling,
        ..GenerationRequest::new(prompt, args.max_tokens)
    })?;
    let mut stdout = std::io::stdout();
    while let Some(event) = stream.blocking_next() {
        match event {
            Event::Token { text, .. } => {
                print!("{text}");
                stdout.flush()?;
            }
            Event::Embedding(_) => {}
            Event::Finished {
                usage,
                timings,
                error,
                ..
            } => {
                println!();
                if let Some(error) = error {
                    anyhow::bail!("generation failed: {error}");
                }
                let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
                eprintln!(
                    "prompt: {} tokens, {:.1} tokens/s | generation: {} tokens, {:.1} tokens/s",
                    usage.prompt_tokens,
                    rate(usage.prompt_tokens - usage.cached_tokens, timings.prefill),
                    usage.generated_tokens,
                    rate(usage.generated_tokens.saturating_sub(1), timings.decode),
                );
            }
        }
    }
    Ok(())
}
