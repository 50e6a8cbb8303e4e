//! Embeddings: one typed ask that both APIs' adapters (`openai.rs`, `ollama.rs` here) parse
//! their bodies into, checked and run once, and answered as vectors with their counts.

pub mod encoders;
pub mod ollama;
pub mod openai;

use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::state::AppState;
use std::time::{Duration, Instant};

/// Most inputs in one request (OpenAI's limit for `/v1/embeddings`).
pub const MAX_INPUTS: usize = 2048;

/// What to embed: text, or token ids (OpenAI's `input` may be either).
#[derive(Debug)]
pub enum Inputs {
    Texts(Vec<String>),
    Tokens(Vec<Vec<i64>>),
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::Tokens(t) => t.len(),
        }
    }
}

/// One embedding request, whichever API it came through.
#[derive(Debug)]
pub struct EmbedAsk {
    pub model: String,
    pub inputs: Inputs,
    /// Cut over-long inputs to the model's length (Ollama's `truncate`, on by default there);
    /// otherwise they are refused, naming the input.
    pub truncate: bool,
    /// Keep the first n dimensions (then normalise again), for models trained for it.
    pub dimensions: Option<usize>,
    pub keep_alive: Option<KeepAlive>,
    /// The request's field that holds the inputs, for errors: `input` or `prompt`.
    pub field: &'static str,
    /// The route, for the request's log line.
    pub route: &'static str,
}

/// The answer: one vector per input, in order.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    pub load_duration: Duration,
    pub total_duration: Duration,
}

/// Checks that need no model: done before anything loads.
fn check_shape(ask: &EmbedAsk) -> Result<(), ApiError> {
    let n = ask.inputs.len();
    if n == 0 {
        return Err(ApiError::invalid(
            ask.field,
            format!("{}: give at least one input", ask.field),
        ));
    }
    if n > MAX_INPUTS {
        return Err(ApiError::invalid(
            ask.field,
            format!(
                "{}: {n} inputs; at most {MAX_INPUTS} per request",
                ask.field
            ),
        ));
    }
    if ask.dimensions == Some(0) {
        return Err(ApiError::invalid(
            "dimensions",
            "dimensions must be at least 1",
        ));
    }
    Ok(())
}

/// Runs `ask`, with its log line (the texts only under `--log-prompts`).
pub async fn embed(state: &AppState, ask: EmbedAsk) -> Result<Embedded, ApiError> {
    let log = state.request_log(ask.route, &ask.model, || match &ask.inputs {
        Inputs::Texts(texts) => texts.join("\n"),
        Inputs::Tokens(lists) => format!("{lists:?}"),
    });
    let result = run(state, ask).await;
    match &result {
        Ok(done) => log.embedded(done.prompt_tokens, None),
        Err(e) => log.embedded(0, Some(&e.message)),
    }
    result
}

async fn run(state: &AppState, ask: EmbedAsk) -> Result<Embedded, ApiError> {
    let started = Instant::now();
    check_shape(&ask)?;
    let key = state.residents.find(&ask.model).await?;
    if !state.residents.loader().is_encoder(&key) {
        return Err(ApiError::bad_request(format!(
            "\"{}\" does not support embeddings: it is not an embedding model (such as all-minilm or nomic-embed-text)",
            ask.model
        )));
    }
    let lease = state.encoders.acquire(&key, ask.keep_alive).await?;
    let encoder = &lease.resident.encoder;
    if let Some(d) = ask.dimensions {
        if d > encoder.dimensions() {
            return Err(ApiError::invalid(
                "dimensions",
                format!(
                    "dimensions: {d} is more than the model's {}",
                    encoder.dimensions()
                ),
            ));
        }
    }
    let field = ask.field;
    let mut ids: Vec<Vec<u32>> = match ask.inputs {
        Inputs::Texts(texts) => texts
            .iter()
            .map(|t| encoder.tokenize(t))
            .collect::<Result<_, _>>()?,
        Inputs::Tokens(lists) => {
            let vocab = encoder.vocab_size();
            let mut out = Vec::with_capacity(lists.len());
            for (i, list) in lists.into_iter().enumerate() {
                if list.is_empty() {
                    return Err(ApiError::invalid(
                        field,
                        format!("{field}[{i}] is an empty list of tokens"),
                    ));
                }
                let checked = list.iter().enumerate().map(|(j, &t)| {
                    u32::try_from(t).ok().filter(|&t| (t as usize) < vocab).ok_or_else(|| {
                        ApiError::invalid(field, format!("{field}[{i}][{j}]: token id {t} is outside the vocabulary (0..{vocab})"))
                    })
                });
                out.push(checked.collect::<Result<Vec<u32>, _>>()?);
            }
            out
        }
    };
    let max = encoder.max_tokens();
    for (i, input) in ids.iter_mut().enumerate() {
        if input.len() > max {
            if !ask.truncate {
                return Err(ApiError::invalid(
                    field,
                    format!("{field}[{i}] has {} tokens, more than the model's {max}; shorten it, or set truncate", input.len()),
                ));
            }
            encoder.truncate(input);
        }
    }
    let prompt_tokens = ids.iter().map(Vec::len).sum();
    let mut vectors = lease.resident.embed(ids).await?;
    if let Some(d) = ask.dimensions {
        for v in &mut vectors {
            v.truncate(d);
            if encoder.normalizes() {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }
    state.metrics.embedded(vectors.len(), prompt_tokens);
    Ok(Embedded {
        vectors,
        prompt_tokens,
        load_duration: lease.load_duration,
        total_duration: started.elapsed(),
    })
}
