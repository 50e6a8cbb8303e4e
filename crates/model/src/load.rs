//! From a model reference (a GGUF file, a safetensors directory, or a random shape) to a ready
//! model: weights, tokenizer, chat template and end-of-sequence ids.

use crate::attention::{AttentionKind, AttentionSpec};
use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::{Model, ModelOptions};
use crate::pooling::Pooling;
use crate::tokenizer::Tokenizer;
use crate::weights::{GgufFile, GgufWeights, RandomDType, RandomWeights, SafetensorsWeights};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Gguf(PathBuf),
    Safetensors(PathBuf),
    /// Random weights at a named shape, with a tokenizer.json to go with them.
    Random {
        shape: String,
        seed: u64,
        dtype: RandomDType,
        tokenizer: PathBuf,
    },
}

impl ModelSource {
    /// A path: a `.gguf` file or a directory with `config.json`.
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            if path.join("config.json").exists() {
                return Ok(ModelSource::Safetensors(path.to_path_buf()));
            }
            return Err(ModelError::Unsupported(format!(
                "{} has no config.json",
                path.display()
            )));
        }
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
        match read {
            Ok(()) if &magic == b"GGUF" => Ok(ModelSource::Gguf(path.to_path_buf())),
            Ok(()) => Err(ModelError::Unsupported(format!(
                "{} is not a GGUF file",
                path.display()
            ))),
            Err(e) => Err(ModelError::io(path, e)),
        }
    }
}

/// Where and how the model computes.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// The activations' and KV cache's float type; `None` follows the device
    /// ([`crate::device::compute_dtype`]).
    pub dtype: Option<DType>,
    pub attention: AttentionKind,
    /// The KV cache's element type; `None`: f16 for the native CPU kernels, the model's dtype
    /// elsewhere.
    pub kv_dtype: Option<DType>,
    /// Quantized weights dequantized at load (see [`crate::ModelOptions`]).
    pub dequantize: bool,
}

impl LoadOptions {
    /// The CPU, f32, native attention.
    pub fn cpu() -> Self {
        Self::on(Device::Cpu)
    }

    pub fn on(device: Device) -> Self {
        Self {
            device,
            dtype: None,
            attention: AttentionKind::Auto,
            kv_dtype: None,
            dequantize: false,
        }
    }

    /// Quantized weights dequantized to the model's dtype: the exact reference of a quantized
    /// file.
    pub fn dequantized(mut self) -> Self {
        self.dequantize = true;
        self
    }

    pub fn with_attention(mut self, attention: AttentionKind) -> Self {
        self.attention = attention;
        self
    }

    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    pub fn with_kv_dtype(mut self, kv_dtype: DType) -> Self {
        self.kv_dtype = Some(kv_dtype);
        self
    }

    pub fn dtype(&self) -> Result<DType> {
        match self.dtype {
            Some(dtype) => Ok(dtype),
            None => crate::device::default_dtype(&self.device),
        }
    }
}

pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    /// How its final hidden states become one vector for an embedding request; `None` when
    /// its file says they do not (a reranker's `rank`).
    pub pooling: Option<Pooling>,
}

impl LoadedModel {
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }
}

