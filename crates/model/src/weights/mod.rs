//! Where weights come from. Each format names tensors its own way; the model asks for a
//! [`Param`] and a [`WeightSource`] hands it back, quantized or not.

mod gguf;
mod random;
mod safetensors;

pub(crate) use self::gguf::as_u64;
pub use self::gguf::{parameter_size, GgufFile, GgufWeights};
pub use self::random::{RandomDType, RandomWeights};
pub use self::safetensors::SafetensorsWeights;

pub use crate::architecture::Param;
use crate::error::Result;
use candle_core::quantized::QMatMul;
use candle_core::Tensor;

/// A store of weights in one format. Matrices are `[out_features, in_features]`, with Q and K
/// rows in Hugging Face's rotary layout (GGUF's interleaved layout is undone on load).
pub trait WeightSource {
    /// A weight used as a matrix (or an embedding table): kept quantized when it is.
    fn matrix(&mut self, param: Param) -> Result<QMatMul>;
    /// A small weight (norms) as a dense f32 tensor.
    fn vector(&mut self, param: Param) -> Result<Tensor>;
    fn contains(&self, param: Param) -> bool;
}
