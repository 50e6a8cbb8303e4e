//! A weight matrix as the forward pass uses it: candle's `QMatMul`, except where this crate
//! has a faster CPU kernel for the format (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K: see `cpu::quant`).

use crate::cpu::quant::{self, QuantMatrix};
use crate::error::{ModelError, Result};
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Module, Tensor};

pub enum Linear {
    Candle(QMatMul),
    CpuQuant(QuantMatrix),
}

impl Linear {
    pub fn new(matrix: QMatMul) -> Result<Self> {
        if let QMatMul::QTensor(q) = &matrix {
            if has_cpu_kernel(q.dtype()) && q.device().is_cpu() {
                let (rows, cols) = q.shape().dims2()?;
                return Ok(Linear::CpuQuant(QuantMatrix::from_ggml(
                    q.dtype(),
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
                let out = quant_forward(matrix, x)?;
                Ok(Tensor::from_vec(
                    out,
                    (x.dim(0)?, matrix.rows()),
                    x.device(),
                )?)
            }
        }
    }
}

/// Matrices that read the same input (attention's q, k, v; the MLP's gate and up). When they
/// share a CPU quant format they become one matrix: the input is quantized once and one
/// parallel loop runs instead of several, which is what a small model's decode step is made
/// of. Otherwise each runs on its own.
pub enum Projections {
    Fused {
        matrix: QuantMatrix,
        widths: Vec<usize>,
    },
    Separate(Vec<Linear>),
}

impl Projections {
    pub fn new(parts: Vec<QMatMul>) -> Result<Self> {
        if let Some((dtype, cols)) = common_cpu_format(&parts)? {
            let mut raw = Vec::new();
            let mut widths = Vec::with_capacity(parts.len());
            for part in &parts {
                let QMatMul::QTensor(q) = part else {
                    unreachable!("checked by common_cpu_format")
                };
                raw.extend_from_slice(&q.data()?);
                widths.push(q.shape().dims2()?.0);
            }
            let rows = widths.iter().sum();
            let matrix = QuantMatrix::from_ggml(dtype, &raw, rows, cols);
            return Ok(Projections::Fused { matrix, widths });
        }
        Ok(Projections::Separate(
            parts.into_iter().map(Linear::new).collect::<Result<_>>()?,
        ))
    }

    /// `x` is `[tokens, in_features]`; returns one `[tokens, out_features]` per matrix.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Projections::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            Projections::Fused { matrix, widths } => {
                let tokens = x.dim(0)?;
                let out = quant_forward(matrix, x)?;
                let total = matrix.rows();
                let mut offset = 0;
                widths
                    .iter()
                    .map(|&width| {
                        let mut part = Vec::with_capacity(tokens * width);
                        for row in out.chunks_exact(total) {
                            part.extend_from_slice(&row[offset..offset + width]);
                        }
                        offset += width;
                        Ok(Tensor::from_vec(part, (tokens, width), x.device())?)
                    })
                    .collect()
            }
        }
    }
}

/// `x` (`[tokens, cols]`) through our CPU kernel: `[tokens, rows]`, flat. A malformed file
/// can pair matrices of the wrong width; candle's path reports it, so do we.
fn quant_forward(matrix: &QuantMatrix, x: &Tensor) -> Result<Vec<f32>> {
    let (tokens, width) = x.dims2()?;
    if width != matrix.cols() {
        return Err(ModelError::Config(format!(
            "a {width}-wide input meets a matrix of {} columns",
            matrix.cols()
        )));
    }
    let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    Ok(quant::matmul(matrix, &input, tokens))
}

/// The one quant type with a CPU kernel and the input width all `parts` share, if they do.
fn common_cpu_format(parts: &[QMatMul]) -> Result<Option<(GgmlDType, usize)>> {
    let mut common = None;
    for part in parts {
        let QMatMul::QTensor(q) = part else {
            return Ok(None);
        };
        if !(has_cpu_kernel(q.dtype()) && q.device().is_cpu()) {
            return Ok(None);
        }
        let key = (q.dtype(), q.shape().dims2()?.1);
        match common {
            None => common = Some(key),
            Some(c) if c == key => {}
            Some(_) => return Ok(None),
        }
    }
    Ok(common)
}

fn has_cpu_kernel(dtype: GgmlDType) -> bool {
    QuantMatrix::format_for(dtype).is_some()
}
