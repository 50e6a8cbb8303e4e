//! GGUF files (llama.cpp's format, and Ollama's blobs), memory-mapped. Quantized matrices stay
//! quantized; candle's kernels multiply them.

use super::{Param, WeightSource};
use crate::architecture::Architecture;
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, gguf_file, QMatMul};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::sync::Arc;

/// A parsed GGUF header over the mapped file.
pub struct GgufFile {
    mmap: memmap2::Mmap,
    content: gguf_file::Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: mapped read-only; as with every mmap loader, the file must not be truncated
        // while it is in use.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        // candle's reader panics on some corrupt headers (`general.alignment` = 0 divides by
        // zero, found by fuzz/gguf_header): such a file is refused like any other bad one.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gguf_file::Content::read(&mut std::io::Cursor::new(&mmap[..]))
        }));
        let content = read
            .map_err(|_| {
                ModelError::Unsupported(format!("{}: corrupt GGUF header", path.display()))
            })?
            .map_err(|e| ModelError::Unsupported(format!("{}: {e}", path.display())))?;
        check_tensor_extents(&content, mmap.len() as u64)
            .map_err(|e| ModelError::Unsupported(format!("{}: {e}", path.display())))?;
        Ok(Self { mmap, content })
    }

    pub fn metadata(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        self.metadata(key)?.to_string().ok().map(String::as_str)
    }

    pub fn uint(&self, key: &str) -> Option<u64> {
        as_u64(self.metadata(key)?)
    }

    pub fn float(&self, key: &str) -> Option<f64> {
        match self.metadata(key)? {
            gguf_file::Value::F32(v) => Some(*v as f64),
            gguf_file::Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.metadata(key)?.to_bool().ok()
    }

    pub fn array(&self, key: &str) -> Option<&Vec<gguf_file::Value>> {
        self.metadata(key)?.to_vec().ok()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The tensor's raw bytes inside the mapping, with its ggml type and row-major dims.
    fn raw_tensor(&self, name: &str) -> Result<(gguf_file::TensorInfo, &[u8])> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight(name.into()))?;
        let elems = info.shape.elem_count();
        let dtype = info.ggml_dtype;
        let bytes = elems / dtype.block_size() * dtype.type_size();
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        let data = self.mmap.get(start..start + bytes).ok_or_else(|| {
            ModelError::Unsupported(format!("tensor {name} lies past the end of the file"))
        })?;
        let info = gguf_file::TensorInfo {
            ggml_dtype: dtype,
            shape: info.shape.clone(),
            offset: info.offset,
        };
        Ok((info, data))
    }

    /// A tensor read whole into f32 on `device`, whatever its ggml type (small models, such as
    /// embedding encoders, run dense).
    pub fn dequantized(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (info, data) = self.raw_tensor(name)?;
        let t = qtensor_from_ggml(
            info.ggml_dtype,
            data,
            info.shape.dims().to_vec(),
            &Device::Cpu,
        )?;
        Ok(t.dequantize(&Device::Cpu)?.to_device(device)?)
    }

    /// The architecture config from `<arch>.*` metadata (llama.cpp's `llama` architecture,
    /// which Mistral GGUFs use as well).
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self.string("general.architecture").unwrap_or("llama");
        let architecture = Architecture::of_gguf(arch)?;
        let key = |k: &str| format!("{arch}.{k}");
        let need = |k: &str| {
            self.uint(&key(k))
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Config(format!("GGUF lacks {}", key(k))))
        };
        let hidden_size = need("embedding_length")?;
        let num_heads = need("attention.head_count")?;
        let vocab_size = match self.uint(&key("vocab_size")) {
            Some(v) => v as usize,
            None => self
                .array("tokenizer.ggml.tokens")
                .map(Vec::len)
                .ok_or_else(|| ModelError::Config("GGUF has no vocabulary size".into()))?,
        };
        let rope_scaling = if self.has_tensor("rope_freqs.weight") {
            let t = self.dequantized("rope_freqs.weight", &Device::Cpu)?;
            Some(RopeScaling::Factors(t.to_vec1::<f32>()?))
        } else {
            match self.string(&key("rope.scaling.type")) {
                Some("linear") => Some(RopeScaling::Linear {
                    factor: self.float(&key("rope.scaling.factor")).unwrap_or(1.0),
                }),
                Some("none") | None => None,
                Some(other) => {
                    return Err(ModelError::Unsupported(format!("rope scaling `{other}`")))
                }
            }
        };
        let config = ModelConfig {
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_layers: need("block_count")?,
            num_heads,
            num_kv_heads: self
                .uint(&key("attention.head_count_kv"))
                .map_or(num_heads, |v| v as usize),
            head_dim: self
                .uint(&key("attention.key_length"))
                .map_or(hidden_size / num_heads.max(1), |v| v as usize),
            rms_norm_eps: self
                .float(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: self.float(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: self
                .uint(&key("context_length"))
                .map_or(4096, |v| v as usize),
            sliding_window: self
                .uint(&key("attention.sliding_window"))
                .map(|v| v as usize),
            tie_word_embeddings: !self.has_tensor(&architecture.gguf_name(Param::Output)),
            architecture,
        };
        config.validate()?;
        Ok(config)
    }
}

