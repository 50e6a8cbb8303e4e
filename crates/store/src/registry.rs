//! Pulls from an Ollama registry (`/v2/<namespace>/<model>/manifests/<tag>` and
//! `/v2/<namespace>/<model>/blobs/<digest>`, the Docker distribution API) into the store.
//!
//! What a pull promises:
//! - a pinned model layer (`--model-sha256`) is checked against the manifest before anything
//!   is fetched or written;
//! - one download per blob, across tasks and processes (a lock file beside it): a second pull
//!   of the same blob waits for the first, then finds it in place;
//! - bytes go to a partial file (named so that Ollama's own `-partial` files are never taken
//!   for ours) and become the blob only when the file's sha256, read back from disk, matches;
//!   a mismatch deletes them;
//! - a transfer that was cut resumes with an HTTP Range request from where it stopped, and one
//!   that stalls (no byte for `stall_timeout`) fails, saying so;
//! - a blob already in the store (a layer two models share) is hashed, not fetched again;
//! - the manifest is written last, so a name never points at missing blobs.

use crate::manifest::{Layer, Manifest, MANIFEST_MEDIA_TYPE};
use crate::name::ModelName;
use crate::store::{Store, StoreError};
use futures_util::StreamExt;
use reqwest::{header, StatusCode};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Overrides every registry's base URL (`http://127.0.0.1:5000`): for tests and mirrors.
pub const REGISTRY_URL_ENV: &str = "FERROLLAMA_REGISTRY_URL";

/// Why a pull failed, from the Ollama registry or the Hugging Face hub alike.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot reach {url}: {source} (is the network up?)")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the registry has no model \"{0}\"")]
    NotFound(String),
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: {source}")]
    Transfer { url: String, source: reqwest::Error },
    #[error("{url}: the manifest is not valid JSON: {source}")]
    BadManifest {
        url: String,
        source: serde_json::Error,
    },
    #[error("blob {digest}: the transfer ended at {got} of {size} bytes; pull again to resume")]
    Incomplete { digest: String, got: u64, size: u64 },
    #[error("blob {digest}: its bytes hash to sha256:{got}; the download was discarded")]
    DigestMismatch { digest: String, got: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The Hugging Face hub refused or failed a request.
    #[error("{url}: {message}")]
    Hub { url: String, message: String },
    /// A Hugging Face GGUF repo without the requested quant.
    #[error("{name}: the repo has no GGUF file for \"{quant}\"; it has {available}")]
    UnknownQuant {
        name: String,
        quant: String,
        available: String,
    },
    #[error("{url}: no bytes arrived for {seconds} s; pull again to resume")]
    Stalled { url: String, seconds: u64 },
    #[error(
        "{name}'s model layer is sha256:{got}, not the pinned sha256:{want}; nothing was written"
    )]
    PinMismatch {
        name: String,
        got: String,
        want: String,
    },
}

/// What a pull reports as it goes, in the order of Ollama's `/api/pull` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// "pulling manifest", "verifying sha256 digest", "writing manifest", "success".
    Status(String),
    /// Bytes of one blob so far (`completed` includes what a resumed transfer already had).
    Blob {
        digest: String,
        total: u64,
        completed: u64,
    },
}

/// How long a transfer may bring no byte before it is given up (a rerun resumes it);
/// `FERROLLAMA_STALL_TIMEOUT` (seconds) overrides it.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
pub const STALL_TIMEOUT_ENV: &str = "FERROLLAMA_STALL_TIMEOUT";

#[derive(Debug, Clone)]
pub struct Registry {
    client: reqwest::Client,
    base_override: Option<String>,
    stall_timeout: Duration,
}

impl Registry {
    /// HTTPS to the name's host, unless `FERROLLAMA_REGISTRY_URL` says otherwise.
    pub fn from_env() -> Self {
        let registry = Self::new(
            std::env::var(REGISTRY_URL_ENV)
                .ok()
                .filter(|u| !u.is_empty()),
        );
        match std::env::var(STALL_TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(seconds) if seconds > 0 => {
                registry.with_stall_timeout(Duration::from_secs(seconds))
            }
            _ => registry,
        }
    }

    pub fn new(base_override: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            // No network must fail fast, never hang; a slow body is fine.
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("ferrollama/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client");
        Self {
            client,
            base_override: base_override.map(|u| u.trim_end_matches('/').to_string()),
            stall_timeout: STALL_TIMEOUT,
        }
    }

    /// Another stall timeout (tests).
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    fn base(&self, name: &ModelName) -> String {
        self.base_override
            .clone()
            .unwrap_or_else(|| format!("https://{}", name.host))
    }

