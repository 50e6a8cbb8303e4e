//! The model store's subcommands, in Ollama's habits: `pull`, `list`, `show`, `cp`, `rm`.

use anyhow::Context;
use ferrollama_store::{ModelName, PullEvent, Pulled, Puller, Store};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::time::SystemTime;

#[derive(clap::Args)]
pub struct PullArgs {
    /// A model name: `mistral:instruct`, `namespace/name:tag`, `host/namespace/name:tag`, or a
    /// Hugging Face repo, `hf.co/org/repo[:quant]` (a GGUF quant, or a safetensors repo).
    pub name: String,
    /// Take a catalog model's safetensors from Hugging Face instead of its GGUF from the
    /// Ollama registry (`mistral:instruct` is then mistralai/Mistral-7B-Instruct-v0.3).
    #[arg(long)]
    pub hugging_face: bool,
    /// Fail unless the model layer has this sha256 (64 hex digits): pins a tag that may move.
    #[arg(long, value_name = "HEX")]
    pub model_sha256: Option<String>,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// A name in the store, or a GGUF file.
    pub name: String,
    /// Hash every blob of a store name and fail naming any whose bytes do not match its
    /// digest (a pull trusts a blob only by its hash; this checks one already on disk).
    #[arg(long)]
    pub verify: bool,
}

#[derive(clap::Args)]
pub struct CopyArgs {
    pub source: String,
    pub destination: String,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

fn parse(name: &str) -> anyhow::Result<ModelName> {
    Ok(ModelName::parse(name)?)
}

/// `ferrollama pull NAME`: a progress bar per blob (per file from Hugging Face), every digest
/// checked.
pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let mut name = parse(&args.name)?;
    if args.hugging_face {
        let entry = crate::catalog::by_name(&name).with_context(|| {
            format!("the catalog (models/catalog/) has no \"{name}\"; give hf.co/org/repo instead")
        })?;
        name = parse(&format!("hf.co/{}", entry.huggingface))?;
    }
    let store = Store::from_env();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "pulling {msg}: {percent:>3}% [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .expect("valid template");
    let mut per_blob: HashMap<String, ProgressBar> = HashMap::new();
    let mut report = |event: PullEvent| match event {
        PullEvent::Status(status) => {
            let _ = bars.println(&status);
        }
        PullEvent::Blob {
            digest,
            total,
            completed,
        } => {
            let bar = per_blob.entry(digest.clone()).or_insert_with(|| {
                let short = digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect::<String>();
                bars.add(
                    ProgressBar::new(total)
                        .with_style(style.clone())
                        .with_message(short),
                )
            });
            bar.set_position(completed);
            if completed == total {
                bar.finish();
            }
        }
    };
    let pin = args.model_sha256.as_deref().map(str::to_ascii_lowercase);
    if let Some(pin) = &pin {
        if !(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit())) {
            anyhow::bail!("--model-sha256 takes 64 hex digits, not \"{pin}\"");
        }
    }
    // The pin is checked against the manifest before any blob is fetched or anything written.
    let pulled = runtime
        .block_on(Puller::from_env().pull(&store, &name, pin.as_deref(), &mut report))
        .with_context(|| format!("pulling {name}"))?;
    match (pulled, pin) {
        (Pulled::Snapshot(dir), _) => println!("{name}: {}", dir.display()),
        (Pulled::Manifest(_), Some(pin)) => println!("{name}: model layer sha256:{pin}, as pinned"),
        (Pulled::Manifest(_), None) => {}
    }
    Ok(())
}

/// `ferrollama list`: NAME ID SIZE MODIFIED, newest first.
pub fn list() -> anyhow::Result<()> {
    let entries = Store::from_env().list()?;
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            [
                e.name.to_string(),
                e.digest.trim_start_matches("sha256:")[..12].to_string(),
                human_size(e.manifest.size()),
                human_age(e.modified),
            ]
        })
        .collect();
    let header = ["NAME", "ID", "SIZE", "MODIFIED"].map(String::from);
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("    ").trim_end());
    }
    Ok(())
}

