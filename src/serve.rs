//! `ferrollama serve`: the OpenAI and Ollama APIs on one port (11434 by default).

use crate::engine_args::EngineArgs;
use crate::loader::ServeLoader;
use anyhow::Context;
use ferrollama_api::{
    router, AppState, Encoders, KeepAlive, Limits, Metrics, ModelLoader, Residents,
};
use ferrollama_store::{Puller, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The model to load at start and keep loaded: a GGUF file, a safetensors directory, a
    /// name in the Ollama store (`mistral:instruct`), or random:<shape>[:<dtype>]. Without
    /// it, models in the store load on their first request.
    #[arg(long, short, env = "FERROLLAMA_MODEL")]
    pub model: Option<String>,
    /// The name the model answers to (default: its file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where to listen, as Ollama reads it: host:port.
    #[arg(long, env = "OLLAMA_HOST", default_value = "127.0.0.1:11434")]
    pub host: String,
    /// Overrides the port of --host.
    #[arg(long)]
    pub port: Option<u16>,
    /// How long a model stays loaded after its last request: seconds or a duration (5m, 1h),
    /// negative for ever, 0 to unload at once [default: 5m; the --model one stays loaded].
    #[arg(long, env = "OLLAMA_KEEP_ALIVE")]
    pub keep_alive: Option<String>,
    /// On SIGTERM or Ctrl-C, how long running requests may take to finish before they are
    /// ended with an error; new requests get 503 meanwhile. Seconds or a duration (30s, 2m).
    #[arg(long, env = "FERROLLAMA_DRAIN_TIMEOUT", default_value = "30s")]
    pub drain_timeout: String,
    /// How long one request may run before it is ended with an error and cancelled: seconds
    /// or a duration (10m); 0 or unset, no limit.
    #[arg(long, env = "FERROLLAMA_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Ceiling on tokens generated per choice: requests asking more are refused, requests
    /// asking nothing get this [default: the model's context].
    #[arg(long, env = "FERROLLAMA_MAX_TOKENS")]
    pub max_tokens: Option<usize>,
    /// Most choices (OpenAI's `n`) in one request.
    #[arg(long, default_value_t = 8)]
    pub max_choices: usize,
    /// Put each request's prompt text in its log line (off: prompts stay out of logs).
    #[arg(long, env = "FERROLLAMA_LOG_PROMPTS")]
    pub log_prompts: bool,
    /// Require `Authorization: Bearer <key>` on every request.
    #[arg(long, env = "FERROLLAMA_API_KEY")]
    pub api_key: Option<String>,
    /// Refuse the endpoints that change the model store (`/api/pull`, `/api/delete`,
    /// `/api/copy`, `/api/create`, `/api/push`) whatever the key: for replicas that only serve.
    #[arg(long, env = "FERROLLAMA_READ_ONLY")]
    pub read_only: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let address = listen_address(&args.host, args.port)?;
    let keep_alive = args
        .keep_alive
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(KeepAlive::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--keep-alive / OLLAMA_KEEP_ALIVE: {e}"))?;
    let drain_timeout = match KeepAlive::parse(&args.drain_timeout)
        .map_err(|e| anyhow::anyhow!("--drain-timeout: {e}"))?
    {
        KeepAlive::For(d) => d,
        KeepAlive::Forever => anyhow::bail!("--drain-timeout must not be negative"),
    };
    let request_timeout = match args.request_timeout.as_deref().map(KeepAlive::parse) {
        None => None,
        Some(Ok(KeepAlive::For(d))) if !d.is_zero() => Some(d),
        Some(Ok(_)) => None,
        Some(Err(e)) => anyhow::bail!("--request-timeout: {e}"),
    };
    let store = Store::from_env();
    let loader = Arc::new(ServeLoader::new(
        args.model.as_deref(),
        args.name.as_deref(),
        args.engine,
        store.clone(),
        keep_alive,
    )?);
    // tokio's default, one HTTP worker per core. Measured on 2 cores against a single worker
    // (1.3B Q4_0, four interleaved rounds): 16 streams +7%, one stream within noise.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let residents = Residents::start(loader.clone());
        let encoders = Encoders::start(loader.clone());
        let mut startup_load = Duration::ZERO;
        let serving = match loader.startup_key() {
            // An embedding model given at start serves /api/embed and /v1/embeddings, beside
            // whatever generating model a request loads.
            Some(key) if loader.is_encoder(key) => {
                let lease = encoders
                    .acquire(key, None)
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                startup_load = lease.load_duration;
                format!("embedding model {key}")
            }
            Some(key) => {
                let lease = residents
                    .acquire(key, None)
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                startup_load = lease.load_duration;
                let names = &lease.loaded().info.names;
                match &names.all[1..] {
                    [] => format!("model {}", names.primary),
                    also => format!("model {} (also {})", names.primary, also.join(", ")),
                }
            }
            None => format!(
                "no model loaded yet: models in {} load on their first request",
                store.root().display()
            ),
        };
        let draining = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::new());
        metrics.model_loaded(startup_load);
        let state = AppState {
            residents: residents.clone(),
            encoders,
            draining: draining.clone(),
            metrics,
            log_prompts: args.log_prompts,
            request_timeout,
            limits: Limits {
                max_tokens: args.max_tokens.filter(|&m| m > 0),
                max_choices: args.max_choices.max(1),
            },
            api_key: args.api_key.filter(|k| !k.is_empty()).map(Into::into),
            read_only: args.read_only,
            store,
            puller: Puller::from_env(),
        };
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let local = listener.local_addr()?;
        println!(
            "ferrollama {} listening on http://{local}: {serving}",
            env!("CARGO_PKG_VERSION"),
        );
        axum::serve(listener, router(state))
            .with_graceful_shutdown(drain(residents, draining, drain_timeout))
            .await?;
        println!("drained; exiting");
        anyhow::Ok(())
    })
}