    /// Fetches `name` into `store`: manifest, then each blob not already there, then the
    /// manifest is written. With `pin` (64 hex digits), a model layer of another digest fails
    /// the pull before anything is fetched or written. Reports progress through `report`.
    pub async fn pull(
        &self,
        store: &Store,
        name: &ModelName,
        pin: Option<&str>,
        report: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<Manifest, PullError> {
        let repo = format!("{}/v2/{}/{}", self.base(name), name.namespace, name.model);
        report(PullEvent::Status("pulling manifest".into()));
        let url = format!("{repo}/manifests/{}", name.tag);
        let response = self
            .get(&url, |r| r.header(header::ACCEPT, MANIFEST_MEDIA_TYPE))
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(PullError::NotFound(name.to_string())),
            status => return Err(PullError::Status { url, status }),
        }
        let body = self
            .unstalled(&url, response.bytes())
            .await?
            .map_err(|source| PullError::Transfer {
                url: url.clone(),
                source,
            })?;
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|source| PullError::BadManifest {
                url: url.clone(),
                source,
            })?;
        if let Some(want) = pin {
            let got = manifest
                .layer(crate::manifest::MODEL)
                .and_then(|l| crate::manifest::sha256_hex(&l.digest))
                .unwrap_or("(no model layer)");
            if got != want {
                return Err(PullError::PinMismatch {
                    name: name.to_string(),
                    got: got.to_string(),
                    want: want.to_string(),
                });
            }
        }
        for layer in manifest.blobs() {
            self.fetch_blob(store, &repo, layer, report).await?;
        }
        report(PullEvent::Status("verifying sha256 digest".into()));
        report(PullEvent::Status("writing manifest".into()));
        store.write_manifest(name, &manifest)?;
        report(PullEvent::Status("success".into()));
        Ok(manifest)
    }

    async fn get(
        &self,
        url: &str,
        with: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PullError> {
        self.unstalled(url, with(self.client.get(url)).send())
            .await?
            .map_err(|source| PullError::Unreachable {
                url: url.to_string(),
                source,
            })
    }

    /// `step`, unless no byte arrives for the stall timeout.
    async fn unstalled<T>(
        &self,
        url: &str,
        step: impl std::future::Future<Output = T>,
    ) -> Result<T, PullError> {
        tokio::time::timeout(self.stall_timeout, step)
            .await
            .map_err(|_| PullError::Stalled {
                url: url.to_string(),
                seconds: self.stall_timeout.as_secs(),
            })
    }

    async fn fetch_blob(
        &self,
        store: &Store,
        repo: &str,
        layer: &Layer,
        report: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<(), PullError> {
        let path = store.blob_path(&layer.digest)?;
        let progress = |completed| PullEvent::Blob {
            digest: layer.digest.clone(),
            total: layer.size,
            completed,
        };
        // One download of this blob at a time, whoever else is pulling it.
        let _lock = store
            .lock_blob(&layer.digest, || {
                report(PullEvent::Status(format!(
                    "waiting for another pull of {}",
                    layer.digest
                )))
            })
            .await?;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == layer.size) {
            // Trusted only once its bytes hash to its name; a damaged one is fetched again.
            if store.verify_blob(&layer.digest).await? {
                report(progress(layer.size));
                return Ok(());
            }
            tracing::warn!(
                "{}: its bytes do not hash to its name; fetching it again",
                path.display()
            );
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        let partial = store.partial_path(&layer.digest)?;
        // Whatever an earlier, cut transfer left is continued.
        let mut have = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if have > layer.size {
            have = 0;
        }
        let url = format!("{repo}/blobs/{}", layer.digest);
        if have < layer.size {
            let response = self
                .get(&url, |r| {
                    if have > 0 {
                        r.header(header::RANGE, format!("bytes={have}-"))
                    } else {
                        r
                    }
                })
                .await?;
            match response.status() {
                StatusCode::PARTIAL_CONTENT if have > 0 => {}
                // A server that ignores Range sends it all: start over.
                StatusCode::OK => have = 0,
                status => return Err(PullError::Status { url, status }),
            }
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&partial)
                .await
                .map_err(io(&partial))?;
            file.set_len(have).await.map_err(io(&partial))?;
            file.seek(std::io::SeekFrom::Start(have))
                .await
                .map_err(io(&partial))?;
            report(progress(have));
            let mut body = response.bytes_stream();
            loop {
                let chunk = match self.unstalled(&url, body.next()).await {
                    Ok(Some(Ok(chunk))) => chunk,
                    Ok(None) => break,
                    failed => {
                        // What arrived stays for the next pull to resume from.
                        file.flush().await.map_err(io(&partial))?;
                        return Err(match failed {
                            Ok(Some(Err(source))) => PullError::Transfer { url, source },
                            Err(stalled) => stalled,
                            Ok(_) => unreachable!("handled above"),
                        });
                    }
                };
                file.write_all(&chunk).await.map_err(io(&partial))?;
                have += chunk.len() as u64;
                report(progress(have));
            }
            file.flush().await.map_err(io(&partial))?;
            file.sync_all().await.map_err(io(&partial))?;
        }
        if have != layer.size {
            return Err(PullError::Incomplete {
                digest: layer.digest.clone(),
                got: have,
                size: layer.size,
            });
        }
        // The file as it is on disk, not the stream as it passed: what gets renamed is what
        // was checked.
        let (hasher, _) = hash_file(&partial).await?;
        let got = format!("{:x}", hasher.finalize());
        if Some(got.as_str()) != crate::manifest::sha256_hex(&layer.digest) {
            let _ = std::fs::remove_file(&partial);
            return Err(PullError::DigestMismatch {
                digest: layer.digest.clone(),
                got,
            });
        }
        std::fs::rename(&partial, &path).map_err(io(&path))?;
        crate::store::sync_dir(path.parent().expect("blobs/ is a directory"));
        Ok(())
    }
}

/// The sha256 state and length of what `path` holds (nothing, if it does not exist).
pub(crate) async fn hash_file(path: &Path) -> Result<(Sha256, u64), PullError> {
    let mut hasher = Sha256::new();
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((hasher, 0)),
        Err(e) => return Err(io(path)(e)),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(io(path))?;
        if n == 0 {
            return Ok((hasher, len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}
