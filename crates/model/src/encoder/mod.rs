//! Embedding models: a text encoder, its tokenizer and its pooling, from a sentence-transformers
//! directory (safetensors, `modules.json`, `1_Pooling/config.json`) or a GGUF of one (as Ollama's
//! `all-minilm` is). Encoders run dense in f32; they are small, and the vectors they give must
//! match sentence-transformers'.

mod attention;
pub mod bert;
mod gelu;
pub mod nomic;
mod rope;
mod wordpiece;

use crate::error::{ModelError, Result};
use crate::load::ModelSource;
use crate::weights::GgufFile;
use bert::{Bert, BertConfig};
use candle_core::{Device, Tensor};
use std::path::Path;

use crate::describe::{family_of_model_type, ENCODER_FAMILIES};
pub use crate::pooling::Pooling;
use crate::pooling::{read_json, sentence_transformers_head};

/// A loaded embedding model.
pub struct Encoder {
    bert: Bert,
    tokenizer: tokenizers::Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_tokens: usize,
    /// What it is, for listings.
    description: crate::Description,
    /// Packed forwards (the CPU's way) rather than padded batches through candle's ops.
    packed: bool,
    /// Its own math threads (`--threads`), else rayon's global pool.
    threads: Option<rayon::ThreadPool>,
}

/// Whether `source` holds an encoder (an embedding model) rather than a decoder: GGUF
/// `general.architecture` bert, or config.json `model_type` bert. Cheap: reads headers only.
pub fn is_encoder(source: &ModelSource) -> bool {
    match source {
        ModelSource::Gguf(path) => GgufFile::open(path).is_ok_and(|f| {
            f.string("general.architecture")
                .is_some_and(|a| ENCODER_FAMILIES.contains(&a))
        }),
        ModelSource::Safetensors(dir) => read_json(&dir.join("config.json")).is_ok_and(|c| {
            c["model_type"]
                .as_str()
                .is_some_and(|t| ENCODER_FAMILIES.contains(&family_of_model_type(t)))
        }),
        ModelSource::Random { .. } => false,
    }
}

impl Encoder {
    pub fn load(
        source: &ModelSource,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let description = crate::Description::of(source)?;
        match source {
            ModelSource::Safetensors(dir) => {
                Self::from_sentence_transformers(dir, device, description, progress)
            }
            ModelSource::Gguf(path) => Self::from_gguf(path, device, description, progress),
            ModelSource::Random { .. } => Err(ModelError::Unsupported(
                "random weights make no embedding model".into(),
            )),
        }
    }

