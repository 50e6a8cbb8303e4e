//! `ferrollama`: the command line. `serve` runs the HTTP APIs, `run` chats with a model from
//! the terminal, `bench` measures any OpenAI-compatible server, and `pull`, `list`, `show`, `ps`,
//! `cp`, `rm` manage the Ollama model store.

mod catalog;
mod engine_args;
mod loader;
mod loading;
mod models;
mod resolve;
mod run;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferrollama",
    version,
    about = "Ollama-compatible LLM inference server"
)]
struct Cli {
    /// Log lines as text or as JSON objects, one per line (for log shippers). RUST_LOG picks
    /// what is logged (default: info, which includes one line per request).
    #[arg(
        long,
        global = true,
        env = "FERROLLAMA_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI and Ollama APIs.
    Serve(serve::ServeArgs),
    /// Chat once with a model: stream its reply to a prompt, then print speeds.
    Run(run::RunArgs),
    /// Load-test an OpenAI-compatible server: throughput, TTFT, TPOT, ITL and latency over a
    /// concurrency sweep or Poisson request rates.
    Bench(ferrollama_bench::BenchArgs),
    /// Pull a model from the Ollama registry into the store (OLLAMA_MODELS, else
    /// ~/.ollama/models), or from Hugging Face (`hf.co/org/repo[:quant]`), checking every
    /// sha256; a cut transfer resumes.
    Pull(models::PullArgs),
    /// List the models in the store.
    #[command(alias = "ls")]
    List,
    /// What a model is: architecture, parameters, context length, quantization, chat template.
    Show(models::ShowArgs),
    /// List the models the running server has loaded (asks OLLAMA_HOST).
    Ps,
    /// Give a model in the store a second name.
    Cp(models::CopyArgs),
    /// Remove models from the store (blobs another model uses stay).
    Rm(models::RemoveArgs),
}

/// candle's CPU thread pool spins 25,000 times after each operation before it sleeps. With as
/// many threads as cores (this server's way), a spinning worker takes a core from the matmul
/// threads. 1,000 measured faster (benches/compare_builds.sh, SmolLM2 greedy, 3 rounds): 1.14x
/// output tok/s at 16 streams, 1.03x at one (64 spins lost 5% there: parking and waking each
/// worker between the small ops of one decode step). `CANDLE_BARRIER_POOL_SPIN_LIMIT` still
/// overrides it.
const CANDLE_SPIN_LIMIT: &str = "1000";

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Before any thread starts: nothing reads the environment concurrently.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT);
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => ferrollama_bench::run(args),
        Command::Pull(args) => models::pull(args),
        Command::List => models::list(),
        Command::Show(args) => models::show(args),
        Command::Ps => models::ps(),
        Command::Cp(args) => models::copy(args),
        Command::Rm(args) => models::remove(args),
    }
}
