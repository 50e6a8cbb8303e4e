//! Which embedding models are loaded. They are small (all-MiniLM is 90 MB, nomic-embed-text
//! 270 MB) and often called between chats (RAG, codebase indexing), so they stay beside the
//! generating model instead of swapping it out, as Ollama keeps several models loaded. Each has
//! one worker thread that takes every queued request's inputs as one batch.

use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::model_info::ModelInfo;
use crate::resident::ModelLoader;
use ferrollama_model::Encoder;
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Inputs gathered from the queue for one run: enough to fill the encoder's batches.
const MAX_GATHERED_INPUTS: usize = 256;

/// A loaded encoder, with the thread that runs it.
pub struct ResidentEncoder {
    pub key: String,
    pub encoder: Arc<Encoder>,
    /// What the APIs say about it.
    pub info: ModelInfo,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// When it unloads; `None`: kept until the server stops.
    expires: Mutex<Option<Instant>>,
}

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

impl ResidentEncoder {
    /// The vectors of `inputs`, run with whatever other requests are queued.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .lock()
            .expect("jobs lock")
            .send(Job { inputs, reply })
            .map_err(|_| ApiError::internal("the embedding worker has stopped"))?;
        answer
            .await
            .map_err(|_| ApiError::internal("the embedding worker has stopped"))?
            .map_err(ApiError::internal)
    }

    fn ps_entry(&self) -> serde_json::Value {
        let expires = *self.expires.lock().expect("expires lock");
        // Kept until the server stops: Ollama shows the far future (now + 2^63 ns).
        let expires_at = match expires {
            Some(at) => SystemTime::now() + at.saturating_duration_since(Instant::now()),
            None => SystemTime::now() + Duration::from_nanos(i64::MAX as u64),
        };
        let name = &self.info.names.primary;
        serde_json::json!({
            "name": name, "model": name, "size": self.info.description.parameters * 4,
            "size_vram": 0, "digest": self.info.digest,
            "expires_at": crate::clock::rfc3339(expires_at), "details": self.info.details(),
        })
    }

    fn keep_for(&self, keep_alive: KeepAlive) {
        *self.expires.lock().expect("expires lock") = match keep_alive {
            KeepAlive::Forever => None,
            KeepAlive::For(d) => Some(Instant::now() + d),
        };
    }
}

/// Runs queued jobs until every sender is gone (the model unloaded and its requests done).
fn work(encoder: Arc<Encoder>, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        let mut gathered = batch[0].inputs.len();
        while gathered < MAX_GATHERED_INPUTS {
            match jobs.try_recv() {
                Ok(job) => {
                    gathered += job.inputs.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        // The inputs move into one list; each job keeps its count to take its vectors back.
        let counts: Vec<usize> = batch.iter().map(|j| j.inputs.len()).collect();
        let all: Vec<Vec<u32>> = batch
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.inputs))
            .collect();
        match encoder.embed(&all) {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for (job, count) in batch.into_iter().zip(counts) {
                    let mine = vectors.by_ref().take(count).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

pub struct Encoders {
    loader: Arc<dyn ModelLoader>,
    loaded: Mutex<HashMap<String, Arc<ResidentEncoder>>>,
    /// One load at a time: two requests for a model that is not loaded load it once.
    loading: tokio::sync::Mutex<()>,
}

/// A request's use of an encoder; it sets the model's keep_alive when the request ends.
pub struct EncoderLease {
    pub resident: Arc<ResidentEncoder>,
    pub load_duration: Duration,
    keep_alive: KeepAlive,
}

impl Drop for EncoderLease {
    fn drop(&mut self) {
        self.resident.keep_for(self.keep_alive);
    }
}

impl Encoders {
    /// Starts with none loaded, and the reaper that unloads expired ones.
    pub fn start(loader: Arc<dyn ModelLoader>) -> Arc<Self> {
        let encoders = Arc::new(Self {
            loader,
            loaded: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(reap(Arc::downgrade(&encoders)));
        encoders
    }

    /// The embedding model `key` names, loading it if need be.
    pub async fn acquire(
        &self,
        key: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<EncoderLease, ApiError> {
        // Unsaid, the loader's default: the model given at start-up stays loaded.
        let keep_alive = keep_alive.unwrap_or_else(|| self.loader.default_keep_alive(key));
        let lease = |resident: Arc<ResidentEncoder>, load_duration| {
            *resident.expires.lock().expect("expires lock") = None;
            EncoderLease {
                resident,
                load_duration,
                keep_alive,
            }
        };
        if let Some(resident) = self.get(key) {
            return Ok(lease(resident, Duration::ZERO));
        }
        let _loading = self.loading.lock().await;
        if let Some(resident) = self.get(key) {
            return Ok(lease(resident, Duration::ZERO));
        }
        let started = Instant::now();
        let loader = self.loader.clone();
        let load_key = key.to_string();
        let (encoder, info) = tokio::task::spawn_blocking(move || loader.load_encoder(&load_key))
            .await
            .map_err(|e| ApiError::internal(format!("loading {key} failed: {e}")))?
            .map_err(|e| ApiError::internal(format!("cannot load {key}: {e}")))?;
        let encoder = Arc::new(encoder);
        let (jobs, queue) = mpsc::channel();
        let runner = encoder.clone();
        std::thread::Builder::new()
            .name(format!("embed {key}"))
            .spawn(move || work(runner, queue))
            .map_err(|e| ApiError::internal(format!("cannot start the embedding worker: {e}")))?;
        let resident = Arc::new(ResidentEncoder {
            key: key.to_string(),
            encoder,
            info,
            jobs: Mutex::new(jobs),
            expires: Mutex::new(None),
        });
        tracing::info!(
            "loaded embedding model {key} in {:.1}s: {} dimensions, {} pooling{}, at most {} tokens",
            started.elapsed().as_secs_f64(),
            resident.encoder.dimensions(),
            resident.encoder.pooling().name(),
            if resident.encoder.normalizes() { ", normalized" } else { "" },
            resident.encoder.max_tokens(),
        );
        self.loaded
            .lock()
            .expect("loaded lock")
            .insert(key.to_string(), resident.clone());
        Ok(lease(resident, started.elapsed()))
    }

    fn get(&self, key: &str) -> Option<Arc<ResidentEncoder>> {
        self.loaded.lock().expect("loaded lock").get(key).cloned()
    }

    /// Those loaded now, as `/api/ps` lists models.
    pub fn ps_entries(&self) -> Vec<serde_json::Value> {
        let loaded = self.loaded.lock().expect("loaded lock");
        let mut entries: Vec<_> = loaded.values().map(|r| r.ps_entry()).collect();
        entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        entries
    }

    /// What the APIs say about the loaded model `requested` names.
    pub fn info(&self, requested: &str) -> Option<ModelInfo> {
        let loaded = self.loaded.lock().expect("loaded lock");
        let mut infos = loaded.values().map(|r| &r.info);
        infos.find(|info| info.names.matches(requested)).cloned()
    }

    /// Unloads those whose keep_alive has run out (requests in flight keep theirs until done).
    fn unload_expired(&self) {
        let now = Instant::now();
        self.loaded.lock().expect("loaded lock").retain(|key, r| {
            let in_use = Arc::strong_count(r) > 1;
            let expired = r
                .expires
                .lock()
                .expect("expires lock")
                .is_some_and(|at| at <= now);
            if expired && !in_use {
                tracing::info!("unloaded embedding model {key}");
            }
            in_use || !expired
        });
    }
}

async fn reap(encoders: Weak<Encoders>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(strong) = encoders.upgrade() else {
            return;
        };
        strong.unload_expired();
    }
}
