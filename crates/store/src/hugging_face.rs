//! Pulls from the Hugging Face hub through `hf-hub`, honouring `HF_HOME` (the cache),
//! `HF_ENDPOINT` (a mirror, or a test hub) and `HF_TOKEN` (gated and private repos):
//! - a GGUF repo: the one file the tag's quant names, checked against its LFS sha256, becomes a
//!   blob of the Ollama store with a manifest (`hf.co/org/repo:Q4_0`), so every store command
//!   treats it as it treats a registry pull;
//! - a safetensors repo: config, tokenizer files and weights stay in the HF cache, where
//!   transformers looks for them too; [`HuggingFace::cached_snapshot`] finds them offline.

use crate::hub_file::{check, fetch, Sibling};
use crate::manifest::{Layer, Manifest, MANIFEST_MEDIA_TYPE, MODEL};
use crate::name::{ModelName, DEFAULT_TAG};
use crate::pulled::Pulled;
use crate::quant::{self, GgufFile, NoChoice};
use crate::registry::{PullError, PullEvent};
use crate::store::Store;
use hf_hub::api::tokio::{Api, ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Reaching the hub and listing a repo: no network fails in this time, never hangs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const CONFIG: &str = "config.json";
const INDEX: &str = "model.safetensors.index.json";
/// Fetched beside a safetensors model's weights when the repo has them.
const EXTRAS: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// `hf.co/org/repo[:tag]` or `huggingface.co/org/repo[:tag]`.
pub fn is_hugging_face(name: &ModelName) -> bool {
    ["hf.co", "huggingface.co"]
        .iter()
        .any(|host| name.host.eq_ignore_ascii_case(host))
}

#[derive(Debug, Clone)]
pub struct HuggingFace {
    endpoint: String,
    cache: Cache,
    token: Option<String>,
    /// For the repo listing: ours, because it must have a connect timeout.
    client: reqwest::Client,
}

/// A repo's file list at one commit (`/api/models/{repo}/revision/main?blobs=true`).
#[derive(Debug, Deserialize)]
struct Listing {
    sha: String,
    siblings: Vec<Sibling>,
}

impl Listing {
    /// The repository's GGUF files, as quantizations to choose from.
    fn ggufs(&self) -> Vec<GgufFile> {
        self.siblings
            .iter()
            .filter_map(|s| GgufFile::from_repo_path(&s.rfilename))
            .collect()
    }
}

impl HuggingFace {
    /// The cache from `HF_HOME` (else `~/.cache/huggingface`), the hub from `HF_ENDPOINT`, the
    /// token from `HF_TOKEN`, else the cache's `token` file (what `huggingface-cli login` writes).
    pub fn from_env() -> Self {
        let cache = Cache::from_env();
        let env = |key| {
            std::env::var(key)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        let token = env("HF_TOKEN").or_else(|| cache.token());
        let endpoint = env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        Self::with_cache(endpoint, cache, token)
    }

    /// `hf_home` is what `HF_HOME` would name: the cache is its `hub/`.
    pub fn new(endpoint: impl Into<String>, hf_home: &Path, token: Option<String>) -> Self {
        Self::with_cache(endpoint.into(), Cache::new(hf_home.join("hub")), token)
    }

    fn with_cache(endpoint: String, cache: Cache, token: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ferrollama/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client");
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache,
            token,
            client,
        }
    }

    fn api(&self) -> Result<Api, PullError> {
        ApiBuilder::from_cache(self.cache.clone())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_user_agent("ferrollama", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| PullError::Hub {
                url: self.endpoint.clone(),
                message: e.to_string(),
            })
    }

    /// `hub/models--org--repo`, hf-hub's (and huggingface_hub's) layout.
    fn repo_dir(&self, repo_id: &str) -> PathBuf {
        let folder = Repo::model(repo_id.to_string()).folder_name();
        self.cache.path().join(folder)
    }

    fn snapshot_dir(&self, repo_id: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo_id).join("snapshots").join(commit)
    }

    /// The cached snapshot of a safetensors repo (`hf.co/org/repo`), offline: the one
    /// `refs/main` names, when it has `config.json` and its weights (every shard the index
    /// lists, else at least one `*.safetensors`).
    pub fn cached_snapshot(&self, name: &ModelName) -> Option<PathBuf> {
        if !is_hugging_face(name) || name.tag != DEFAULT_TAG {
            return None;
        }
        let repo = self.cache.model(repo_id(name));
        let dir = repo.get(CONFIG)?.parent()?.to_path_buf();
        let complete = match std::fs::read(dir.join(INDEX)) {
            Ok(index) => shards(&index)
                .is_some_and(|s| !s.is_empty() && s.iter().all(|f| dir.join(f).is_file())),
            Err(_) => std::fs::read_dir(&dir).ok()?.flatten().any(|e| {
                let path = e.path();
                path.extension().is_some_and(|x| x == "safetensors") && path.is_file()
            }),
        };
        complete.then_some(dir)
    }

    /// Fetches `name` (`hf.co/org/repo[:quant]`): a GGUF repo into `store`, a safetensors
    /// repo into the HF cache. With `pin`, a GGUF of another sha256 (or a safetensors repo)
    /// fails before anything enters the store. Reports progress as a registry pull does.
    pub async fn pull(
        &self,
        store: &Store,
        name: &ModelName,
        pin: Option<&str>,
        report: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<Pulled, PullError> {
        let id = repo_id(name);
        report(PullEvent::Status("pulling manifest".into()));
        let listing = self.list(&id, name).await?;
        // Pinned to the listed commit: every file of one pull comes from one snapshot.
        let pinned = Repo::with_revision(id.clone(), RepoType::Model, listing.sha.clone());
        let repo = self.api()?.repo(pinned);
        let pulled = if listing.ggufs().is_empty() {
            if let Some(want) = pin {
                return Err(PullError::PinMismatch {
                    name: name.to_string(),
                    got: "(a safetensors repo, no GGUF model layer)".into(),
                    want: want.into(),
                });
            }
            self.pull_safetensors(name, &repo, &listing, report).await
        } else {
            self.pull_gguf(store, name, &repo, &listing, pin, report)
                .await
        };
        // hf-hub writes a ref named by the pinned commit itself: clutter no tool reads.
        let refs = self.repo_dir(&id).join("refs");
        let _ = std::fs::remove_file(refs.join(&listing.sha));
        let pulled = pulled?;
        // `refs/main` last: the cache names a snapshot only once it is complete.
        self.cache
            .model(id.clone())
            .create_ref(&listing.sha)
            .map_err(io(&refs))?;
        report(PullEvent::Status("success".into()));
        Ok(pulled)
    }

    async fn list(&self, id: &str, name: &ModelName) -> Result<Listing, PullError> {
        let url = format!("{}/api/models/{id}/revision/main?blobs=true", self.endpoint);
        let mut request = self.client.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let no_answer = || PullError::Hub {
            url: url.clone(),
            message: format!(
                "no answer in {} s (is the network up?)",
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        let response = tokio::time::timeout(CONNECT_TIMEOUT, request.send())
            .await
            .map_err(|_| no_answer())?
            .map_err(|source| PullError::Unreachable {
                url: url.clone(),
                source,
            })?;
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return Err(PullError::NotFound(name.to_string())),
            // The hub answers 401 for a repo that does not exist, to hide private ones.
            status @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => {
                return Err(PullError::Hub {
                    url,
                    message: format!(
                        "answered {status}: the repo does not exist, or it is private or gated \
                         (set HF_TOKEN to a token that may read it)"
                    ),
                })
            }
            status => return Err(PullError::Status { url, status }),
        }
        let body = tokio::time::timeout(CONNECT_TIMEOUT, response.bytes())
            .await
            .map_err(|_| no_answer())?
            .map_err(|source| PullError::Transfer {
                url: url.clone(),
                source,
            })?;
        let mut listing: Listing = serde_json::from_slice(&body).map_err(|e| PullError::Hub {
            url: url.clone(),
            message: format!("not a repo listing: {e}"),
        })?;
        // The commit names a directory in the cache: it must be one (40 hex digits).
        if !(listing.sha.len() == 40 && listing.sha.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(PullError::Hub {
                url,
                message: format!(
                    "the listing's commit \"{}\" is not a commit id",
                    listing.sha
                ),
            });
        }
        // File names become paths in the cache: none may climb out of the snapshot.
        listing.siblings.retain(|s| is_plain_relative(&s.rfilename));
        Ok(listing)
    }

    async fn pull_gguf(
        &self,
        store: &Store,
        name: &ModelName,
        repo: &ApiRepo,
        listing: &Listing,
        pin: Option<&str>,
        report: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<Pulled, PullError> {
        let ggufs = listing.ggufs();
        let chosen = quant::choose(&ggufs, &name.tag).map_err(|no| match no {
            NoChoice::Missing(quants) => PullError::UnknownQuant {
                name: name.to_string(),
                quant: name.tag.clone(),
                available: quants.join(", "),
            },
            NoChoice::Split(files) => PullError::Hub {
                url: repo.url(&files[0]),
                message: format!(
                    "\"{}\" is a GGUF split into {} files ({}); only single-file GGUFs are served",
                    name.tag,
                    files.len(),
                    files.join(", ")
                ),
            },
        })?;
        let file = listing
            .siblings
            .iter()
            .find(|s| s.rfilename == chosen.path)
            .expect("chosen among the listing's files");
        let pin_mismatch = |got: &str| PullError::PinMismatch {
            name: name.to_string(),
            got: got.to_string(),
            want: pin.unwrap_or_default().to_string(),
        };
        if let (Some(want), Some(hex)) = (pin, file.sha256()) {
            if want != hex {
                return Err(pin_mismatch(hex));
            }
        }
        // Already in the store (a re-pull, or another tag of the same file), and its bytes
        // still hash to its name: nothing to fetch.
        let mut stored = None;
        if let Some(hex) = file.sha256() {
            let digest = format!("sha256:{hex}");
            let size = store
                .blob_path(&digest)
                .ok()
                .and_then(|blob| std::fs::metadata(blob).ok())
                .map(|m| m.len());
            if let Some(size) = size.filter(|&size| file.size.is_none_or(|s| s == size)) {
                if store.verify_blob(&digest).await? {
                    stored = Some((hex.to_string(), size));
                }
            }
        }
        let (hex, size) = match stored {
            Some((hex, size)) => {
                report(PullEvent::Blob {
                    digest: file.progress_key(),
                    total: size,
                    completed: size,
                });
                (hex, size)
            }
            None => {
                let snapshot = self.snapshot_dir(&repo_id(name), &listing.sha);
                let (path, checked) = fetch(repo, &snapshot, file, report).await?;
                report(PullEvent::Status("verifying sha256 digest".into()));
                // A file the cache already had is checked now, before it enters the store.
                let hex = match checked {
                    Some(hex) => hex,
                    None => check(&path, file.sha256(), &repo.url(&file.rfilename)).await?,
                };
                if pin.is_some_and(|want| want != hex) {
                    return Err(pin_mismatch(&hex));
                }
                let blob = store.link_blob(&format!("sha256:{hex}"), &path)?;
                let size = std::fs::metadata(&blob).map_err(io(&blob))?.len();
                (hex, size)
            }
        };
        let model = Layer {
            media_type: MODEL.into(),
            digest: format!("sha256:{hex}"),
            size,
        };
        let config = serde_json::to_vec(&serde_json::json!({
            "model_format": "gguf",
            "file_type": chosen.quant.as_deref().unwrap_or("unknown"),
            "rootfs": {"type": "layers", "diff_ids": [model.digest]},
        }))
        .expect("JSON");
        let config = Layer {
            media_type: "application/vnd.docker.container.image.v1+json".into(),
            digest: store.write_blob(&config)?,
            size: config.len() as u64,
        };
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            config,
            layers: vec![model],
        };
        report(PullEvent::Status("writing manifest".into()));
        store.write_manifest(name, &manifest)?;
        Ok(Pulled::Manifest(manifest))
    }

    async fn pull_safetensors(
        &self,
        name: &ModelName,
        repo: &ApiRepo,
        listing: &Listing,
        report: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<Pulled, PullError> {
        let listing_url = format!("{}/{}", self.endpoint, repo_id(name));
        let fail = |message: String| PullError::Hub {
            url: listing_url.clone(),
            message,
        };
        if name.tag != DEFAULT_TAG {
            return Err(fail(format!(
                "the repo has safetensors weights, no GGUF quants: pull it without \":{}\"",
                name.tag
            )));
        }
        let find = |f: &str| listing.siblings.iter().find(|s| s.rfilename == f);
        let config = find(CONFIG).ok_or_else(|| {
            fail("the repo has no GGUF file and no config.json: nothing here can be served".into())
        })?;
        let snapshot = self.snapshot_dir(&repo_id(name), &listing.sha);
        let mut files: Vec<&Sibling> = vec![config];
        files.extend(EXTRAS.iter().filter_map(|f| find(f)));
        // With an index, exactly the shards it lists: Mistral's repos also carry a
        // `consolidated.safetensors` of the same weights, which the loader would map as well.
        let weights: Vec<&Sibling> = match find(INDEX) {
            Some(index) => {
                let (path, _) = fetch(repo, &snapshot, index, report).await?;
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let shards =
                    shards(&bytes).ok_or_else(|| fail(format!("{INDEX} has no weight_map")))?;
                shards
                    .iter()
                    .map(|s| {
                        find(s).ok_or_else(|| fail(format!("{INDEX} lists {s}, not in the repo")))
                    })
                    .collect::<Result<_, _>>()?
            }
            None => listing
                .siblings
                .iter()
                .filter(|s| s.rfilename.ends_with(".safetensors") && !s.rfilename.contains('/'))
                .collect(),
        };
        if weights.is_empty() {
            return Err(fail(
                "the repo has neither GGUF nor safetensors weights".into(),
            ));
        }
        files.extend(weights);
        let mut dir = None;
        for file in files {
            let (path, _) = fetch(repo, &snapshot, file, report).await?;
            dir.get_or_insert_with(|| path.parent().expect("a snapshot file").to_path_buf());
        }
        report(PullEvent::Status("verifying sha256 digest".into()));
        Ok(Pulled::Snapshot(dir.expect("config.json was fetched")))
    }
}

fn repo_id(name: &ModelName) -> String {
    format!("{}/{}", name.namespace, name.model)
}

/// The shard files a `model.safetensors.index.json` maps its weights to, each once.
fn shards(index: &[u8]) -> Option<Vec<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_slice(index).ok()?;
    let mut files: Vec<String> = index.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    files.iter().all(|f| is_plain_relative(f)).then_some(files)
}

/// `a/b.gguf`, never `/a`, `../a` or `a/./b`.
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}
