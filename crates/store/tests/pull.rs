//! Pulls over real HTTP from a registry started by the test, into a store in a temp dir.
//! The registry speaks the Docker distribution API as Ollama's does (manifests by tag, blobs
//! by digest, HTTP Range), counts the bytes it serves, and can be told to corrupt a blob or
//! cut a transfer halfway.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ferrollama_store::manifest::{self, Layer, Manifest, MANIFEST_MEDIA_TYPE};
use ferrollama_store::{ModelName, PullError, PullEvent, Registry, Store};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Registered {
    /// "namespace/model:tag" → manifest JSON.
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Vec<u8>>,
}

#[derive(Clone, Default)]
struct TestRegistry {
    data: Arc<Mutex<Registered>>,
    bytes_served: Arc<AtomicU64>,
    /// Serve this digest with one byte flipped.
    corrupt: Arc<Mutex<Option<String>>>,
    /// Cut the next full transfer of a blob halfway.
    cut_next: Arc<AtomicBool>,
}

fn layer_for(media_type: &str, bytes: &[u8]) -> Layer {
    Layer {
        media_type: media_type.into(),
        digest: format!("sha256:{:x}", Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

impl TestRegistry {
    /// Registers a model of a GGUF-like blob (`model_bytes`), a template and a config.
    fn add(&self, repo_tag: &str, model_bytes: &[u8], template: &str) -> Manifest {
        let config =
            format!(r#"{{"model_format":"gguf","model_family":"llama","tag":"{repo_tag}"}}"#);
        let layers = [
            (manifest::MODEL, model_bytes.to_vec()),
            (manifest::TEMPLATE, template.as_bytes().to_vec()),
        ];
        let mut data = self.data.lock().unwrap();
        let config_layer = layer_for(
            "application/vnd.docker.container.image.v1+json",
            config.as_bytes(),
        );
        data.blobs
            .insert(config_layer.digest.clone(), config.into_bytes());
        let mut manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            config: config_layer,
            layers: Vec::new(),
        };
        for (media_type, bytes) in layers {
            let layer = layer_for(media_type, &bytes);
            data.blobs.insert(layer.digest.clone(), bytes);
            manifest.layers.push(layer);
        }
        data.manifests
            .insert(repo_tag.into(), serde_json::to_vec(&manifest).unwrap());
        manifest
    }

    async fn start(&self) -> String {
        let app = Router::new()
            .route(
                "/v2/{namespace}/{model}/manifests/{tag}",
                get(manifest_route),
            )
            .route("/v2/{namespace}/{model}/blobs/{digest}", get(blob_route))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }
}

async fn manifest_route(
    State(r): State<TestRegistry>,
    Path((namespace, model, tag)): Path<(String, String, String)>,
) -> Response {
    match r
        .data
        .lock()
        .unwrap()
        .manifests
        .get(&format!("{namespace}/{model}:{tag}"))
    {
        Some(m) => ([(header::CONTENT_TYPE, MANIFEST_MEDIA_TYPE)], m.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn blob_route(
    State(r): State<TestRegistry>,
    Path((_, _, digest)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(mut bytes) = r.data.lock().unwrap().blobs.get(&digest).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if r.corrupt.lock().unwrap().as_deref() == Some(digest.as_str()) {
        bytes[0] ^= 1;
    }
    let start: usize = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let body = bytes[start..].to_vec();
    let status = if start > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let length = body.len();
    if start == 0 && length > 1024 && r.cut_next.swap(false, Ordering::SeqCst) {
        // Half the bytes, then the connection fails: Content-Length promises the rest.
        let half = body[..length / 2].to_vec();
        r.bytes_served
            .fetch_add(half.len() as u64, Ordering::SeqCst);
        // The failure comes a moment later, so the client has the headers and half the body.
        let stream = futures_util::stream::once(async { Ok(half) }).chain(
            futures_util::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                Err(std::io::Error::other("cut by the test"))
            }),
        );
        return (
            status,
            [(header::CONTENT_LENGTH, length.to_string())],
            Body::from_stream(stream),
        )
            .into_response();
    }
    r.bytes_served.fetch_add(length as u64, Ordering::SeqCst);
    (status, body).into_response()
}

/// A GGUF-looking blob of `len` bytes, different per `seed`.
fn gguf_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len).map(|i| (i * 31 + seed as usize) as u8).collect();
    b[..4].copy_from_slice(b"GGUF");
    b
}

fn name(s: &str) -> ModelName {
    ModelName::parse(s).unwrap()
}

async fn pull(
    url: &str,
    store: &Store,
    model: &str,
) -> (Result<Manifest, PullError>, Vec<PullEvent>) {
    let mut events = Vec::new();
    let result = Registry::new(Some(url.to_string()))
        .pull(store, &name(model), None, &mut |e| events.push(e))
        .await;
    (result, events)
}

/// Files under `dir`, relative, sorted.
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_pull_writes_ollamas_layout_and_list_copy_remove_work() {
    let registry = TestRegistry::default();
    let model = gguf_bytes(200_000, 1);
    let manifest = registry.add(
        "library/tiny:latest",
        &model,
        "[INST] {{ .Prompt }} [/INST]",
    );
    let url = registry.start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());

    let (result, events) = pull(&url, &store, "tiny").await;
    assert_eq!(result.unwrap(), manifest);
    assert_eq!(
        events.first(),
        Some(&PullEvent::Status("pulling manifest".into()))
    );
    assert_eq!(events.last(), Some(&PullEvent::Status("success".into())));
    assert!(events.contains(&PullEvent::Blob {
        digest: manifest.layers[0].digest.clone(),
        total: model.len() as u64,
        completed: model.len() as u64,
    }));

    // Ollama's layout, byte for byte where it matters: the manifest path and blob names.
    let mut want: Vec<String> = manifest
        .blobs()
        .map(|l| format!("blobs/sha256-{}", manifest::sha256_hex(&l.digest).unwrap()))
        .collect();
    want.push("manifests/registry.ollama.ai/library/tiny/latest".into());
    want.sort();
    assert_eq!(files(dir.path()), want);
    assert_eq!(
        std::fs::read(store.model_file(&name("tiny")).unwrap()).unwrap(),
        model
    );

    store.copy(&name("tiny"), &name("me/tiny:v1")).unwrap();
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.contains(&"tiny:latest".to_string()) && listed.contains(&"me/tiny:v1".to_string())
    );
    assert_eq!(store.list().unwrap()[0].manifest.size(), manifest.size());

    // Removing one name keeps the blobs the other still lists; removing both frees them.
    store.remove(&name("tiny")).unwrap();
    assert_eq!(
        std::fs::read(store.model_file(&name("me/tiny:v1")).unwrap()).unwrap(),
        model
    );
    store.remove(&name("me/tiny:v1")).unwrap();
    assert!(files(&dir.path().join("blobs")).is_empty());
    assert!(matches!(
        store.model_file(&name("tiny")),
        Err(ferrollama_store::StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_layer_two_models_share_is_downloaded_once() {
    let registry = TestRegistry::default();
    let model = gguf_bytes(300_000, 2);
    registry.add("library/tiny:latest", &model, "template one");
    registry.add("library/tiny:other", &model, "template two");
    let url = registry.start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    pull(&url, &store, "tiny").await.0.unwrap();
    let before = registry.bytes_served.load(Ordering::SeqCst);
    pull(&url, &store, "tiny:other").await.0.unwrap();
    let second = registry.bytes_served.load(Ordering::SeqCst) - before;
    assert!(
        second < 1000,
        "the second pull fetched {second} bytes; the model blob is shared"
    );
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_fails_and_leaves_nothing() {
    let registry = TestRegistry::default();
    let manifest = registry.add("library/tiny:latest", &gguf_bytes(100_000, 3), "t");
    *registry.corrupt.lock().unwrap() = Some(manifest.layers[0].digest.clone());
    let url = registry.start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let err = pull(&url, &store, "tiny").await.0.unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&manifest.layers[0].digest),
        "{err}"
    );
    // The config blob may have landed before; the bad blob, its partial file and the
    // manifest must not.
    let left = files(dir.path());
    let bad = manifest::sha256_hex(&manifest.layers[0].digest).unwrap();
    assert!(
        left.iter()
            .all(|f| !f.contains(bad) && !f.starts_with("manifests")),
        "{left:?}"
    );
}

#[tokio::test]
async fn a_cut_transfer_resumes_where_it_stopped() {
    let registry = TestRegistry::default();
    let model = gguf_bytes(400_000, 4);
    let manifest = registry.add("library/tiny:latest", &model, "t");
    let url = registry.start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());

    registry.cut_next.store(true, Ordering::SeqCst);
    let err = pull(&url, &store, "tiny").await.0.unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Transfer { .. } | PullError::Incomplete { .. }
        ),
        "{err}"
    );
    assert!(!store.manifest_path(&name("tiny")).exists());

    // The config blob (small) came whole before the cut; the model blob is half there.
    let before = registry.bytes_served.load(Ordering::SeqCst);
    let (result, events) = pull(&url, &store, "tiny").await;
    result.unwrap();
    let second = registry.bytes_served.load(Ordering::SeqCst) - before;
    let template = manifest.layers[1].size;
    assert_eq!(
        second,
        model.len() as u64 - model.len() as u64 / 2 + template,
        "the second pull fetches the model blob's second half and the template"
    );
    // Progress resumes from the half already on disk.
    let first_model_event = events.iter().find_map(|e| match e {
        PullEvent::Blob {
            digest, completed, ..
        } if *digest == manifest.layers[0].digest => Some(*completed),
        _ => None,
    });
    assert_eq!(first_model_event, Some(model.len() as u64 / 2));
    assert_eq!(
        std::fs::read(store.model_file(&name("tiny")).unwrap()).unwrap(),
        model
    );
}

#[tokio::test]
async fn unknown_models_and_unreachable_registries_fail_fast_and_say_so() {
    let url = TestRegistry::default().start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let err = pull(&url, &store, "nothing:here").await.0.unwrap_err();
    assert!(matches!(err, PullError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("nothing:here"), "{err}");

    // A port nobody listens on: refused at once, not a hang.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let started = std::time::Instant::now();
    let err = pull(&format!("http://{closed}"), &store, "tiny")
        .await
        .0
        .unwrap_err();
    assert!(matches!(err, PullError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("cannot reach"), "{err}");
    assert!(started.elapsed().as_secs() < 10);
}

#[tokio::test]
async fn removing_a_name_keeps_blobs_an_unreadable_manifest_names() {
    let registry = TestRegistry::default();
    let model = gguf_bytes(50_000, 5);
    let manifest = registry.add("library/tiny:latest", &model, "t");
    let url = registry.start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    pull(&url, &store, "tiny").await.0.unwrap();
    store.copy(&name("tiny"), &name("other:v1")).unwrap();
    // The copy's manifest is damaged (cut short): it no longer parses, but it still names the
    // model blob, which must survive removing the first name.
    let other = store.manifest_path(&name("other:v1"));
    let text = std::fs::read_to_string(&other).unwrap();
    std::fs::write(&other, &text[..text.len() - 5]).unwrap();
    store.remove(&name("tiny")).unwrap();
    assert!(store
        .blob_path(&manifest.layers[0].digest)
        .unwrap()
        .exists());
}

#[tokio::test]
async fn a_model_with_an_adapter_layer_is_refused_by_name() {
    let registry = TestRegistry::default();
    let mut manifest = registry.add("library/tiny:latest", &gguf_bytes(50_000, 6), "t");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let url = registry.start().await;
    pull(&url, &store, "tiny").await.0.unwrap();
    manifest.layers.push(Layer {
        media_type: manifest::ADAPTER.into(),
        ..manifest.layers[0].clone()
    });
    store.write_manifest(&name("tiny"), &manifest).unwrap();
    let err = store.model_file(&name("tiny")).unwrap_err().to_string();
    assert!(err.contains("LoRA adapter"), "{err}");
}