/// `ferrollama show NAME`: what the GGUF header says, and which chat template serves it.
pub fn show(args: ShowArgs) -> anyhow::Result<()> {
    use ferrollama_model::ChatTemplate;
    let path = match crate::resolve::store_name(&args.name) {
        Some(name) => {
            let store = Store::from_env();
            if args.verify {
                verify(&store, &name)?;
            }
            store.model_file(&name)?
        }
        None if args.verify => anyhow::bail!("--verify checks a name in the store"),
        None => std::path::PathBuf::from(&args.name),
    };
    let source = ferrollama_model::ModelSource::from_path(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    let description = ferrollama_model::Description::of(&source)
        .with_context(|| format!("reading {}", path.display()))?;
    let template_source = if description.pooling.is_some() {
        "none: an embedding model"
    } else {
        let (_, template) = ferrollama_model::tokenizer_and_template(&source)?;
        let from = match &source {
            ferrollama_model::ModelSource::Gguf(_) => {
                "the GGUF's own tokenizer.chat_template (jinja)"
            }
            _ => "tokenizer_config.json's chat_template (jinja)",
        };
        match template {
            ChatTemplate::MistralInstruct => {
                "Mistral v3, built in (the vocabulary has [INST] control tokens)"
            }
            ChatTemplate::Jinja(_) => from,
            ChatTemplate::None => "none: the model has no chat template; raw prompts only",
        }
    };
    let number = |key: &str| {
        description
            .get(key)
            .map_or_else(|| "unknown".into(), |n| n.to_string())
    };
    let rows = [
        ("architecture", description.architecture.clone()),
        ("parameters", description.parameter_size()),
        ("context length", number("context_length")),
        ("embedding size", number("embedding_length")),
        ("quantization", description.quantization.clone()),
        ("chat template", template_source.to_string()),
        ("file", path.display().to_string()),
    ];
    let catalog = crate::resolve::store_name(&args.name)
        .and_then(|name| crate::catalog::by_name(&name))
        .map(|e| {
            format!(
                "{} (Ollama {}, Hugging Face {}, context {})",
                e.family, e.ollama, e.huggingface, e.context_length
            )
        });
    let pooling = description
        .pooling
        .map(|p| ("pooling", format!("{} (an embedding model)", p.name())));
    let rows = rows
        .into_iter()
        .chain(pooling)
        .chain(catalog.map(|c| ("catalog", c)));
    println!("  Model");
    for (key, value) in rows {
        println!("    {key:<16}{value}");
    }
    Ok(())
}

/// Every blob of `name` hashed against its digest.
fn verify(store: &Store, name: &ModelName) -> anyhow::Result<()> {
    let manifest = store.manifest(name)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut bad = Vec::new();
    for layer in manifest.blobs() {
        let ok = runtime.block_on(store.verify_blob(&layer.digest))?;
        println!(
            "  {} {:<40} {}",
            if ok { "ok " } else { "BAD" },
            layer.media_type,
            layer.digest
        );
        if !ok {
            bad.push(format!(
                "{} ({})",
                store.blob_path(&layer.digest)?.display(),
                layer.media_type
            ));
        }
    }
    if !bad.is_empty() {
        anyhow::bail!(
            "{name}: {} blob(s) do not hash to their digest (missing or damaged): {}; pull it again",
            bad.len(),
            bad.join(", ")
        );
    }
    println!("{name}: every blob matches its sha256");
    Ok(())
}

pub fn copy(args: CopyArgs) -> anyhow::Result<()> {
    let (from, to) = (parse(&args.source)?, parse(&args.destination)?);
    Store::from_env().copy(&from, &to)?;
    println!("copied '{from}' to '{to}'");
    Ok(())
}

pub fn remove(args: RemoveArgs) -> anyhow::Result<()> {
    let store = Store::from_env();
    for name in &args.names {
        let name = parse(name)?;
        store.remove(&name)?;
        println!("deleted '{name}'");
    }
    Ok(())
}

/// `ferrollama ps`: what the running server (at `OLLAMA_HOST`) has loaded.
pub fn ps() -> anyhow::Result<()> {
    let host = std::env::var("OLLAMA_HOST").unwrap_or_else(|_| "127.0.0.1:11434".into());
    let base = if host.starts_with("http") {
        host
    } else {
        format!("http://{host}")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: serde_json::Value = runtime
        .block_on(async {
            reqwest::get(format!("{base}/api/ps"))
                .await?
                .error_for_status()?
                .json()
                .await
        })
        .with_context(|| format!("asking the server at {base} (is `ferrollama serve` running?)"))?;
    println!("{:<32}{:<16}{:<12}UNTIL", "NAME", "ID", "SIZE");
    for model in answer["models"].as_array().into_iter().flatten() {
        let digest = model["digest"].as_str().unwrap_or_default();
        println!(
            "{:<32}{:<16}{:<12}{}",
            model["name"].as_str().unwrap_or_default(),
            digest
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>(),
            human_size(model["size"].as_u64().unwrap_or(0)),
            model["expires_at"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

/// Decimal units, as Ollama prints them: `4.1 GB`.
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn human_age(when: SystemTime) -> String {
    let seconds = SystemTime::now()
        .duration_since(when)
        .map_or(0, |d| d.as_secs());
    let (count, unit) = match seconds {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (seconds / 60, "minute"),
        3600..=86_399 => (seconds / 3600, "hour"),
        86_400..=604_799 => (seconds / 86_400, "day"),
        604_800..=2_629_799 => (seconds / 604_800, "week"),
        2_629_800..=31_557_599 => (seconds / 2_629_800, "month"),
        _ => (seconds / 31_557_600, "year"),
    };
    format!("{count} {unit}{} ago", if count == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_like_ollamas() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(4_109_865_159), "4.1 GB");
        assert_eq!(human_size(1_500_000), "1.5 MB");
    }
}
