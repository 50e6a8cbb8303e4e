//! Embeddings: one typed ask that both APIs' adapters (`openai.rs`, `ollama.rs` here) parse
//! their bodies into, checked and run once, and answered as vectors with their counts.

mod decoders;
pub mod encoders;
pub mod ollama;
pub mod openai;

use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::state::AppState;
use ferrollama_model::Pooling;
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

/// What embeds for a request: an embedding model of its own, or the generating model's engine.
enum Embedder {
    Encoder(encoders::EncoderLease),
    Decoder(crate::resident::Lease, Pooling),
}

impl Embedder {
    /// The model `key`, loaded if need be. A generating model embeds unless its file says its
    /// states make no vector (a reranker).
    async fn acquire(
        state: &AppState,
        key: &str,
        requested: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Self, ApiError> {
        if state.residents.loader().is_encoder(key) {
            return Ok(Self::Encoder(
                state.encoders.acquire(key, keep_alive).await?,
            ));
        }
        let lease = state.model(requested, keep_alive).await?;
        match lease.loaded().model.pooling {
            Some(pooling) => Ok(Self::Decoder(lease, pooling)),
            None => Err(ApiError::bad_request(format!(
                "\"{requested}\" does not support embeddings: its file sets a pooling (rank) that gives no vector"
            ))),
        }
    }

    fn dimensions(&self) -> usize {
        match self {
            Self::Encoder(lease) => lease.resident.encoder.dimensions(),
            Self::Decoder(lease, _) => lease.loaded().model.config().hidden_size,
        }
    }

    fn vocab_size(&self) -> usize {
        match self {
            Self::Encoder(lease) => lease.resident.encoder.vocab_size(),
            Self::Decoder(lease, _) => lease.loaded().model.config().vocab_size,
        }
    }

    /// The most tokens of one input: the encoder's, or the decoder's whole context.
    fn max_tokens(&self) -> usize {
        match self {
            Self::Encoder(lease) => lease.resident.encoder.max_tokens(),
            Self::Decoder(lease, _) => lease.loaded().context(),
        }
    }

    /// Token ids as the model reads an input: an encoder's `[CLS] … [SEP]`, a decoder's BOS
    /// and text (Ollama's embedding prompt, no template).
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        Ok(match self {
            Self::Encoder(lease) => lease.resident.encoder.tokenize(text)?,
            Self::Decoder(lease, _) => lease.loaded().model.tokenizer.encode_prompt(text)?,
        })
    }

    /// Cuts an over-long input to [`Embedder::max_tokens`]: an encoder keeps its `[SEP]`, a
    /// decoder the beginning (as Ollama does).
    fn truncate(&self, ids: &mut Vec<u32>) {
        match self {
            Self::Encoder(lease) => lease.resident.encoder.truncate(ids),
            Self::Decoder(..) => ids.truncate(self.max_tokens()),
        }
    }

    /// Whether its vectors come out as unit vectors: as the embedding model's head says, and
    /// always from a decoder (Ollama normalises them).
    fn normalizes(&self) -> bool {
        match self {
            Self::Encoder(lease) => lease.resident.encoder.normalizes(),
            Self::Decoder(..) => true,
        }
    }

    fn load_duration(&self) -> Duration {
        match self {
            Self::Encoder(lease) => lease.load_duration,
            Self::Decoder(lease, _) => lease.load_duration,
        }
    }

    async fn embed(
        &self,
        ids: Vec<Vec<u32>>,
        field: &'static str,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        match self {
            Self::Encoder(lease) => lease.resident.embed(ids).await,
            Self::Decoder(lease, pooling) => {
                let mut vectors = decoders::embed(lease.loaded(), *pooling, ids, field).await?;
                vectors.iter_mut().for_each(|v| normalize(v));
                Ok(vectors)
            }
        }
    }
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

async fn run(state: &AppState, ask: EmbedAsk) -> Result<Embedded, ApiError> {
    let started = Instant::now();
    check_shape(&ask)?;
    let key = state.residents.find(&ask.model).await?;
    let embedder = Embedder::acquire(state, &key, &ask.model, ask.keep_alive).await?;
    let dimensions = embedder.dimensions();
    if let Some(d) = ask.dimensions {
        if d > dimensions {
            return Err(ApiError::invalid(
                "dimensions",
                format!("dimensions: {d} is more than the model's {dimensions}"),
            ));
        }
    }
    let field = ask.field;
    let mut ids: Vec<Vec<u32>> = match ask.inputs {
        Inputs::Texts(texts) => texts
            .iter()
            .map(|t| embedder.tokenize(t))
            .collect::<Result<_, _>>()?,
        Inputs::Tokens(lists) => {
            let vocab = embedder.vocab_size();
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
    let max = embedder.max_tokens();
    for (i, input) in ids.iter_mut().enumerate() {
        if input.len() > max {
            if !ask.truncate {
                return Err(ApiError::invalid(
                    field,
                    format!("{field}[{i}] has {} tokens, more than the model's {max}; shorten it, or set truncate", input.len()),
                ));
            }
            embedder.truncate(input);
        }
    }
    let prompt_tokens = ids.iter().map(Vec::len).sum();
    let mut vectors = embedder.embed(ids, field).await?;
    if let Some(d) = ask.dimensions {
        for v in &mut vectors {
            v.truncate(d);
            if embedder.normalizes() {
                normalize(v);
            }
        }
    }
    state.metrics.embedded(vectors.len(), prompt_tokens);
    Ok(Embedded {
        vectors,
        prompt_tokens,
        load_duration: embedder.load_duration(),
        total_duration: started.elapsed(),
    })
}