/// A tensor's element count, or None when its dimensions overflow (a corrupt header).
fn elements(shape: &candle_core::Shape) -> Option<u64> {
    shape
        .dims()
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
}

/// Every tensor's bytes lie inside the file: a header that claims more (corrupt, truncated or
/// hostile) is refused here, before any size computed from it is trusted.
fn check_tensor_extents(
    content: &gguf_file::Content,
    file_len: u64,
) -> std::result::Result<(), String> {
    for (name, t) in &content.tensor_infos {
        let block = t.ggml_dtype.block_size() as u64;
        let bytes = elements(&t.shape)
            .filter(|n| n % block == 0)
            .and_then(|n| (n / block).checked_mul(t.ggml_dtype.type_size() as u64));
        let end = bytes.and_then(|b| {
            content
                .tensor_data_offset
                .checked_add(t.offset)?
                .checked_add(b)
        });
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(format!(
                    "tensor {name} ({:?}) does not fit in the file",
                    t.shape.dims()
                ))
            }
        }
    }
    Ok(())
}

impl GgufFile {
    /// Elements of every tensor (from the header; no tensor data is touched).
    pub fn parameters(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|t| elements(&t.shape).unwrap_or(0))
            .fold(0, u64::saturating_add)
    }

    /// llama.cpp's name for the file type (`Q4_0`, `Q4_K_M`), as Ollama prints it; without
    /// one, the type that holds the most elements.
    pub fn quantization(&self) -> String {
        self.uint("general.file_type")
            .and_then(file_type_name)
            .map_or_else(|| self.main_tensor_type(), str::to_string)
    }
}

impl GgufFile {
    /// Without `general.file_type`: the type that holds the most elements (`Q4_K`, `F16`).
    fn main_tensor_type(&self) -> String {
        let mut elements: Vec<(String, u64)> = Vec::new();
        for info in self.content.tensor_infos.values() {
            let name = format!("{:?}", info.ggml_dtype);
            // candle spells k-quants `Q4K`; llama.cpp and Ollama `Q4_K`.
            let name = match name.strip_suffix('K') {
                Some(stem) => format!("{stem}_K"),
                None => name,
            };
            match elements.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += info.shape.elem_count() as u64,
                None => elements.push((name, info.shape.elem_count() as u64)),
            }
        }
        elements
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .map_or_else(|| "unknown".to_string(), |(name, _)| name)
    }
}

/// A parameter count as Ollama writes it: `7.2B`, `134.5M`.
pub fn parameter_size(parameters: u64) -> String {
    match parameters {
        p if p >= 1_000_000_000 => format!("{:.1}B", p as f64 / 1e9),
        p if p >= 1_000_000 => format!("{:.1}M", p as f64 / 1e6),
        p => p.to_string(),
    }
}

