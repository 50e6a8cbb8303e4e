//! Pulls from a Hugging Face hub started by the test, speaking what hf-hub asks of the real
//! one: the repo listing (`/api/models/{repo}/revision/main?blobs=true`), and
//! `/{repo}/resolve/{commit}/{file}` with HTTP Range, `x-repo-commit` and `etag`; LFS files
//! are redirected to a CDN on another host with `x-linked-etag` (their sha256), as the hub does.
//! The hub counts the file bytes it serves, can corrupt one file and can require a token.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ferrollama_store::{HuggingFace, ModelName, PullError, PullEvent, Pulled, Puller, Store};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct HubFile {
    bytes: Vec<u8>,
    /// Weights are LFS files: listed with their sha256, served through the CDN.
    lfs: bool,
}

/// "org/repo" → its files, by name.
type Repos = HashMap<String, Vec<(String, Arc<HubFile>)>>;

#[derive(Clone, Default)]
struct TestHub {
    repos: Arc<Mutex<Repos>>,
    bytes_served: Arc<AtomicU64>,
    /// Serve this file with one byte flipped (its listing and etag keep the true sha256).
    corrupt: Arc<Mutex<Option<String>>>,
    /// Every request must carry `Authorization: Bearer <token>`.
    token: Arc<Mutex<Option<String>>>,
    base: Arc<Mutex<String>>,
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl TestHub {
    fn add(&self, repo: &str, files: &[(&str, Vec<u8>)]) {
        let files = files
            .iter()
            .map(|(name, bytes)| {
                let lfs = name.ends_with(".gguf") || name.ends_with(".safetensors");
                let file = HubFile {
                    bytes: bytes.clone(),
                    lfs,
                };
                (name.to_string(), Arc::new(file))
            })
            .collect();
        self.repos.lock().unwrap().insert(repo.into(), files);
    }

    fn file(&self, repo: &str, name: &str) -> Option<Arc<HubFile>> {
        let repos = self.repos.lock().unwrap();
        let files = repos.get(repo)?;
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
    }

    async fn start(&self) -> String {
        let app = Router::new()
            .route("/api/models/{org}/{repo}/revision/{rev}", get(listing))
            .route("/{org}/{repo}/resolve/{rev}/{*file}", get(resolve))
            .route("/cdn/{org}/{repo}/{*file}", get(cdn))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *self.base.lock().unwrap() = url.clone();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        match &*self.token.lock().unwrap() {
            None => true,
            Some(token) => {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    == Some(&format!("Bearer {token}"))
            }
        }
    }
}

async fn listing(
    State(hub): State<TestHub>,
    Path((org, repo, _rev)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !hub.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let repos = hub.repos.lock().unwrap();
    let Some(files) = repos.get(&format!("{org}/{repo}")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let blobs = query.get("blobs").map(String::as_str) == Some("true");
    let siblings: Vec<_> = files
        .iter()
        .map(|(name, f)| match (blobs, f.lfs) {
            (false, _) => json!({ "rfilename": name }),
            (true, false) => json!({ "rfilename": name, "size": f.bytes.len() }),
            (true, true) => json!({ "rfilename": name, "size": f.bytes.len(),
                "lfs": { "sha256": sha256(&f.bytes), "size": f.bytes.len() } }),
        })
        .collect();
    axum::Json(json!({ "id": format!("{org}/{repo}"), "sha": COMMIT, "siblings": siblings }))
        .into_response()
}

/// `/resolve/`: small files are served here; LFS files redirect to the CDN (absolute URL).
async fn resolve(
    State(hub): State<TestHub>,
    Path((org, repo, rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if !hub.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    assert_eq!(rev, COMMIT, "downloads are pinned to the listed commit");
    let Some(f) = hub.file(&format!("{org}/{repo}"), &file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if f.lfs {
        // Another host, as the hub's CDN is: hf-hub follows only same-origin redirects
        // itself, reading the etag and commit from this response.
        let base = hub.base.lock().unwrap().replace("127.0.0.1", "localhost");
        let location = format!("{base}/cdn/{org}/{repo}/{file}");
        return (
            StatusCode::FOUND,
            [
                (header::LOCATION.as_str(), location),
                ("x-repo-commit", COMMIT.into()),
                ("x-linked-etag", format!("\"{}\"", sha256(&f.bytes))),
                ("x-linked-size", f.bytes.len().to_string()),
            ],
        )
            .into_response();
    }
    // A git blob's etag: 40 hex digits, not a sha256.
    let etag = format!("\"{}\"", &sha256(&f.bytes)[..40]);
    serve(&hub, &file, &f, &headers, vec![("etag", etag)])
}

async fn cdn(
    State(hub): State<TestHub>,
    Path((org, repo, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(f) = hub.file(&format!("{org}/{repo}"), &file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    serve(&hub, &file, &f, &headers, vec![])
}

/// The bytes a Range asks for (hf-hub asks `bytes=0-0` first, then chunks whose end may lie
/// past the file), with `content-range` and the commit.
fn serve(
    hub: &TestHub,
    name: &str,
    f: &HubFile,
    headers: &HeaderMap,
    mut extra: Vec<(&'static str, String)>,
) -> Response {
    let mut bytes = f.bytes.clone();
    if hub.corrupt.lock().unwrap().as_deref() == Some(name) {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    }
    let len = bytes.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap();
            let end: usize = b.parse().map_or(len - 1, |e: usize| e.min(len - 1));
            (start, end)
        });
    extra.push(("x-repo-commit", COMMIT.into()));
    let (status, body) = match range {
        Some((start, end)) => {
            extra.push(("content-range", format!("bytes {start}-{end}/{len}")));
            (StatusCode::PARTIAL_CONTENT, bytes[start..=end].to_vec())
        }
        None => (StatusCode::OK, bytes),
    };
    if body.len() > 1 {
        hub.bytes_served
            .fetch_add(body.len() as u64, Ordering::SeqCst);
    }
    let mut response = (status, body).into_response();
    for (key, value) in extra {
        response.headers_mut().insert(key, value.parse().unwrap());
    }
    response
}

/// File bytes of `len`, different per `seed`; a GGUF starts with its magic.
fn bytes(len: usize, seed: u8, magic: &[u8]) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len).map(|i| (i * 31 + seed as usize) as u8).collect();
    b[..magic.len()].copy_from_slice(magic);
    b
}

fn name(s: &str) -> ModelName {
    ModelName::parse(s).unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    hf_home: std::path::PathBuf,
    hub: HuggingFace,
}

fn env(url: &str, token: Option<&str>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    Env {
        store: Store::at(dir.path().join("ollama")),
        hub: HuggingFace::new(url, &hf_home, token.map(String::from)),
        hf_home,
        _dir: dir,
    }
}

async fn pull(env: &Env, model: &str) -> (Result<Pulled, PullError>, Vec<PullEvent>) {
    let mut events = Vec::new();
    let result = env
        .hub
        .pull(&env.store, &name(model), None, &mut |e| events.push(e))
        .await;
    (result, events)
}

/// Files under `dir`, relative, sorted (symlinks listed as files).
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().to_string());
            }
        }
    }
    out.sort();
    out
}

fn gguf_repo(hub: &TestHub) -> (Vec<u8>, Vec<u8>) {
    let (q4, q8) = (bytes(300_000, 1, b"GGUF"), bytes(500_000, 2, b"GGUF"));
    hub.add(
        "test/tiny-GGUF",
        &[
            ("README.md", b"# tiny".to_vec()),
            ("tiny-Q4_0.gguf", q4.clone()),
            ("tiny-Q8_0.gguf", q8.clone()),
        ],
    );
    (q4, q8)
}

#[tokio::test]
async fn a_gguf_repo_quant_lands_in_the_store_as_ollama_lays_it_out() {
    let hub = TestHub::default();
    let (q4, _) = gguf_repo(&hub);
    let url = hub.start().await;
    let env = env(&url, None);

    let (result, events) = pull(&env, "hf.co/test/tiny-GGUF:Q4_0").await;
    let Pulled::Manifest(manifest) = result.unwrap() else {
        panic!("a GGUF pull is a store manifest")
    };
    let digest = format!("sha256:{}", sha256(&q4));
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.layers[0].digest, digest);
    assert_eq!(manifest.layers[0].size, q4.len() as u64);
    assert_eq!(
        events.first(),
        Some(&PullEvent::Status("pulling manifest".into()))
    );
    assert_eq!(events.last(), Some(&PullEvent::Status("success".into())));
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            PullEvent::Blob {
                digest: d,
                total,
                completed,
            } if *d == digest && *total == q4.len() as u64 => Some(*completed),
            _ => None,
        })
        .collect();
    assert_eq!(progress.first(), Some(&0));
    assert_eq!(progress.last(), Some(&(q4.len() as u64)));

    // Ollama's layout: the manifest under hf.co/, the blob named by the file's sha256.
    let config = format!("blobs/sha256-{}", &manifest.config.digest[7..]);
    let mut want = vec![
        format!("blobs/sha256-{}", sha256(&q4)),
        config,
        "manifests/hf.co/test/tiny-GGUF/Q4_0".to_string(),
    ];
    want.sort();
    assert_eq!(files(env.store.root()), want);
    let model = name("hf.co/test/tiny-GGUF:Q4_0");
    assert_eq!(
        std::fs::read(env.store.model_file(&model).unwrap()).unwrap(),
        q4
    );
    assert_eq!(env.store.list().unwrap()[0].name, model);

    // `latest` takes Q4_0 (no Q4_K_M here) without fetching it again.
    let served = hub.bytes_served.load(Ordering::SeqCst);
    assert_eq!(served, q4.len() as u64);
    pull(&env, "hf.co/test/tiny-GGUF").await.0.unwrap();
    assert_eq!(hub.bytes_served.load(Ordering::SeqCst), served);
    let latest = env.store.model_file(&name("hf.co/test/tiny-GGUF")).unwrap();
    assert_eq!(latest, env.store.model_file(&model).unwrap());

    // The other quant is there to be pulled too; removing one name keeps the other's blob.
    pull(&env, "hf.co/test/tiny-GGUF:q8_0").await.0.unwrap();
    env.store.remove(&model).unwrap();
    assert_eq!(std::fs::read(&latest).unwrap(), q4);
    assert_eq!(env.store.list().unwrap().len(), 2);
}

