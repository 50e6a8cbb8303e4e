//! How the server finds and loads the models requests name: the one given with `--model`, and
//! any in the Ollama store. A request can never name a file path: only the start-up model
//! comes from one.

use crate::engine_args::EngineArgs;
use crate::loading::load_with_progress;
use crate::resolve::{resolve, store_name};
use ferrollama_api::{KeepAlive, Loaded, ModelInfo, ModelLoader, ModelNames};
use ferrollama_model::LoadOptions;
use ferrollama_store::Store;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const PARAMS: &str = "application/vnd.ollama.image.params";

pub struct ServeLoader {
    startup: Option<Startup>,
    engine: EngineArgs,
    options: LoadOptions,
    store: Store,
    /// `OLLAMA_KEEP_ALIVE`, when set.
    keep_alive: Option<KeepAlive>,
}

/// The model given with `--model`.
struct Startup {
    /// Its key: the store name in full when it is one, else the reference as given.
    key: String,
    reference: String,
    /// `--name`.
    name: Option<String>,
    /// What it was when last loaded, so that it stays listed while unloaded.
    info: Mutex<Option<ModelInfo>>,
}

impl ServeLoader {
    pub fn new(
        model: Option<&str>,
        name: Option<&str>,
        engine: EngineArgs,
        store: Store,
        keep_alive: Option<KeepAlive>,
    ) -> anyhow::Result<Self> {
        let startup = model.map(|reference| Startup {
            key: store_name(reference).map_or_else(|| reference.to_string(), |n| n.to_string()),
            reference: reference.to_string(),
            name: name.map(str::to_string),
            info: Mutex::new(None),
        });
        Ok(Self {
            startup,
            options: engine.load_options()?,
            engine,
            store,
            keep_alive,
        })
    }

    /// The start-up model's key, to load it before listening.
    pub fn startup_key(&self) -> Option<&str> {
        self.startup.as_ref().map(|s| s.key.as_str())
    }

