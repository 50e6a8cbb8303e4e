//! `ferrollama serve`: the OpenAI and Ollama APIs on one port (11434 by default).

use crate::engine_args::EngineArgs;
use crate::loading::load_with_progress;
use anyhow::Context;
use ferrollama_api::{router, AppState, ModelNames};
use ferrollama_store::{Registry, Store};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A GGUF file, a safetensors directory, a name in the Ollama store (`mistral:instruct`),
    /// or random:<shape>[:<dtype>].
    #[arg(long, short, env = "FERROLLAMA_MODEL")]
    pub model: String,
    /// The name the model answers to (default: its file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where to listen, as Ollama reads it: host:port.
    #[arg(long, env = "OLLAMA_HOST", default_value = "127.0.0.1:11434")]
    pub host: String,
    /// Overrides the port of --host.
    #[arg(long)]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer <key>` on every request.
    #[arg(long, env = "FERROLLAMA_API_KEY")]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let address = listen_address(&args.host, args.port)?;
    let loaded = load_with_progress(&args.model, &args.engine.load_options()?)?;
    // A store name answers to Ollama's short form too (`tiny` is also `tiny:latest`).
    let store_name = crate::resolve::store_name(&args.model).map(|n| n.to_string());
    let mut names = ModelNames::new(
        args.name.as_deref().or(store_name.as_deref()),
        &args.model,
        &loaded.model,
    );
    names
        .all
        .extend(store_name.filter(|n| !names.all.contains(n)));
    let model = Arc::new(loaded.model);
    let config = args.engine.config(&model)?;
    let engine = ferrollama_engine::start(model.clone(), config.clone())?;
    let m = &model.model;
    println!(
        "device: {}, dtype {:?}, attention {}, KV cache {:?}, {:.2} GiB = {} tokens",
        ferrollama_model::device::describe(m.device()),
        m.dtype(),
        m.attention(),
        m.kv_dtype(),
        config.kv_cache_memory as f64 / (1u64 << 30) as f64,
        engine.stats().total_blocks * config.block_size,
    );
    let stats = engine.stats();
    let store = Store::from_env();
    let (digest, modified) = served_digest(&store, &args.model, loaded.size_bytes);
    let state = AppState {
        engine,
        model,
        names: Arc::new(names.clone()),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        load_duration: loaded.took,
        size_bytes: loaded.size_bytes,
        api_key: args.api_key.filter(|k| !k.is_empty()).map(Into::into),
        digest,
        modified,
        quantization: loaded.quantization,
        store,
        registry: Registry::from_env(),
    };
    // tokio's default, one HTTP worker per core. Measured on 2 cores against a single worker
    // (1.3B Q4_0, four interleaved rounds): 16 streams +7%, one stream within noise.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&address).await.with_context(|| format!("cannot listen on {address}"))?;
        let local = listener.local_addr()?;
        println!(
            "ferrollama {} listening on http://{local}: model {} (also {}), loaded in {:.1}s, KV cache {} blocks",
            env!("CARGO_PKG_VERSION"),
            names.primary,
            names.all[1..].join(", "),
            loaded.took.as_secs_f64(),
            stats.total_blocks,
        );
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
            .await?;
        anyhow::Ok(())
    })
}

/// The served model's digest and modification time: its manifest's when it came from the
/// store (the ID `ollama list` shows). A file given by path has no manifest; hashing gigabytes
/// at start-up would delay serving, so it gets a stable stand-in from its path and size.
fn served_digest(store: &Store, reference: &str, size: u64) -> (String, SystemTime) {
    let from_store = crate::resolve::store_name(reference).and_then(|name| {
        let entries = store.list().ok()?;
        entries.into_iter().find(|e| e.name == name)
    });
    if let Some(entry) = from_store {
        return (
            entry.digest.trim_start_matches("sha256:").to_string(),
            entry.modified,
        );
    }
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    reference.hash(&mut h);
    size.hash(&mut h);
    let modified = std::fs::metadata(reference)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    (format!("{:016x}", h.finish()), modified)
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
