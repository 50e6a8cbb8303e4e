//! The model store over HTTP, as Ollama serves it: `/api/pull` (progress streamed as NDJSON,
//! or one answer with `"stream": false`), `/api/delete`, `/api/copy`, and the store's part of
//! `/api/tags`; and every model a request can name, as OpenAI lists them (`/v1/models`). Disk
//! work runs off the async workers.

use crate::error::{parse, ApiError, OllamaError, OpenAiError};
use crate::model_info::ModelInfo;
use crate::names::ModelNames;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollama_model::weights::GgufFile;
use ferrollama_model::{ChatTemplate, Description, Tokenizer};
use ferrollama_store::{ModelName, PullError, PullEvent, Store, StoreEntry, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

#[derive(Deserialize)]
struct PullBody {
    #[serde(alias = "name")]
    model: String,
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct DeleteBody {
    #[serde(alias = "name")]
    model: String,
}

#[derive(Deserialize)]
struct CopyBody {
    source: String,
    destination: String,
}

fn name(given: &str) -> Result<ModelName, ApiError> {
    ModelName::parse(given).map_err(|e| ApiError::bad_request(e.to_string()))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Name(_) | StoreError::BadDigest(_) => ApiError::bad_request(e.to_string()),
            StoreError::NotFound(_) => ApiError::not_found(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<PullError> for ApiError {
    fn from(e: PullError) -> Self {
        match e {
            PullError::Store(e) => e.into(),
            PullError::NotFound(_) | PullError::UnknownQuant { .. } => {
                ApiError::not_found(e.to_string())
            }
            PullError::Stalled { .. } => ApiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: e.to_string(),
                param: None,
            },
            PullError::Unreachable { .. } | PullError::Hub { .. } => ApiError {
                status: StatusCode::BAD_GATEWAY,
                message: e.to_string(),
                param: None,
            },
            _ => ApiError::internal(e.to_string()),
        }
    }
}

/// A store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// Every model in the store, as /api/tags lists them.
pub async fn store_models(state: &AppState) -> Result<Vec<ModelInfo>, ApiError> {
    blocking(state, move |store| {
        Ok(store
            .list()?
            .into_iter()
            .map(|entry| entry_info(store, entry, false))
            .collect())
    })
    .await
}

/// What the store's GGUF header says of the model `requested` names, for /api/show.
pub async fn store_info(state: &AppState, requested: &str) -> Result<ModelInfo, ApiError> {
    let wanted = name(requested)?;
    let shown = requested.to_string();
    blocking(state, move |store| {
        let entry = store
            .list()?
            .into_iter()
            .find(|e| e.name == wanted)
            .ok_or(StoreError::NotFound(shown))?;
        Ok(entry_info(store, entry, true))
    })
    .await
}

/// A stored model's description from its manifest and GGUF header. A blob that is missing
/// or not a GGUF still describes, with what its manifest says.
fn entry_info(store: &Store, entry: StoreEntry, with_template: bool) -> ModelInfo {
    let gguf = store
        .model_file(&entry.name)
        .ok()
        .and_then(|path| GgufFile::open(&path).ok());
    let description = gguf
        .as_ref()
        .map_or_else(Description::unknown, Description::of_gguf);
    let (template, tools) = gguf
        .as_ref()
        .filter(|_| with_template)
        .and_then(|g| {
            let tokenizer = Tokenizer::from_gguf(g).ok()?;
            let jinja = g.string("tokenizer.chat_template");
            let template = ChatTemplate::for_model(&tokenizer, jinja).ok()?;
            Some((template.name(), template.tool_syntax(&tokenizer).is_some()))
        })
        .unwrap_or(("", false));
    let template = template.to_string();
    let shown = entry.name.to_string();
    ModelInfo {
        names: ModelNames::of_store(&shown),
        size_bytes: entry.manifest.size(),
        digest: entry.digest.trim_start_matches("sha256:").to_string(),
        modified: entry.modified,
        description,
        template,
        parameters: String::new(),
        on_gpu: false,
        tools,
    }
}

/// Ollama's progress object for an event; blob progress reads `pulling <12 hex digits>`.
fn progress_json(event: PullEvent) -> Value {
    match event {
        PullEvent::Status(status) => json!({ "status": status }),
        PullEvent::Blob {
            digest,
            total,
            completed,
        } => {
            let short: String = digest
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect();
            json!({"status": format!("pulling {short}"), "digest": digest, "total": total,
                   "completed": completed})
        }
    }
}

pub async fn pull(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let body: PullBody = parse(&body).map_err(ApiError::ollama)?;
    let name = name(&body.model).map_err(ApiError::ollama)?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Result<Value, ApiError>>();
    let (store, puller) = (state.store.clone(), state.puller.clone());
    // The pull runs to its end even if the client leaves: what it fetched stays usable.
    tokio::spawn(async move {
        let progress = sender.clone();
        // One progress line per percent of a blob is plenty for a client to draw a bar.
        let mut last_percent: Option<(String, u64)> = None;
        let mut report = move |event: PullEvent| {
            if let PullEvent::Blob {
                digest,
                total,
                completed,
            } = &event
            {
                let percent = completed * 100 / (*total).max(1);
                let key = (digest.clone(), percent);
                if last_percent.as_ref() == Some(&key) {
                    return;
                }
                last_percent = Some(key);
            }
            let _ = progress.send(Ok(progress_json(event)));
        };
        if let Err(e) = puller.pull(&store, &name, None, &mut report).await {
            let _ = sender.send(Err(e.into()));
        }
    });
    if body.stream == Some(false) {
        let mut receiver = receiver;
        while let Some(item) = receiver.recv().await {
            item.map_err(ApiError::ollama)?;
        }
        return Ok(Json(json!({"status": "success"})).into_response());
    }
    let lines = UnboundedReceiverStream::new(receiver).map(|item| {
        let line = match item {
            Ok(progress) => progress,
            Err(e) => json!({ "error": e.message }),
        };
        Ok::<_, std::convert::Infallible>(format!("{line}\n"))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

pub async fn delete(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let body: DeleteBody = parse(&body).map_err(ApiError::ollama)?;
    let name = name(&body.model).map_err(ApiError::ollama)?;
    blocking(&state, move |store| store.remove(&name))
        .await
        .map_err(ApiError::ollama)?;
    Ok(StatusCode::OK.into_response())
}

pub async fn copy(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let body: CopyBody = parse(&body).map_err(ApiError::ollama)?;
    let from = name(&body.source).map_err(ApiError::ollama)?;
    let to = name(&body.destination).map_err(ApiError::ollama)?;
    blocking(&state, move |store| store.copy(&from, &to))
        .await
        .map_err(ApiError::ollama)?;
    Ok(StatusCode::OK.into_response())
}

/// Every model a request can name: the loaded one, one served from a file, and the store's.
pub async fn list_models(State(state): State<AppState>) -> Result<Json<Value>, OpenAiError> {
    let data: Vec<Value> = known_models(&state)
        .await
        .map_err(ApiError::openai)?
        .into_iter()
        .map(|(id, created)| model_object(&id, created))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    let known = known_models(&state).await.map_err(ApiError::openai)?;
    let found = known
        .iter()
        .find(|(name, _)| name == &id || ModelNames::of_store(name).matches(&id));
    match found {
        Some((_, created)) => Ok(Json(model_object(&id, *created))),
        None => Err(ApiError::not_found(format!("The model `{id}` does not exist")).openai()),
    }
}

/// Names with their creation times (Unix seconds), each once.
async fn known_models(state: &AppState) -> Result<Vec<(String, u64)>, ApiError> {
    let resident = state.residents.running().map(|r| r.loaded.info.clone());
    let stored = store_models(state).await?;
    let mut out: Vec<(String, u64)> = Vec::new();
    let infos = resident
        .into_iter()
        .chain(state.residents.loader().listed())
        .chain(stored);
    for info in infos {
        for name in &info.names.all {
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.clone(), info.created()));
            }
        }
    }
    Ok(out)
}

fn model_object(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "ferrollama"})
}
