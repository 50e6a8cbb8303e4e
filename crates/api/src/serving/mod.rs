//! The serving core under both protocols: a request parsed into one typed [`Ask`] is checked
//! (before any model loads), its model leased, its prompt prepared (template, tools, grammar,
//! tokens), its choices submitted, and their events read into typed [`Output`]s. The OpenAI
//! and Ollama files parse bodies into an `Ask` and format what comes back; nothing else.
//!
//! Where things are: the options → sampling mapping (one table for both APIs) in
//! `options.rs`, prompt preparation in `prompt.rs`, submission and timeouts in `submit.rs`,
//! reading events (and the calls in them) in `output.rs`.

mod options;
mod output;
mod prompt;
mod submit;

pub use options::{Api, Options};
pub use output::{collect, End, Finished, Output, Outputs};
pub use prompt::Prompt;

use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::state::AppState;
use crate::structured::OutputFormat;
use crate::tools::Tools;
use ferrollama_engine::GenerationRequest;
use ferrollama_model::ChatMessage;
use std::time::Duration;

/// How long a stream may stay silent (a long prompt being read) before it sends a heartbeat:
/// gateways and proxies see bytes long before their read timeouts (the AI Gateway's is 30 s),
/// and writing is how a client that hung up is noticed, within about this long.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// What a request gives the model to read.
#[derive(Debug, Clone)]
pub enum Input {
    /// A chat, rendered by the model's template.
    Chat(Vec<ChatMessage>),
    /// Prompts taken as they are (OpenAI's completions, Ollama's `raw`).
    Raw(Vec<Prompt>),
}

/// One generation request, whichever API it came through.
#[derive(Debug, Clone)]
pub struct Ask {
    pub api: Api,
    /// The route, for the request log.
    pub route: &'static str,
    pub model: String,
    pub input: Input,
    pub options: Options,
    /// Choices per prompt (OpenAI's `n`).
    pub n: usize,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    pub format: Option<OutputFormat>,
    pub tools: Option<Tools>,
    pub keep_alive: Option<KeepAlive>,
}

/// A request under way.
pub struct Served {
    pub outputs: Outputs,
    /// Choices in all: `per_prompt` for each prompt, in order.
    pub choices: usize,
    pub per_prompt: usize,
    /// How long the model took to load for it (zero when it was loaded).
    pub load_duration: Duration,
}

impl Ask {
    /// Checks what can be checked without a model: a bad request loads nothing.
    pub fn check(&self, state: &AppState) -> Result<(), ApiError> {
        self.options.plan(self.api, &state.limits, 0).map(drop)
    }

    /// The request's name for its `i`-th prompt.
    fn prompt_field(&self, i: usize) -> String {
        match &self.input {
            Input::Chat(_) => "messages".into(),
            Input::Raw(prompts) if prompts.len() == 1 => "prompt".into(),
            Input::Raw(_) => format!("prompt[{i}]"),
        }
    }

    /// The prompt as text, for the request log under `--log-prompts`.
    fn transcript(&self) -> String {
        match &self.input {
            Input::Chat(messages) => crate::request_log::transcript(messages),
            Input::Raw(prompts) => prompts
                .iter()
                .map(|p| match p {
                    Prompt::Text(text) => text.clone(),
                    Prompt::Tokens(ids) => format!("{} token ids", ids.len()),
                })
                .collect::<Vec<_>>()
                .join("\n---\n"),
        }
    }
}

/// Runs `ask`: leases its model, prepares its prompts and submits every choice.
pub async fn serve(state: &AppState, ask: Ask) -> Result<Served, ApiError> {
    ask.check(state)?;
    let lease = state.model(&ask.model, ask.keep_alive).await?;
    let loaded = lease.loaded().clone();
    let defaults = Options::from_map(&loaded.defaults)?;
    let plan = ask
        .options
        .clone()
        .or(defaults)
        .plan(ask.api, &state.limits, loaded.context())?;
    let prepared = prompt::prepare(&loaded, &ask)?;
    let n = ask.n.max(1);
    let requests: Vec<GenerationRequest> = prepared
        .prompts
        .iter()
        .flat_map(|prompt| {
            let room = loaded.context().saturating_sub(prompt.len());
            (0..n).map(move |choice| (prompt, room, choice))
        })
        .map(|(prompt, room, choice)| {
            let mut sampling = plan.sampling.clone();
            // Choices of one prompt differ: each its own seed.
            sampling.seed = sampling.seed.map(|s| s.wrapping_add(choice as u64));
            GenerationRequest {
                prompt: prompt.clone(),
                sampling,
                max_tokens: plan.max_tokens.unwrap_or(room).max(1),
                stop: plan.stop.clone(),
                ignore_eos: ask.ignore_eos,
                grammar: prepared.grammar.clone(),
                speculative: plan.speculative,
            }
        })
        .collect();
    drop(loaded);
    let choices = requests.len();
    let load_duration = lease.load_duration;
    let log = state.request_log(ask.route, &ask.model, || ask.transcript());
    let merged = submit::submit_all(state, lease, requests, n, log).map_err(|(e, prompt)| {
        ApiError::engine(e, ask.prompt_field(prompt), ask.api.max_tokens_field())
    })?;
    Ok(Served {
        outputs: output::read(merged, prepared.reader, choices),
        choices,
        per_prompt: n,
        load_duration,
    })
}
