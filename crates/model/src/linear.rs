//! A weight matrix as the forward pass uses it: candle's `QMatMul`, except where this crate
//! has a faster CPU kernel for the format (Q4_0, Q4_1, Q8_0: see `cpu::quant`).

use crate::cpu::quant::{self, Format, QuantMatrix};
use crate::error::Result;
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Module, Tensor};

pub enum Linear {
    Candle(QMatMul),
    CpuQuant(QuantMatrix),
}

impl Linear {
    pub fn new(matrix: QMatMul) -> Result<Self> {
        if let QMatMul::QTensor(q) = &matrix {
            let format = match q.dtype() {
                GgmlDType::Q4_0 => Some(Format::Q4_0),
                GgmlDType::Q4_1 => Some(Format::Q4_1),
                GgmlDType::Q8_0 => Some(Format::Q8_0),
                _ => None,
            };
            if let (Some(format), true) = (format, q.device().is_cpu()) {
                let (rows, cols) = q.shape().dims2()?;
                return Ok(Linear::CpuQuant(QuantMatrix::from_ggml(
                    format,
                    &q.data()?,
                    rows,
                    cols,
                )));
            }
        }
        Ok(Linear::Candle(matrix))
    }

    /// `x` is `[tokens, in_features]`; returns `[tokens, out_features]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::CpuQuant(matrix) => {
                let tokens = x.dim(0)?;
                let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let out = quant::matmul(matrix, &input, tokens);
                Ok(Tensor::from_vec(out, (tokens, matrix.rows()), x.device())?)
            }
        }
    }
}