#[tokio::test]
async fn a_quant_the_repo_lacks_is_an_error_naming_the_ones_it_has() {
    let hub = TestHub::default();
    gguf_repo(&hub);
    let url = hub.start().await;
    let env = env(&url, None);
    let err = pull(&env, "hf.co/test/tiny-GGUF:Q5_K_M")
        .await
        .0
        .unwrap_err();
    assert!(matches!(err, PullError::UnknownQuant { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("\"Q5_K_M\"") && message.contains("Q4_0, Q8_0"),
        "{message}"
    );
    assert!(files(env.store.root()).is_empty());
    assert_eq!(hub.bytes_served.load(Ordering::SeqCst), 0);

    let err = pull(&env, "hf.co/test/nothing-here").await.0.unwrap_err();
    assert!(matches!(err, PullError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn a_file_whose_bytes_do_not_match_its_sha256_never_enters_store_or_cache() {
    let hub = TestHub::default();
    let (q4, _) = gguf_repo(&hub);
    *hub.corrupt.lock().unwrap() = Some("tiny-Q4_0.gguf".into());
    let url = hub.start().await;
    let env = env(&url, None);
    let err = pull(&env, "hf.co/test/tiny-GGUF:Q4_0").await.0.unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&sha256(&q4)), "{err}");
    assert!(err.to_string().contains("tiny-Q4_0.gguf"), "{err}");
    assert!(files(env.store.root()).is_empty());
    // hf-hub's lock file may stay; no blob, snapshot entry or ref does.
    let cached = files(&env.hf_home);
    assert!(cached.iter().all(|f| f.ends_with(".lock")), "{cached:?}");

    // Fixed at the source, the same pull goes through.
    *hub.corrupt.lock().unwrap() = None;
    pull(&env, "hf.co/test/tiny-GGUF:Q4_0").await.0.unwrap();
}

#[tokio::test]
async fn a_safetensors_repo_lands_in_the_hf_cache_as_one_snapshot() {
    let hub = TestHub::default();
    let config = br#"{"model_type":"mistral"}"#.to_vec();
    let weights = bytes(400_000, 3, b"\x08\x00");
    hub.add(
        "test/tiny",
        &[
            ("config.json", config.clone()),
            ("tokenizer.json", b"{}".to_vec()),
            ("model.safetensors", weights.clone()),
            ("README.md", b"# tiny".to_vec()),
            ("original/consolidated.safetensors", bytes(1000, 4, b"")),
        ],
    );
    let url = hub.start().await;
    let env = env(&url, None);
    assert_eq!(env.hub.cached_snapshot(&name("hf.co/test/tiny")), None);

    let (result, events) = pull(&env, "hf.co/test/tiny").await;
    let Pulled::Snapshot(dir) = result.unwrap() else {
        panic!("a safetensors pull is an HF cache snapshot")
    };
    assert_eq!(
        dir,
        env.hf_home
            .join("hub/models--test--tiny/snapshots")
            .join(COMMIT)
    );
    assert_eq!(
        files(&dir),
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), config);
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(events.contains(&PullEvent::Blob {
        digest: format!("sha256:{}", sha256(&weights)),
        total: weights.len() as u64,
        completed: weights.len() as u64,
    }));
    assert_eq!(events.last(), Some(&PullEvent::Status("success".into())));
    assert_eq!(
        std::fs::read_to_string(env.hf_home.join("hub/models--test--tiny/refs/main")).unwrap(),
        COMMIT
    );
    assert!(
        files(env.store.root()).is_empty(),
        "the Ollama store is untouched"
    );
    assert_eq!(env.hub.cached_snapshot(&name("hf.co/test/tiny")), Some(dir));
    assert_eq!(env.hub.cached_snapshot(&name("hf.co/test/tiny:Q4_0")), None);

    // Pulled again: nothing is downloaded.
    let served = hub.bytes_served.load(Ordering::SeqCst);
    pull(&env, "hf.co/test/tiny").await.0.unwrap();
    assert_eq!(hub.bytes_served.load(Ordering::SeqCst), served);
}

#[tokio::test]
async fn a_sharded_repo_fetches_exactly_the_shards_its_index_lists() {
    let hub = TestHub::default();
    let index = json!({"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}});
    hub.add(
        "test/sharded",
        &[
            ("config.json", b"{}".to_vec()),
            (
                "model.safetensors.index.json",
                serde_json::to_vec(&index).unwrap(),
            ),
            ("model-00001-of-00002.safetensors", bytes(1000, 5, b"")),
            ("model-00002-of-00002.safetensors", bytes(1000, 6, b"")),
            ("consolidated.safetensors", bytes(2000, 7, b"")),
        ],
    );
    let url = hub.start().await;
    let env = env(&url, None);
    let Pulled::Snapshot(dir) = pull(&env, "hf.co/test/sharded").await.0.unwrap() else {
        panic!("a snapshot")
    };
    assert_eq!(
        files(&dir),
        [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
    assert_eq!(
        env.hub.cached_snapshot(&name("hf.co/test/sharded")),
        Some(dir.clone())
    );
    // A shard gone from the cache: the snapshot is no longer one to load.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    assert_eq!(env.hub.cached_snapshot(&name("hf.co/test/sharded")), None);
}

#[tokio::test]
async fn a_gated_repo_needs_the_token_and_gets_it_on_every_request() {
    let hub = TestHub::default();
    let (q4, _) = gguf_repo(&hub);
    *hub.token.lock().unwrap() = Some("hf_test".into());
    let url = hub.start().await;
    let err = pull(&env(&url, None), "hf.co/test/tiny-GGUF:Q4_0")
        .await
        .0
        .unwrap_err();
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    let env = env(&url, Some("hf_test"));
    pull(&env, "hf.co/test/tiny-GGUF:Q4_0").await.0.unwrap();
    let model = env.store.model_file(&name("hf.co/test/tiny-GGUF:Q4_0"));
    assert_eq!(std::fs::read(model.unwrap()).unwrap(), q4);
}

#[tokio::test]
async fn no_network_fails_fast_and_says_so() {
    // A port nobody listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A port that accepts and never answers: the timeout, not a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for url in [
        format!("http://{closed}"),
        format!("http://{}", silent.local_addr().unwrap()),
    ] {
        let env = env(&url, None);
        let started = Instant::now();
        let err = pull(&env, "hf.co/test/tiny-GGUF:Q4_0").await.0.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(15));
        let message = err.to_string();
        assert!(message.contains(&url), "{message}");
        assert!(
            message.contains("cannot reach") || message.contains("is the network up?"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn the_puller_sends_hugging_face_names_to_the_hub_and_others_to_the_registry() {
    let hub = TestHub::default();
    gguf_repo(&hub);
    let url = hub.start().await;
    let env = env(&url, None);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let registry = ferrollama_store::Registry::new(Some(format!("http://{closed}")));
    let puller = Puller::new(registry, env.hub.clone());
    let mut report = |_| {};
    for hf in [
        "hf.co/test/tiny-GGUF:Q4_0",
        "huggingface.co/test/tiny-GGUF:Q4_0",
    ] {
        let pulled = puller.pull(&env.store, &name(hf), None, &mut report).await;
        assert!(
            matches!(pulled, Ok(Pulled::Manifest(_))),
            "{hf}: {pulled:?}"
        );
    }
    let err = puller
        .pull(&env.store, &name("tiny:latest"), None, &mut report)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&closed.to_string()), "{err}");

    // `/api/pull` runs a pull on a spawned task: the future must be Send.
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&puller.pull(&env.store, &name("tiny"), None, &mut report));
}