/// Waits for SIGTERM (how systemd and docker stop a service) or Ctrl-C, then drains: the
/// server stops accepting (axum's graceful shutdown), new requests on open connections get
/// 503, running ones get `timeout` to finish, and whatever still runs then is ended with a
/// final event that says why. A connection still open after that is not waited for.
async fn drain(residents: Arc<Residents>, draining: Arc<AtomicBool>, timeout: Duration) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    let signal = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    println!(
        "{signal}: draining, running requests have {:.0?} to finish",
        timeout
    );
    draining.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        residents.abort_all("the server is shutting down");
        // The final events need a moment to reach their clients.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("a connection outlived the drain; exiting");
        std::process::exit(0);
    });
}

/// `OLLAMA_HOST` style: `host`, `host:port`, `:port`, optionally with `http://`.
fn listen_address(host: &str, port: Option<u16>) -> anyhow::Result<String> {
    let host = host.trim_start_matches("http://").trim_end_matches('/');
    let (name, default_port) = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && !name.ends_with(':') => {
            (name, port.parse::<u16>().context("bad port in --host")?)
        }
        _ => (host, 11434),
    };
    let name = if name.is_empty() { "127.0.0.1" } else { name };
    Ok(format!("{name}:{}", port.unwrap_or(default_port)))
}

#[cfg(test)]
mod tests {
    use super::listen_address;

    #[test]
    fn ollama_host_forms() {
        assert_eq!(
            listen_address("127.0.0.1:11434", None).unwrap(),
            "127.0.0.1:11434"
        );
        assert_eq!(listen_address("0.0.0.0", None).unwrap(), "0.0.0.0:11434");
        assert_eq!(listen_address(":8080", None).unwrap(), "127.0.0.1:8080");
        assert_eq!(
            listen_address("http://10.0.0.5:11434", Some(9)).unwrap(),
            "10.0.0.5:9"
        );
    }
}