/// Loads a model; `progress(done, total)` reports loaded layers.
pub fn load(
    source: &ModelSource,
    options: &LoadOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LoadedModel> {
    let device = &options.device;
    let dtype = options.dtype()?;
    let mut build = |config: &ModelConfig, weights: &mut dyn crate::weights::WeightSource| {
        let model_options = ModelOptions {
            attention: AttentionSpec {
                kind: options.attention,
                kv_dtype: options.kv_dtype,
            },
            dequantize: options.dequantize,
        };
        Model::load(config, weights, device, dtype, model_options, progress)
    };
    match source {
        ModelSource::Gguf(path) => {
            let file = Arc::new(GgufFile::open(path)?);
            let config = file.config()?;
            let (tokenizer, chat_template) = gguf_chat(&file)?;
            let pooling = gguf_pooling(&file)?;
            let mut weights = GgufWeights::new(file, &config, device);
            let model = build(&config, &mut weights)?;
            Ok(LoadedModel {
                model,
                tokenizer,
                chat_template,
                pooling,
            })
        }
        ModelSource::Safetensors(dir) => {
            let config = ModelConfig::from_hf_json(&read(&dir.join("config.json"))?)?;
            let (tokenizer, chat_template) = safetensors_chat(dir)?;
            // A sentence-transformers decoder (Qwen3-Embedding's layout) says how it pools.
            let pooling = if dir.join("modules.json").is_file() {
                crate::pooling::sentence_transformers_head(dir)?.0
            } else {
                Pooling::Last
            };
            let mut weights = SafetensorsWeights::open(dir, config.architecture, device, dtype)?;
            let model = build(&config, &mut weights)?;
            Ok(LoadedModel {
                model,
                tokenizer,
                chat_template,
                pooling: Some(pooling),
            })
        }
        ModelSource::Random {
            shape,
            seed,
            dtype,
            tokenizer,
        } => {
            let config = ModelConfig::named(shape)?;
            let tokenizer = Tokenizer::from_file(tokenizer)?;
            if tokenizer.vocab_size() > config.vocab_size {
                return Err(ModelError::Config(format!(
                    "tokenizer has {} tokens, shape `{shape}` only {}",
                    tokenizer.vocab_size(),
                    config.vocab_size
                )));
            }
            let chat_template = ChatTemplate::for_model(&tokenizer, None)?;
            let mut weights = RandomWeights::new(&config, *seed, *dtype, device);
            let model = build(&config, &mut weights)?;
            Ok(LoadedModel {
                model,
                tokenizer,
                chat_template,
                pooling: Some(Pooling::Last),
            })
        }
    }
}

/// A decoder's tokenizer and chat template, without its weights (for `show`).
pub fn tokenizer_and_template(source: &ModelSource) -> Result<(Tokenizer, ChatTemplate)> {
    match source {
        ModelSource::Gguf(path) => gguf_chat(&GgufFile::open(path)?),
        ModelSource::Safetensors(dir) => safetensors_chat(dir),
        ModelSource::Random { tokenizer, .. } => {
            let tokenizer = Tokenizer::from_file(tokenizer)?;
            let template = ChatTemplate::for_model(&tokenizer, None)?;
            Ok((tokenizer, template))
        }
    }
}

/// A decoder's pooling, as llama.cpp reads it: `{arch}.pooling_type` where the file has it
/// (embedding models made from decoders: mean or last); unsaid or `none`, the last token's
/// state, as Ollama's runner takes it.
fn gguf_pooling(file: &GgufFile) -> Result<Option<Pooling>> {
    let arch = file.string("general.architecture").unwrap_or("llama");
    match file.uint(&format!("{arch}.pooling_type")) {
        None | Some(0) => Ok(Some(Pooling::Last)),
        Some(code) => Pooling::of_gguf(code),
    }
}

fn gguf_chat(file: &GgufFile) -> Result<(Tokenizer, ChatTemplate)> {
    let tokenizer = Tokenizer::from_gguf(file)?;
    let template = ChatTemplate::for_model(&tokenizer, file.string("tokenizer.chat_template"))?;
    Ok((tokenizer, template))
}

/// `tokenizer.json`, the eos ids `generation_config.json` adds, and `tokenizer_config.json`'s
/// `chat_template`.
fn safetensors_chat(dir: &Path) -> Result<(Tokenizer, ChatTemplate)> {
    let mut tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    if let Ok(text) = read(&dir.join("generation_config.json")) {
        tokenizer.add_eos_ids(generation_eos_ids(&text));
    }
    let jinja = read(&dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["chat_template"].as_str().map(str::to_string));
    let template = ChatTemplate::for_model(&tokenizer, jinja.as_deref())?;
    Ok((tokenizer, template))
}

/// The tokenizer alone, from a GGUF file, a `tokenizer.json`, or a directory holding one.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        return Tokenizer::from_file(&path.join("tokenizer.json"));
    }
    match ModelSource::from_path(path) {
        Ok(ModelSource::Gguf(path)) => Tokenizer::from_gguf(&GgufFile::open(&path)?),
        _ => Tokenizer::from_file(path),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))
}

/// `eos_token_id` of a generation_config.json: one id or a list.
fn generation_eos_ids(json: &str) -> Vec<u32> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    match &v["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        serde_json::Value::Array(ids) => ids
            .iter()
            .filter_map(|id| id.as_u64())
            .map(|id| id as u32)
            .collect(),
        _ => Vec::new(),
    }
}
