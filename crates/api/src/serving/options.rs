//! One mapping from a request's sampling options to the engine's parameters, for both APIs.
//! Each protocol file fills [`Options`] from its own fields; what the request leaves unset,
//! the model's defaults fill (its catalog entry, then its Ollama params layer), and then the
//! API's own defaults:
//!
//! | option | OpenAI (`/v1`) | Ollama (`/api`, in `options`) | unset: OpenAI / Ollama |
//! |---|---|---|---|
//! | temperature | `temperature`, 0 to 2 | `temperature`, at least 0 | 1 / 0.8 |
//! | top_k | `top_k` (vLLM's), 0 or less: off | `top_k`, 0 or less: off | off / 40 |
//! | top_p | `top_p`, in (0, 1] | `top_p` | 1 / 0.9 |
//! | min_p | `min_p`, in [0, 1] | `min_p` | 0 |
//! | repeat_penalty | `repeat_penalty` (llama.cpp's) | `repeat_penalty` | 1 / 1.1 |
//! | repeat_last_n | (the model's, else 64) | `repeat_last_n`, -1: the context | 64 |
//! | presence, frequency penalty | `presence_penalty`, `frequency_penalty`, -2 to 2 | the same names, finite | 0 |
//! | seed | `seed` | `seed`, negative: random | random |
//! | most tokens | `max_completion_tokens`, `max_tokens`, at least 1 | `num_predict`, 0 or less: no limit | the context, or `--max-tokens` |
//! | stop | `stop`, a string or a list | `stop` | the model's |
//! | speculative | `speculative` (ours) | `speculative` (ours) | the server's `--speculative` |
//!
//! The two differences are each API's own documented ranges: OpenAI's temperature and
//! penalties have bounds, Ollama's do not. Every other range is the engine's
//! ([`SamplingParams::validate`]), which names the field it refuses.

use crate::error::ApiError;
use crate::state::Limits;
use ferrollama_engine::SamplingParams;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Which API a request came through: its defaults, its ranges, its field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Ollama,
}

impl Api {
    /// The request's name for the most tokens to generate.
    pub fn max_tokens_field(self) -> &'static str {
        match self {
            Api::OpenAi => "max_tokens",
            Api::Ollama => "num_predict",
        }
    }

    /// Its name for structured output.
    pub fn format_field(self) -> &'static str {
        match self {
            Api::OpenAi => "response_format",
            Api::Ollama => "format",
        }
    }

    /// What it samples with when neither the request nor the model says.
    fn defaults(self) -> SamplingParams {
        match self {
            Api::OpenAi => SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                repeat_penalty: 1.0,
                ..SamplingParams::default()
            },
            Api::Ollama => SamplingParams::default(),
        }
    }
}

/// Sampling options as a request (or a model's defaults) gives them; `None` is unset.
/// Deserializes from Ollama's `options` object (unknown keys, like `num_ctx`, pass).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Options {
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    #[serde(deserialize_with = "ollama_seed")]
    pub seed: Option<u64>,
    pub num_predict: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub speculative: Option<bool>,
}

/// What the engine gets for each choice of a request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sampling: SamplingParams,
    /// `None`: until the context ends.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub speculative: Option<bool>,
}

const MAX_STOPS: usize = 32;
const MAX_STOP_LEN: usize = 1024;

impl Options {
    /// Ollama's `options` object (or a model's defaults, which have its shape).
    pub fn from_map(map: &Map<String, Value>) -> Result<Self, ApiError> {
        serde_json::from_value(Value::Object(map.clone()))
            .map_err(|e| ApiError::invalid("options", format!("options: {e}")))
    }

    /// These options, with `defaults` filling what they leave unset.
    pub fn or(self, defaults: Options) -> Options {
        Options {
            temperature: self.temperature.or(defaults.temperature),
            top_k: self.top_k.or(defaults.top_k),
            top_p: self.top_p.or(defaults.top_p),
            min_p: self.min_p.or(defaults.min_p),
            repeat_penalty: self.repeat_penalty.or(defaults.repeat_penalty),
            repeat_last_n: self.repeat_last_n.or(defaults.repeat_last_n),
            presence_penalty: self.presence_penalty.or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.or(defaults.frequency_penalty),
            seed: self.seed.or(defaults.seed),
            num_predict: self.num_predict.or(defaults.num_predict),
            stop: self.stop.or(defaults.stop),
            speculative: self.speculative.or(defaults.speculative),
        }
    }