    /// What `key` loads from: the start-up model's reference, or the store name itself.
    fn reference<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        match &self.startup {
            Some(s) if s.key == key => Some(s.reference.as_str()),
            _ => Some(key),
        }
    }

    fn load_model(&self, key: &str) -> anyhow::Result<Loaded> {
        let startup = self.startup.as_ref().filter(|s| s.key == key);
        let reference = startup.map_or(key, |s| s.reference.as_str());
        let loaded = load_with_progress(reference, &self.options)?;
        // A store name answers to Ollama's short form too (`tiny` is also `tiny:latest`).
        let short = store_name(reference).map(|n| n.to_string());
        let given = startup.and_then(|s| s.name.as_deref());
        let entry = crate::catalog::entry_for(short.as_deref().unwrap_or(reference), &loaded.model);
        let aliases: Vec<String> = entry.map(|e| e.names.clone()).unwrap_or_default();
        let mut names = ModelNames::new(given.or(short.as_deref()), reference, &aliases);
        names.all.extend(short.filter(|n| !names.all.contains(n)));
        self.say_what_is_not_used(reference);
        let mut defaults = entry.map(|e| e.defaults()).unwrap_or_default();
        defaults.extend(self.params_layer(reference));
        let model = Arc::new(loaded.model);
        let config = self.engine.config(&model)?;
        let engine = ferrollama_engine::start(model.clone(), config.clone())?;
        let m = &model.model;
        println!(
            "loaded {reference} in {:.1}s: device {}, dtype {:?}, attention {}, KV cache {:?}, {:.2} GiB = {} tokens",
            loaded.took.as_secs_f64(),
            ferrollama_model::device::describe(m.device(), config.threads),
            m.dtype(),
            m.attention(),
            m.kv_dtype(),
            config.kv_cache_memory as f64 / (1u64 << 30) as f64,
            engine.stats().total_blocks * config.block_size,
        );
        let (digest, modified) = self.digest(reference, loaded.size_bytes);
        let info = ModelInfo::describe(
            &model,
            names,
            loaded.size_bytes,
            digest,
            modified,
            loaded.description,
            &defaults,
        );
        if let Some(startup) = startup {
            *startup.info.lock().expect("info lock") = Some(info.clone());
        }
        Ok(Loaded {
            engine,
            model,
            info,
            defaults,
            created: ferrollama_api::clock::unix_now(),
            grammars: Default::default(),
        })
    }

    /// The options in a store model's params layer (Ollama's default options for it).
    /// A store model's Modelfile layers that are not used, said at load rather than ignored:
    /// its TEMPLATE (Go template syntax; the GGUF's own chat template is used) and SYSTEM (a
    /// default system prompt, not applied).
    fn say_what_is_not_used(&self, reference: &str) {
        use ferrollama_store::manifest::{SYSTEM, TEMPLATE};
        let Some(manifest) = store_name(reference).and_then(|name| self.store.manifest(&name).ok())
        else {
            return;
        };
        if manifest.layer(TEMPLATE).is_some() {
            tracing::info!(
                "{reference}: its Modelfile TEMPLATE is Go template syntax, which ferrollama does not run; prompts use the GGUF's own chat template"
            );
        }
        if manifest.layer(SYSTEM).is_some() {
            tracing::warn!(
                "{reference}: its Modelfile SYSTEM prompt is not applied; send it as a system message"
            );
        }
    }

    fn params_layer(&self, reference: &str) -> serde_json::Map<String, serde_json::Value> {
        let layer = store_name(reference).and_then(|name| {
            let manifest = self.store.manifest(&name).ok()?;
            let digest = manifest.layer(PARAMS)?.digest.clone();
            let text = std::fs::read(self.store.blob_path(&digest).ok()?).ok()?;
            serde_json::from_slice(&text).ok()
        });
        layer.unwrap_or_default()
    }

    /// The model's digest and modification time: its manifest's when it came from the store
    /// (the ID `ollama list` shows). A file given by path has no manifest; hashing gigabytes
    /// at load would delay serving, so it gets a stable stand-in from its path and size.
    fn digest(&self, reference: &str, size: u64) -> (String, SystemTime) {
        let from_store = store_name(reference).and_then(|name| {
            let entries = self.store.list().ok()?;
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
}

impl ModelLoader for ServeLoader {
    fn find(&self, requested: &str) -> Option<String> {
        if let Some(startup) = &self.startup {
            let known = startup.info.lock().expect("info lock");
            let named = known.as_ref().is_some_and(|i| i.names.matches(requested));
            if named || requested == startup.reference || requested == startup.key {
                return Some(startup.key.clone());
            }
        }
        // Only store names: a request must not load whatever file the server can read.
        let name = store_name(requested)?.to_string();
        resolve(&name).ok()?;
        Some(name)
    }

    fn is_encoder(&self, key: &str) -> bool {
        self.reference(key)
            .and_then(|r| resolve(r).ok())
            .is_some_and(|source| ferrollama_model::is_encoder(&source))
    }

    fn load_encoder(&self, key: &str) -> Result<(ferrollama_model::Encoder, ModelInfo), String> {
        let reference = self
            .reference(key)
            .ok_or_else(|| format!("no model {key}"))?;
        let encoder = crate::loading::load_encoder_with_progress(reference, &self.options.device)
            .map_err(|e| format!("{e:#}"))?;
        let startup = self.startup.as_ref().filter(|s| s.key == key);
        let short = store_name(reference).map(|n| n.to_string());
        let given = startup.and_then(|s| s.name.as_deref());
        let names = ModelNames::new(given.or(short.as_deref()), reference, &[]);
        let size = crate::loading::size_on_disk(reference);
        let (digest, modified) = self.digest(reference, size);
        let info =
            ModelInfo::of_encoder(names, size, digest, modified, encoder.description().clone());
        // The start-up model, an embedding one: listed (tags, show) while unloaded too.
        if let Some(startup) = startup {
            *startup.info.lock().expect("info lock") = Some(info.clone());
        }
        let encoder = match self.engine.threads {
            Some(threads) => encoder.with_threads(threads).map_err(|e| e.to_string())?,
            None => encoder,
        };
        Ok((encoder, info))
    }

    fn load(&self, key: &str) -> Result<Loaded, String> {
        self.load_model(key).map_err(|e| format!("{e:#}"))
    }

    /// The model given at start-up stays loaded unless `OLLAMA_KEEP_ALIVE` says otherwise:
    /// serving it is why the server was started. Others follow Ollama's 5 minutes.
    fn default_keep_alive(&self, key: &str) -> KeepAlive {
        let is_startup = self.startup.as_ref().is_some_and(|s| s.key == key);
        match (self.keep_alive, is_startup) {
            (Some(k), _) => k,
            (None, true) => KeepAlive::Forever,
            (None, false) => KeepAlive::DEFAULT,
        }
    }

    fn listed(&self) -> Vec<ModelInfo> {
        self.startup
            .as_ref()
            .and_then(|s| s.info.lock().expect("info lock").clone())
            .into_iter()
            .collect()
    }
}
