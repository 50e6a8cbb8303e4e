//! Which model is loaded: the first request that names a model loads it, it stays for
//! `keep_alive` after its last request, and then it is unloaded. One model is resident at a
//! time (a 7B fills a T4): a request for another waits until the resident one is idle, which
//! is then unloaded to make room.

use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::model_info::ModelInfo;
use ferrollama_engine::{EngineHandle, Grammars};
use ferrollama_model::LoadedModel;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// A model ready to serve: its engine, weights and tokenizer.
pub struct Loaded {
    pub engine: EngineHandle,
    pub model: Arc<LoadedModel>,
    pub info: ModelInfo,
    /// Ollama options it gets when a request does not set them: the catalog's, then its
    /// manifest's params layer.
    pub defaults: serde_json::Map<String, serde_json::Value>,
    /// Unix seconds when it was loaded.
    pub created: u64,
    /// Structured-output grammars over its tokenizer (built on first use).
    pub grammars: Grammars,
}

impl Loaded {
    pub fn context(&self) -> usize {
        self.engine.context_len()
    }
}

/// Finds and loads models by the names requests give. The server's binary provides it: the
/// model given at start-up, and the model store.
pub trait ModelLoader: Send + Sync + 'static {
    /// The key of the model `requested` names, if this loader can load it. Cheap: loads nothing.
    fn find(&self, requested: &str) -> Option<String>;
    /// Loads the model `key` names. Blocking: seconds to minutes.
    fn load(&self, key: &str) -> Result<Loaded, String>;
    /// How long `key` stays loaded after a request that does not say.
    fn default_keep_alive(&self, key: &str) -> KeepAlive;
    /// Whether `key` is an embedding model (an encoder), which embeds and does not generate.
    /// Cheap: reads headers only.
    fn is_encoder(&self, key: &str) -> bool;
    /// Loads the embedding model `key` names, with what the APIs say about it. Blocking.
    fn load_encoder(&self, key: &str) -> Result<(ferrollama_model::Encoder, ModelInfo), String>;
    /// Models outside the store that it serves (a file given at start-up), as last loaded, so
    /// that they stay listed while unloaded.
    fn listed(&self) -> Vec<ModelInfo>;
}

/// The one resident model's bookkeeping.
struct Resident {
    key: String,
    loaded: Arc<Loaded>,
    state: Mutex<Use>,
}

struct Use {
    leases: usize,
    /// The latest request's keep_alive (Ollama's rule): applied when the last lease ends.
    keep_alive: KeepAlive,
    /// When it unloads; `None` while in use or kept forever.
    expires: Option<Instant>,
    unloaded: bool,
}

/// The resident model, and whatever is needed to swap it.
pub struct Residents {
    loader: Arc<dyn ModelLoader>,
    slot: Mutex<Option<Arc<Resident>>>,
    /// Held while a model loads or makes room, so that one load happens at a time.
    loading: tokio::sync::Mutex<()>,
    /// Woken when a lease ends or an expiry is set: waiting loads and the reaper look again.
    changed: Arc<tokio::sync::Notify>,
    /// The last unloaded model, to wait until its memory is released before loading another.
    last_unloaded: Mutex<Weak<LoadedModel>>,
}

/// One request's hold on the resident model: while any lease lives, it is not unloaded.
pub struct Lease {
    residents: Arc<Residents>,
    resident: Arc<Resident>,
    /// The time this request spent loading the model (zero when it was resident).
    pub load_duration: Duration,
}

impl Lease {
    pub fn loaded(&self) -> &Arc<Loaded> {
        &self.resident.loaded
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.resident.state.lock().expect("resident lock");
        state.leases -= 1;
        if state.leases == 0 {
            match state.keep_alive {
                KeepAlive::Forever => state.expires = None,
                KeepAlive::For(d) if d.is_zero() => {
                    drop(state);
                    // At once, so that the response's end already finds it unloaded.
                    self.residents.unload_if_idle(&self.resident);
                }
                KeepAlive::For(d) => state.expires = Some(Instant::now() + d),
            }
        }
        self.residents.changed.notify_waiters();
    }
}

