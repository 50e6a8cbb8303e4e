//! One file of a Hugging Face repo into the HF cache through hf-hub: its progress reported as
//! pull events, a transfer that stalls given up (hf-hub's client has no timeouts), and the
//! hub's sha256 checked, so a file that does not match it is deleted, never used.

use crate::registry::{hash_file, PullError, PullEvent};
use hf_hub::api::tokio::{ApiError, ApiRepo, Progress};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// hf-hub's client has no timeouts: a transfer that brings no byte for this long is given up.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A file as the repo listing (`?blobs=true`) describes it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Clone, Deserialize)]
struct Lfs {
    sha256: String,
}

impl Sibling {
    /// The sha256 the hub gives for an LFS file (weights always are).
    pub fn sha256(&self) -> Option<&str> {
        self.lfs
            .as_ref()
            .map(|l| l.sha256.as_str())
            .filter(|h| is_sha256(h))
    }

    /// What progress events name the file by: its digest, as for registry blobs, when known.
    pub fn progress_key(&self) -> String {
        match self.sha256() {
            Some(hex) => format!("sha256:{hex}"),
            None => self.rfilename.clone(),
        }
    }
}

/// One repo file into the HF cache, unless its snapshot has it already. A download is
/// checked against the hub's sha256 when there is one; returns the file's snapshot path
/// and the digest checked.
pub(crate) async fn fetch(
    repo: &ApiRepo,
    snapshot: &Path,
    file: &Sibling,
    report: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<(PathBuf, Option<String>), PullError> {
    let key = file.progress_key();
    let cached = snapshot.join(&file.rfilename);
    if let Ok(meta) = std::fs::metadata(&cached) {
        let size = meta.len();
        report(PullEvent::Blob {
            digest: key,
            total: size,
            completed: size,
        });
        return Ok((cached, None));
    }
    let url = repo.url(&file.rfilename);
    let (updates, mut receiver) = mpsc::unbounded_channel();
    let tally = Tally {
        done: Arc::new(AtomicU64::new(0)),
        updates,
    };
    let mut total = file.size.unwrap_or(0);
    report(PullEvent::Blob {
        digest: key.clone(),
        total,
        completed: 0,
    });
    let download = repo.download_with_progress(&file.rfilename, tally);
    tokio::pin!(download);
    let path = loop {
        tokio::select! {
            result = &mut download => break result.map_err(|e| hub_error(&url, e))?,
            Some(update) = receiver.recv() => match update {
                Update::Size(size) => total = size,
                Update::Done(done) => report(PullEvent::Blob {
                    digest: key.clone(),
                    total,
                    completed: done.min(total),
                }),
            },
            () = tokio::time::sleep(STALL_TIMEOUT) => {
                return Err(PullError::Stalled { url, seconds: STALL_TIMEOUT.as_secs() })
            }
        }
    };
    let size = std::fs::metadata(&path).map_err(io(&path))?.len();
    report(PullEvent::Blob {
        digest: key,
        total: size,
        completed: size,
    });
    // The hub's sha256: the listing's LFS digest, else the etag hf-hub named the blob by.
    let etag = std::fs::read_link(&path)
        .ok()
        .and_then(|target| Some(target.file_name()?.to_string_lossy().into_owned()));
    let expected = file
        .sha256()
        .map(str::to_string)
        .or(etag.filter(|e| is_sha256(e)));
    let checked = match expected {
        Some(hex) => Some(check(&path, Some(&hex), &url).await?),
        None => None,
    };
    Ok((path, checked))
}

/// Hashes a cached file; when it does not match `expected`, deletes it (blob and snapshot
/// entry both, so no later pull or load takes it) and fails. Returns the hex digest.
pub(crate) async fn check(
    path: &Path,
    expected: Option<&str>,
    url: &str,
) -> Result<String, PullError> {
    let (hasher, _) = hash_file(path).await?;
    let got = format!("{:x}", sha2::Digest::finalize(hasher));
    match expected {
        Some(want) if want != got => {
            if let Ok(blob) = std::fs::canonicalize(path) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(path);
            Err(PullError::DigestMismatch {
                digest: format!("{url} (sha256:{want})"),
                got,
            })
        }
        _ => Ok(got),
    }
}

enum Update {
    Size(u64),
    Done(u64),
}

/// hf-hub's progress hook: its chunks download on tasks of their own, so the count is shared
/// and each change is sent to the pull, which reports it.
#[derive(Clone)]
struct Tally {
    done: Arc<AtomicU64>,
    updates: mpsc::UnboundedSender<Update>,
}

impl Progress for Tally {
    async fn init(&mut self, size: usize, _filename: &str) {
        let _ = self.updates.send(Update::Size(size as u64));
    }

    async fn update(&mut self, bytes: usize) {
        let done = self.done.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        let _ = self.updates.send(Update::Done(done));
    }

    async fn finish(&mut self) {}
}

fn hub_error(url: &str, e: ApiError) -> PullError {
    let url = url.to_string();
    match e {
        ApiError::RequestError(source) if source.is_connect() || source.is_timeout() => {
            PullError::Unreachable { url, source }
        }
        ApiError::RequestError(source) => match source.status() {
            Some(status) => PullError::Status { url, status },
            None => PullError::Transfer { url, source },
        },
        e => PullError::Hub {
            url,
            message: e.to_string(),
        },
    }
}

fn is_sha256(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}