/// llama.cpp's `llama_ftype`, by number, as Ollama prints it.
fn file_type_name(file_type: u64) -> Option<&'static str> {
    const NAMES: [(u64, &str); 27] = [
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (8, "Q5_0"),
        (9, "Q5_1"),
        (10, "Q2_K"),
        (11, "Q3_K_S"),
        (12, "Q3_K_M"),
        (13, "Q3_K_L"),
        (14, "Q4_K_S"),
        (15, "Q4_K_M"),
        (16, "Q5_K_S"),
        (17, "Q5_K_M"),
        (18, "Q6_K"),
        (19, "IQ2_XXS"),
        (20, "IQ2_XS"),
        (21, "Q2_K_S"),
        (22, "IQ3_XS"),
        (23, "IQ3_XXS"),
        (24, "IQ1_S"),
        (25, "IQ4_NL"),
        (26, "IQ3_S"),
        (27, "IQ3_M"),
        (30, "IQ4_XS"),
        (32, "BF16"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == file_type)
        .map(|(_, name)| *name)
}

pub(crate) fn as_u64(value: &gguf_file::Value) -> Option<u64> {
    use gguf_file::Value::*;
    match *value {
        U8(v) => Some(v as u64),
        I8(v) => u64::try_from(v).ok(),
        U16(v) => Some(v as u64),
        I16(v) => u64::try_from(v).ok(),
        U32(v) => Some(v as u64),
        I32(v) => u64::try_from(v).ok(),
        U64(v) => Some(v),
        I64(v) => u64::try_from(v).ok(),
        _ => None,
    }
}

/// Weights out of a [`GgufFile`].
pub struct GgufWeights {
    file: Arc<GgufFile>,
    architecture: Architecture,
    device: Device,
    num_heads: usize,
    num_kv_heads: usize,
}

impl GgufWeights {
    pub fn new(file: Arc<GgufFile>, config: &ModelConfig, device: &Device) -> Self {
        Self {
            file,
            architecture: config.architecture,
            device: device.clone(),
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
        }
    }

    fn qtensor(&self, param: Param) -> Result<candle_core::quantized::QTensor> {
        let (info, data) = self.file.raw_tensor(&self.architecture.gguf_name(param))?;
        let dims = info.shape.dims().to_vec();
        let heads = match param {
            Param::Q(_) => Some(self.num_heads),
            Param::K(_) => Some(self.num_kv_heads),
            _ => None,
        };
        Ok(match heads {
            Some(heads) => {
                let rows = unpermute_rotary_rows(data, dims[0], heads);
                qtensor_from_ggml(info.ggml_dtype, &rows, dims, &self.device)?
            }
            None => qtensor_from_ggml(info.ggml_dtype, data, dims, &self.device)?,
        })
    }
}

/// llama.cpp's converter permutes the rows of Q and K so that each head's rotary pairs sit
/// side by side (`x[2i], x[2i+1]`). Moving the rows back gives Hugging Face's layout (pairs
/// `x[i], x[i + d/2]`), so one rotary kernel serves every format. Rows are whole quantization
/// blocks, so this works on quantized bytes.
fn unpermute_rotary_rows(data: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = data.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for row in 0..rows {
        let (head, within) = (row / head_dim, row % head_dim);
        let (part, pair) = (within / half, within % half);
        let src = head * head_dim + 2 * pair + part;
        out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
    }
    out
}

impl WeightSource for GgufWeights {
    fn matrix(&mut self, param: Param) -> Result<QMatMul> {
        Ok(QMatMul::from_qtensor(self.qtensor(param)?)?)
    }

    fn vector(&mut self, param: Param) -> Result<Tensor> {
        Ok(self
            .qtensor(param)?
            .dequantize(&self.device)?
            .to_dtype(DType::F32)?)
    }

    fn contains(&self, param: Param) -> bool {
        self.file.has_tensor(&self.architecture.gguf_name(param))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // 2 heads of dim 4, one byte per row: llama.cpp turns rows [0,1,2,3] of a head into
        // [0,2,1,3] (reshape(h, 2, d/2).swapaxes(1, 2)).
        let permuted = [0u8, 2, 1, 3, 4, 6, 5, 7];
        assert_eq!(
            unpermute_rotary_rows(&permuted, 8, 2),
            vec![0, 1, 2, 3, 4, 5, 6, 7]
        );
    }
}
