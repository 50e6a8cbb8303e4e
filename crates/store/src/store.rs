//! The Ollama store on disk, in Ollama's own layout, so that a store Ollama wrote is served as
//! it stands and one we write is one Ollama reads:
//! - `manifests/<host>/<namespace>/<model>/<tag>`: a Docker v2 manifest (JSON);
//! - `blobs/sha256-<hex>`: content-addressed files, shared by every manifest that lists them.
//!
//! Writes are atomic and durable: a blob or manifest is written beside its final name (under a
//! name of its own, so two writers never share one), synced, and renamed into place, so a
//! reader never sees half a file and a crash never leaves one. Downloads of one blob are one
//! at a time across processes (a lock file beside it), and a blob is trusted by its sha256, not
//! its size (`verify_blob`). Names match case-insensitively, as Ollama's do.

use crate::manifest::{self, Manifest};
use crate::name::{ModelName, NameError};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("model \"{0}\" not found, try pulling it first")]
    NotFound(String),
    #[error("model \"{0}\" has no model layer in its manifest")]
    NoModelLayer(String),
    #[error("model \"{name}\" has a {what} layer, which ferrollama does not apply; serving it without one would not be the same model")]
    UnsupportedLayer { name: String, what: &'static str },
    #[error("bad digest \"{0}\" (expected sha256:<64 hex digits>)")]
    BadDigest(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a manifest: {source}")]
    BadManifest {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One model in the store, as `ollama list` shows it.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    pub name: ModelName,
    pub manifest: Manifest,
    /// `sha256:<hex>` of the manifest file: `ollama list`'s ID is its first 12 digits.
    pub digest: String,
    pub modified: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Ollama's choice of root: `OLLAMA_MODELS`; else `~/.ollama/models`; else, where only
    /// it exists, the Linux service's `/usr/share/ollama/.ollama/models`.
    pub fn from_env() -> Self {
        if let Some(root) = std::env::var_os("OLLAMA_MODELS").filter(|r| !r.is_empty()) {
            return Self::at(root);
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let user = home.join(".ollama/models");
        let service = PathBuf::from("/usr/share/ollama/.ollama/models");
        if !user.exists() && service.exists() {
            return Self::at(service);
        }
        Self::at(user)
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `name`'s manifest is: the file whose path matches it ignoring case (Ollama
    /// serves `Mistral:Instruct` as `mistral:instruct`), else where it would be written.
    pub fn manifest_path(&self, name: &ModelName) -> PathBuf {
        let exact = self.root.join(name.manifest_path());
        if exact.exists() {
            return exact;
        }
        let mut found = self.root.clone();
        for part in name.manifest_path().iter() {
            let wanted = part.to_string_lossy().to_lowercase();
            let matching = std::fs::read_dir(&found).ok().and_then(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|n| n.to_string_lossy().to_lowercase() == wanted)
                    .min()
            });
            match matching {
                Some(actual) => found.push(actual),
                None => return exact,
            }
        }
        found
    }

    /// `blobs/sha256-<hex>` for a `sha256:<hex>` digest; anything else is refused, so a
    /// digest from a registry cannot name a path outside the store.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex =
            manifest::sha256_hex(digest).ok_or_else(|| StoreError::BadDigest(digest.into()))?;
        Ok(self.root.join("blobs").join(format!("sha256-{hex}")))
    }

    /// Where a download of `digest` collects its bytes until they check out. Ollama's own
    /// partial files are `sha256-<hex>-partial[-N]` (preallocated, written in parallel parts):
    /// ours are named so that neither is ever taken for the other.
    pub fn partial_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex =
            manifest::sha256_hex(digest).ok_or_else(|| StoreError::BadDigest(digest.into()))?;
        Ok(self
            .root
            .join("blobs")
            .join(format!(".sha256-{hex}.ferrollama-partial")))
    }

    /// Holds the one download of `digest`: a lock on a file beside the blob, in this process
    /// or another. A second caller waits (`on_wait` is called once when it has to). The lock
    /// file goes when the guard drops; a waiter that locked a file already gone tries again.
    pub async fn lock_blob(
        &self,
        digest: &str,
        mut on_wait: impl FnMut(),
    ) -> Result<BlobLock, StoreError> {
        let hex =
            manifest::sha256_hex(digest).ok_or_else(|| StoreError::BadDigest(digest.into()))?;
        let dir = self.root.join("blobs");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!(".sha256-{hex}.ferrollama-lock"));
        let mut waited = false;
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            match file.try_lock() {
                Ok(()) if same_file(&file, &path) => return Ok(BlobLock { path, _file: file }),
                Ok(()) => continue, // its holder removed it as we opened it: a new one
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !waited {
                        on_wait();
                        waited = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
    }

    /// Whether `digest`'s blob is there and its bytes hash to its name (reads all of it).
    pub async fn verify_blob(&self, digest: &str) -> Result<bool, StoreError> {
        let path = self.blob_path(digest)?;
        let want = manifest::sha256_hex(digest)
            .expect("checked by blob_path")
            .to_string();
        tokio::task::spawn_blocking(move || match file_sha256(&path) {
            Ok(got) => Ok(got == want),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        })
        .await
        .expect("hashing does not panic")
    }

    pub fn manifest(&self, name: &ModelName) -> Result<Manifest, StoreError> {
        let path = self.manifest_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadManifest { path, source })
    }

    /// The GGUF a name serves: its model layer's blob, which must be present.
    pub fn model_file(&self, name: &ModelName) -> Result<PathBuf, StoreError> {
        let manifest = self.manifest(name)?;
        for (media_type, what) in [
            (manifest::ADAPTER, "LoRA adapter"),
            (manifest::PROJECTOR, "vision projector"),
        ] {
            if manifest.layer(media_type).is_some() {
                return Err(StoreError::UnsupportedLayer {
                    name: name.to_string(),
                    what,
                });
            }
        }
        let layer = manifest
            .layer(manifest::MODEL)
            .ok_or_else(|| StoreError::NoModelLayer(name.to_string()))?;
        let path = self.blob_path(&layer.digest)?;
        if !path.is_file() {
            return Err(StoreError::NotFound(format!(
                "{name} (its blob {} is missing)",
                layer.digest
            )));
        }
        Ok(path)
    }

    /// Every model with a readable manifest, newest first (as `ollama list` orders them).
    pub fn list(&self) -> Result<Vec<StoreEntry>, StoreError> {
        let mut entries = Vec::new();
        let top = self.root.join("manifests");
        for host in read_dirs(&top)? {
            for namespace in read_dirs(&host)? {
                for model in read_dirs(&namespace)? {
                    for tag in read_files(&model)? {
                        let part = |p: &Path| p.file_name().unwrap().to_string_lossy().to_string();
                        let full = format!(
                            "{}/{}/{}:{}",
                            part(&host),
                            part(&namespace),
                            part(&model),
                            part(&tag)
                        );
                        // Files that are not ours (a stray `.DS_Store`, a bad name) are skipped.
                        let Ok(name) = ModelName::parse(&full) else {
                            continue;
                        };
                        let bytes = std::fs::read(&tag).map_err(io(&tag))?;
                        let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
                            tracing::warn!("skipping {}: not a manifest", tag.display());
                            continue;
                        };
                        let modified = std::fs::metadata(&tag)
                            .and_then(|m| m.modified())
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        entries.push(StoreEntry {
                            name,
                            manifest,
                            digest: format!("sha256:{:x}", Sha256::digest(&bytes)),
                            modified,
                        });
                    }
                }
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.modified));
        Ok(entries)
    }

    /// Writes `name`'s manifest atomically (what a pull does last, once every blob is in).
    pub fn write_manifest(&self, name: &ModelName, manifest: &Manifest) -> Result<(), StoreError> {
        let path = self.manifest_path(name);
        let bytes = serde_json::to_vec(manifest).expect("a manifest serializes");
        write_atomically(&path, &bytes)
    }

    /// Writes a small blob (a config) under its sha256; returns its `sha256:<hex>` digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        write_atomically(&self.blob_path(&digest)?, bytes)?;
        Ok(digest)
    }

    /// Makes `file`, whose sha256 the caller has checked is `digest`, the blob of that digest:
    /// a hard link when both are on one file system (no second copy of gigabytes), else a copy.
    /// Either lands beside the blob first and is renamed into place.
    pub fn link_blob(&self, digest: &str, file: &Path) -> Result<PathBuf, StoreError> {
        let path = self.blob_path(digest)?;
        // A link to a symlink (an HF snapshot entry) would be a dangling relative link here.
        let file = &std::fs::canonicalize(file).map_err(io(file))?;
        let size = std::fs::metadata(file).map_err(io(file))?.len();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
            return Ok(path);
        }
        let dir = path.parent().expect("blobs/ is a directory");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let temp = temp_beside(&path);
        if std::fs::hard_link(file, &temp).is_err() {
            std::fs::copy(file, &temp).map_err(io(&temp))?;
            std::fs::File::open(&temp)
                .and_then(|f| f.sync_all())
                .map_err(io(&temp))?;
        }
        std::fs::rename(&temp, &path).map_err(io(&path))?;
        sync_dir(dir);
        Ok(path)
    }

    /// `ollama cp`: a second name for the same blobs.
    pub fn copy(&self, from: &ModelName, to: &ModelName) -> Result<(), StoreError> {
        let manifest = self.manifest(from)?;
        self.write_manifest(to, &manifest)
    }

    /// `ollama rm`: drops the name, then every blob that no remaining manifest lists. A
    /// manifest that does not parse still keeps every blob its text names.
    pub fn remove(&self, name: &ModelName) -> Result<(), StoreError> {
        let manifest = self.manifest(name)?;
        let path = self.manifest_path(name);
        std::fs::remove_file(&path).map_err(io(&path))?;
        let still_used = self.digests_in_use()?;
        for layer in manifest.blobs() {
            if still_used.contains(&layer.digest) {
                continue;
            }
            let blob = self.blob_path(&layer.digest)?;
            match std::fs::remove_file(&blob) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&blob)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every `sha256:<hex>` that any manifest file mentions, parsed or not.
    fn digests_in_use(&self) -> Result<HashSet<String>, StoreError> {
        let mut used = HashSet::new();
        let mut dirs = vec![self.root.join("manifests")];
        while let Some(dir) = dirs.pop() {
            dirs.extend(read_dirs(&dir)?);
            for file in read_files(&dir)? {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                for (at, _) in text.match_indices("sha256:") {
                    let candidate = text[at..].chars().take(71).collect::<String>();
                    if manifest::sha256_hex(&candidate).is_some() {
                        used.insert(candidate);
                    }
                }
            }
        }
        Ok(used)
    }
}

/// A held download of one blob (see [`Store::lock_blob`]).
pub struct BlobLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for BlobLock {
    fn drop(&mut self) {
        // Removed while still locked: a waiter that then locks the old file sees it is gone.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `path` still names the file `file` has open.
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// The sha256 (hex) of a file's bytes.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(format!("{:x}", hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// A fresh name beside `path` for writing it: a leading dot (no valid name part starts with
/// one, so `list` never sees it), and the process and a counter (two writers never share one).
fn temp_beside(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = path.file_name().expect("a store path names a file");
    path.with_file_name(format!(
        ".{}.{}-{n}.tmp",
        file.to_string_lossy(),
        std::process::id()
    ))
}

/// Makes a rename in `dir` durable (best effort: not every file system syncs directories).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes beside `path`, syncs, then renames into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = path.parent().expect("a store path has a parent");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temp = temp_beside(path);
    let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(&temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(io(path))?;
    sync_dir(dir);
    Ok(())
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    entries(dir, true)
}

fn read_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    entries(dir, false)
}

fn entries(dir: &Path, dirs: bool) -> Result<Vec<PathBuf>, StoreError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() == dirs {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