    /// The engine's parameters, through `api`'s defaults and ranges, under the server's
    /// `limits`, for a model whose context holds `context` tokens. Every error names its field.
    pub fn plan(&self, api: Api, limits: &Limits, context: usize) -> Result<Plan, ApiError> {
        let base = api.defaults();
        if api == Api::OpenAi {
            for (name, value, most) in [
                ("temperature", self.temperature, 2.0),
                ("presence_penalty", self.presence_penalty, 2.0),
                ("frequency_penalty", self.frequency_penalty, 2.0),
            ] {
                let least = if name == "temperature" { 0.0 } else { -most };
                if let Some(v) = value.filter(|v| !(least..=most).contains(v)) {
                    return Err(ApiError::invalid(
                        name,
                        format!("{name} must be between {least} and {most}, got {v}"),
                    ));
                }
            }
        }
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_k: self.top_k.map_or(base.top_k, |k| k.max(0) as usize),
            top_p: self.top_p.unwrap_or(base.top_p),
            min_p: self.min_p.unwrap_or(base.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(base.repeat_penalty),
            repeat_last_n: match self.repeat_last_n {
                None => base.repeat_last_n,
                Some(n) if n < 0 => context,
                Some(n) => n as usize,
            },
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed,
        };
        sampling
            .validate()
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
        let stop = self.stop.clone().unwrap_or_default();
        if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_LEN) {
            return Err(ApiError::invalid(
                "stop",
                format!("stop: at most {MAX_STOPS} stop strings of {MAX_STOP_LEN} bytes"),
            ));
        }
        let asked = self.num_predict.filter(|&n| n > 0).map(|n| n as usize);
        Ok(Plan {
            sampling,
            max_tokens: limits.max_tokens(asked, api.max_tokens_field())?,
            stop,
            speculative: self.speculative,
        })
    }
}

/// Ollama's seed: a negative one (its -1) draws at random.
fn ollama_seed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seed {
        Unsigned(u64),
        Signed(i64),
    }
    Ok(match Option::<Seed>::deserialize(d)? {
        Some(Seed::Unsigned(s)) => Some(s),
        Some(Seed::Signed(s)) => u64::try_from(s).ok(),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(value: Value) -> Options {
        Options::from_map(value.as_object().unwrap()).unwrap()
    }

    #[test]
    fn the_model_fills_what_the_request_leaves_unset_then_the_api() {
        let model = options(json!({"temperature": 0.3, "stop": ["[INST]"], "num_predict": 7}));
        let asked = options(json!({"top_p": 0.5}));
        let plan = asked
            .or(model)
            .plan(Api::OpenAi, &Limits::default(), 100)
            .unwrap();
        assert_eq!(plan.sampling.temperature, 0.3);
        assert_eq!(plan.sampling.top_p, 0.5);
        assert_eq!(plan.sampling.top_k, 0, "OpenAI's default: no top-k");
        assert_eq!(plan.stop, ["[INST]"]);
        assert_eq!(plan.max_tokens, Some(7));
        let ollama = Options::default()
            .plan(Api::Ollama, &Limits::default(), 100)
            .unwrap();
        assert_eq!(ollama.sampling, SamplingParams::default());
        assert_eq!(ollama.max_tokens, None);
    }

    #[test]
    fn each_api_keeps_its_own_ranges_and_errors_name_the_field() {
        let hot = options(json!({"temperature": 3.0}));
        let refused = hot.plan(Api::OpenAi, &Limits::default(), 100).unwrap_err();
        assert_eq!(refused.param.as_deref(), Some("temperature"));
        assert!(hot.plan(Api::Ollama, &Limits::default(), 100).is_ok());
        let top_p = options(json!({"top_p": 0.0}));
        for api in [Api::OpenAi, Api::Ollama] {
            let e = top_p.plan(api, &Limits::default(), 100).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("top_p"), "{}", e.message);
        }
        let capped = Limits {
            max_tokens: Some(10),
            ..Limits::default()
        };
        let long = options(json!({"num_predict": 11}));
        let e = long.plan(Api::Ollama, &capped, 100).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("num_predict"));
    }

    #[test]
    fn ollama_conventions_read_as_ollama_means_them() {
        let o = options(json!({"seed": -1, "repeat_last_n": -1, "top_k": -1, "num_predict": -1}));
        let plan = o.plan(Api::Ollama, &Limits::default(), 4096).unwrap();
        assert_eq!(plan.sampling.seed, None);
        assert_eq!(plan.sampling.repeat_last_n, 4096);
        assert_eq!(plan.sampling.top_k, 0);
        assert_eq!(plan.max_tokens, None);
        assert_eq!(options(json!({"seed": 42})).seed, Some(42));
    }
}