/// A loaded model as `/api/ps` lists it.
pub struct Running {
    pub loaded: Arc<Loaded>,
    /// `None`: kept until the server stops.
    pub expires_at: Option<SystemTime>,
}

impl Residents {
    /// Starts with nothing loaded, and the reaper that unloads an expired model.
    pub fn start(loader: Arc<dyn ModelLoader>) -> Arc<Self> {
        let residents = Arc::new(Self {
            loader,
            slot: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            changed: Arc::new(tokio::sync::Notify::new()),
            last_unloaded: Mutex::new(Weak::new()),
        });
        tokio::spawn(reap(Arc::downgrade(&residents)));
        residents
    }

    pub fn loader(&self) -> &dyn ModelLoader {
        self.loader.as_ref()
    }

    fn resident(&self) -> Option<Arc<Resident>> {
        self.slot.lock().expect("slot lock").clone()
    }

    /// The model `requested` names, loading it if need be.
    pub async fn acquire(
        self: &Arc<Self>,
        requested: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, ApiError> {
        let keep_alive =
            |key: &str| keep_alive.unwrap_or_else(|| self.loader.default_keep_alive(key));
        loop {
            if let Some(resident) = self.resident() {
                if resident.loaded.info.names.matches(requested) {
                    let keep = keep_alive(&resident.key);
                    if let Some(lease) = self.lease(&resident, keep, Duration::ZERO) {
                        return Ok(lease);
                    }
                }
            }
            let key = self.find(requested).await?;
            if self.loader.is_encoder(&key) {
                return Err(ApiError::bad_request(format!(
                    "\"{requested}\" is an embedding model: it does not generate text; use /api/embed or /v1/embeddings"
                )));
            }
            let loading = self.loading.lock().await;
            // Registered before looking, so that a lease ending in between still wakes us.
            let changed = self.changed.notified();
            if let Some(resident) = self.resident() {
                if resident.key == key {
                    match self.lease(&resident, keep_alive(&key), Duration::ZERO) {
                        Some(lease) => return Ok(lease),
                        None => continue,
                    }
                }
                if !self.unload_if_idle(&resident) {
                    // Another model is serving requests: wait for them to end.
                    drop(loading);
                    changed.await;
                    continue;
                }
            }
            self.wait_for_release().await;
            let started = Instant::now();
            let loader = self.loader.clone();
            let load_key = key.clone();
            let loaded = tokio::task::spawn_blocking(move || loader.load(&load_key))
                .await
                .map_err(|e| ApiError::internal(format!("loading {key} failed: {e}")))?
                .map_err(|e| ApiError::internal(format!("cannot load {key}: {e}")))?;
            let keep = keep_alive(&key);
            let resident = Arc::new(Resident {
                key,
                loaded: Arc::new(loaded),
                state: Mutex::new(Use {
                    leases: 0,
                    keep_alive: keep,
                    expires: None,
                    unloaded: false,
                }),
            });
            *self.slot.lock().expect("slot lock") = Some(resident.clone());
            let lease = self.lease(&resident, keep, started.elapsed());
            return Ok(lease.expect("a model just loaded is not unloaded yet"));
        }
    }

    pub(crate) async fn find(&self, requested: &str) -> Result<String, ApiError> {
        let loader = self.loader.clone();
        let name = requested.to_string();
        tokio::task::spawn_blocking(move || loader.find(&name))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "model \"{requested}\" not found, try pulling it first"
                ))
            })
    }

    /// A new lease, unless the model was unloaded meanwhile.
    fn lease(
        self: &Arc<Self>,
        resident: &Arc<Resident>,
        keep_alive: KeepAlive,
        load_duration: Duration,
    ) -> Option<Lease> {
        let mut state = resident.state.lock().expect("resident lock");
        if state.unloaded {
            return None;
        }
        state.leases += 1;
        state.keep_alive = keep_alive;
        state.expires = None;
        Some(Lease {
            residents: self.clone(),
            resident: resident.clone(),
            load_duration,
        })
    }

    /// Unloads `resident` if no request holds it; says whether it is gone.
    fn unload_if_idle(&self, resident: &Arc<Resident>) -> bool {
        let mut state = resident.state.lock().expect("resident lock");
        if state.leases > 0 {
            return false;
        }
        state.unloaded = true;
        drop(state);
        let mut slot = self.slot.lock().expect("slot lock");
        if slot.as_ref().is_some_and(|r| Arc::ptr_eq(r, resident)) {
            *slot = None;
            *self.last_unloaded.lock().expect("unloaded lock") =
                Arc::downgrade(&resident.loaded.model);
            tracing::info!("unloaded {}", resident.key);
        }
        true
    }

    /// Unloads the model `requested` names once its requests end (`keep_alive: 0` with no
    /// prompt, Ollama's way to stop a model). Says whether that model was resident.
    pub fn expire(&self, requested: &str) -> bool {
        let Some(resident) = self.resident() else {
            return false;
        };
        if !resident.loaded.info.names.matches(requested) {
            return false;
        }
        resident.state.lock().expect("resident lock").keep_alive = KeepAlive::For(Duration::ZERO);
        self.unload_if_idle(&resident);
        true
    }

    /// Ends every request on the loaded model now, each with a final event carrying `message`.
    pub fn abort_all(&self, message: &str) {
        if let Some(resident) = self.resident() {
            resident.loaded.engine.abort_all(message);
        }
    }

    /// True while a model loads or another is unloaded to make room.
    pub fn is_loading(&self) -> bool {
        self.loading.try_lock().is_err()
    }

    /// The loaded model, for `/api/ps` and the stats route.
    pub fn running(&self) -> Option<Running> {
        let resident = self.resident()?;
        let state = resident.state.lock().expect("resident lock");
        let expires_at = match (state.leases, state.expires, state.keep_alive) {
            (_, _, KeepAlive::Forever) => None,
            (0, Some(at), _) => {
                Some(SystemTime::now() + at.saturating_duration_since(Instant::now()))
            }
            // In use: it expires keep_alive after its requests end.
            (_, _, KeepAlive::For(d)) => Some(SystemTime::now() + d),
        };
        Some(Running {
            loaded: resident.loaded.clone(),
            expires_at,
        })
    }

    /// Unloads the resident model if its keep_alive has run out; else says when it will.
    fn unload_if_expired(&self) -> Option<Instant> {
        let resident = self.resident()?;
        let expires = resident.state.lock().expect("resident lock").expires?;
        if expires > Instant::now() {
            return Some(expires);
        }
        self.unload_if_idle(&resident);
        None
    }

    /// The engine and weights of an unloaded model are freed when its engine thread ends; the
    /// next model waits for that, so that two never share the memory.
    async fn wait_for_release(&self) {
        let previous = self.last_unloaded.lock().expect("unloaded lock").clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while previous.strong_count() > 0 {
            if Instant::now() > deadline {
                tracing::warn!(
                    "the unloaded model is still held after 60 s; loading the next anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Unloads the resident model when its keep_alive runs out. Ends with the server.
async fn reap(residents: Weak<Residents>) {
    loop {
        let Some(strong) = residents.upgrade() else {
            return;
        };
        // Held apart from `strong`, so that waiting does not keep the server's state alive.
        let notify = strong.changed.clone();
        let changed = notify.notified();
        let expires = strong.unload_if_expired();
        drop(strong);
        // Without an expiry it looks now and then too, so that it sees the server end.
        let wake = expires.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}
