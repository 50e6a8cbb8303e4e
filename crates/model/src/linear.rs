//! A weight matrix as the forward pass uses it: candle's `QMatMul`, except where this crate
//! has a faster CPU kernel for the format (Q4_1, see `cpu::q4_1`).

use crate::cpu;
use crate::error::Result;
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Module, Tensor};

pub enum Linear {
    Candle(QMatMul),
    CpuQ4_1(cpu::q4_1::Q4_1Matrix),
}

impl Linear {
    pub fn new(matrix: QMatMul) -> Result<Self> {
        if let QMatMul::QTensor(q) = &matrix {
            if q.dtype() == GgmlDType::Q4_1 && q.device().is_cpu() {
                let (rows, cols) = q.shape().dims2()?;
                return Ok(Linear::CpuQ4_1(cpu::q4_1::Q4_1Matrix::from_ggml(
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
            Linear::CpuQ4_1(matrix) => {
                let tokens = x.dim(0)?;
                let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let out = cpu::q4_1::matmul(matrix, &input, tokens);
                Ok(Tensor::from_vec(out, (tokens, matrix.rows()), x.device())?)
            }
        }
    }
}