    fn from_sentence_transformers(
        dir: &Path,
        device: &Device,
        description: crate::Description,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let config_json = read_json(&dir.join("config.json"))?;
        let family = family_of_model_type(config_json["model_type"].as_str().unwrap_or("unknown"));
        let config = match family {
            "bert" => BertConfig::from_hf_json(&config_json)?,
            "nomic-bert" => nomic::config(&config_json)?,
            _ => return Err(not_run(&dir.display().to_string(), family)),
        };
        let files = safetensors_files(dir)?;
        // SAFETY: mapped read-only, as every loader here; the files must not change in use.
        let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files)? };
        let mut get = |name: &str| -> Result<Tensor> {
            // Checkpoints saved from BertForMaskedLM prefix every name with `bert.`. nomic's
            // checkpoints keep the names of its own code, which nomic.rs reads.
            tensors
                .load(name, device)
                .or_else(|_| tensors.load(&format!("bert.{name}"), device))
                .map_err(|_| ModelError::MissingWeight(name.to_string()))
        };
        let bert = load_family(config, &mut get, progress)?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        // Lengths are ours to check: an over-long input is an error or truncated on request,
        // never cut silently by the tokenizer's own settings.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let (pooling, normalize) = sentence_transformers_head(dir)?;
        let max_tokens = read_json(&dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|c| c["max_seq_length"].as_u64())
            .map_or(bert.config().max_positions, |n| {
                (n as usize).min(bert.config().max_positions)
            });
        Ok(Self {
            packed: bert.device().is_cpu(),
            threads: None,
            bert,
            tokenizer,
            pooling,
            normalize,
            max_tokens,
            description,
        })
    }

    fn from_gguf(
        path: &Path,
        device: &Device,
        description: crate::Description,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let arch = file.string("general.architecture").unwrap_or("unknown");
        let gguf_name = match arch {
            "bert" => bert::gguf_name,
            "nomic-bert" => nomic::gguf_name,
            _ => return Err(not_run(&path.display().to_string(), arch)),
        };
        let config = BertConfig::from_gguf(&file)?;
        let mut get = |name: &str| -> Result<Tensor> {
            let gguf = gguf_name(name).ok_or_else(|| ModelError::MissingWeight(name.into()))?;
            file.dequantized(&gguf, device)
        };
        let bert = load_family(config, &mut get, progress)?;
        let tokenizer = wordpiece::from_gguf(&file)?;
        // Unsaid, BERT's mean. Ollama's embeddings are unit vectors.
        let code = file.uint(&format!("{arch}.pooling_type"));
        let pooling = match code.map(Pooling::of_gguf).transpose()? {
            None => Pooling::Mean,
            Some(Some(pooling)) => pooling,
            Some(None) => {
                return Err(ModelError::Unsupported(format!(
                    "{arch}.pooling_type {} (no single vector per input)",
                    code.unwrap_or_default()
                )))
            }
        };
        let max_tokens = bert.config().max_positions;
        Ok(Self {
            packed: bert.device().is_cpu(),
            threads: None,
            bert,
            tokenizer,
            pooling,
            normalize: true,
            max_tokens,
            description,
        })
    }

    /// The token ids of `text`, special tokens included.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Cuts `ids` to the model's length, keeping its closing special token (`[SEP]`) where it
    /// had one, as sentence-transformers' truncation does.
    pub fn truncate(&self, ids: &mut Vec<u32>) {
        if ids.len() > self.max_tokens {
            let last = *ids.last().expect("longer than max_tokens, so not empty");
            ids.truncate(self.max_tokens);
            if self
                .tokenizer
                .id_to_token(last)
                .is_some_and(|t| t == "[SEP]")
            {
                *ids.last_mut().expect("max_tokens > 0") = last;
            }
        }
    }

    /// One vector per input; each must be at most [`Encoder::max_tokens`] long and its ids
    /// in the vocabulary (checked before this). On the CPU inputs run packed, many thousand
    /// tokens a forward with no padding; elsewhere as padded batches of similar lengths.
    pub fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        match &self.threads {
            Some(pool) => pool.install(|| self.embed_here(inputs)),
            None => self.embed_here(inputs),
        }
    }

    /// [`Encoder::embed`] on the current thread pool.
    fn embed_here(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        /// Padded batch size (candle's ops on a GPU).
        const BATCH: usize = 32;
        /// Tokens in one packed forward: large GEMMs, activations of a few tens of MB.
        const PACKED_TOKENS: usize = 4096;
        if let Some(long) = inputs.iter().find(|i| i.len() > self.max_tokens) {
            return Err(ModelError::Batch(format!(
                "an input of {} tokens is longer than the model's {}",
                long.len(),
                self.max_tokens
            )));
        }
        let packed = self.packed;
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut out = vec![Vec::new(); inputs.len()];
        let mut rest = &order[..];
        while !rest.is_empty() {
            let take = if packed {
                let mut tokens = 0;
                rest.iter()
                    .take_while(|&&i| {
                        tokens += inputs[i].len();
                        tokens <= PACKED_TOKENS
                    })
                    .count()
                    .max(1)
            } else {
                rest.len().min(BATCH)
            };
            let (chunk, tail) = rest.split_at(take);
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| inputs[i].as_slice()).collect();
            let vectors = if packed {
                self.embed_packed(&batch)?
            } else {
                self.embed_padded(&batch)?
            };
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
            rest = tail;
        }
        Ok(out)
    }

    /// Its math on `threads` threads of its own (the server's `--threads`), not rayon's
    /// global pool.
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("encoder-{i}"))
            .build()
            .map_err(|e| ModelError::Device(format!("encoder threads: {e}")))?;
        self.threads = Some(pool);
        Ok(self)
    }

    /// Padded batches through candle's ops, the way off the CPU: tests compare the two ways
    /// on the CPU.
    pub fn with_padded_batches(mut self) -> Self {
        self.packed = false;
        self
    }

    /// One packed forward, pooled and normalised row by row.
    fn embed_packed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let lens: Vec<usize> = batch.iter().map(|b| b.len()).collect();
        let hidden = self
            .bert
            .forward_packed(&batch.concat(), &lens)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let h = self.bert.config().hidden_size;
        let mut at = 0;
        Ok(lens
            .iter()
            .map(|&n| {
                let rows = &hidden[at * h..(at + n) * h];
                at += n;
                let mut pooled = vec![0f32; h];
                match self.pooling {
                    Pooling::Mean => {
                        for row in rows.chunks_exact(h) {
                            pooled.iter_mut().zip(row).for_each(|(p, x)| *p += x);
                        }
                        let count = n.max(1) as f32;
                        pooled.iter_mut().for_each(|p| *p /= count);
                    }
                    Pooling::Cls => pooled.copy_from_slice(&rows[..h.min(rows.len())]),
                    Pooling::Last => pooled.copy_from_slice(&rows[rows.len().saturating_sub(h)..]),
                }
                if self.normalize {
                    let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    pooled.iter_mut().for_each(|p| *p /= norm);
                }
                pooled
            })
            .collect())
    }

    /// One padded batch through candle's ops.
    fn embed_padded(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let rows = batch.len();
        let len = batch.iter().map(|b| b.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; rows * len];
        let mut mask = vec![0u8; rows * len];
        for (r, input) in batch.iter().enumerate() {
            ids[r * len..r * len + input.len()].copy_from_slice(input);
            mask[r * len..r * len + input.len()].fill(1);
        }
        let device = self.bert.device();
        let ids = Tensor::from_vec(ids, (rows, len), device)?;
        let mask = Tensor::from_vec(mask, (rows, len), device)?;
        let hidden = self.bert.forward(&ids, &mask)?;
        let pooled = match self.pooling {
            Pooling::Mean => bert::mean_pool(&hidden, &mask)?,
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Last => {
                let last: Vec<u32> = (0..rows)
                    .map(|r| (r * len + batch[r].len().max(1) - 1) as u32)
                    .collect();
                let h = hidden.dim(2)?;
                hidden
                    .reshape((rows * len, h))?
                    .index_select(&Tensor::new(last, device)?, 0)?
            }
        };
        let pooled = if self.normalize {
            let norms = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norms)?
        } else {
            pooled
        };
        Ok(pooled.to_vec2::<f32>()?)
    }

    /// The longest input, in tokens, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn dimensions(&self) -> usize {
        self.bert.config().hidden_size
    }

    pub fn vocab_size(&self) -> usize {
        self.bert.config().vocab_size
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// What it is (architecture, parameters, quantization, shape, pooling), for listings.
    pub fn description(&self) -> &crate::Description {
        &self.description
    }
}

/// The encoder's weights, by its family's loader.
fn load_family(
    config: BertConfig,
    get: &mut dyn FnMut(&str) -> Result<Tensor>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Bert> {
    match config.kind {
        bert::BertKind::Bert => Bert::load(config, get, progress),
        bert::BertKind::Nomic { .. } => nomic::load(config, get, progress),
    }
}

/// Why a model of `family` does not load as an encoder.
fn not_run(place: &str, family: &str) -> ModelError {
    ModelError::Unsupported(if ENCODER_FAMILIES.contains(&family) {
        format!("{place}: {family} is an embedding model this server does not run yet (bert and nomic-bert)")
    } else {
        format!("{place}: {family} is not an embedding model (an encoder such as bert)")
    })
}

fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Unsupported(format!(
            "{} has no .safetensors file",
            dir.display()
        )));
    }
    Ok(files)
}
