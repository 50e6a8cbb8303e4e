//! A weight matrix as the forward pass uses it: candle's `QMatMul`, except where this crate
//! has a faster CPU kernel for the format (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K: see `cpu::quant`).

use crate::cpu::quant::{self, QuantMatrix};
use crate::error::{ModelError, Result};
use candle_core::quantized::ggml_file::qtensor_from_ggml;
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
                let out = quant_forward(std::slice::from_ref(matrix), x)?;
                Ok(Tensor::from_vec(
                    out,
                    (x.dim(0)?, matrix.rows()),
                    x.device(),
                )?)
            }
        }
    }
}

/// Matrices that read the same input (attention's q, k, v; the MLP's gate and up), as one
/// matrix wherever they can be: the input is quantized once and one matmul (one launch, one
/// parallel loop) runs instead of several, which is most of a decode step.
pub enum Projections {
    /// Our CPU kernels: parts of one format joined into one matrix, formats that differ side
    /// by side in one product (`quant::matmul_parts`).
    Fused {
        matrices: Vec<QuantMatrix>,
        widths: Vec<usize>,
    },
    /// One candle matrix (on any device): quantized matrices of one format with their rows
    /// concatenated, or dense ones of one dtype.
    Joined { matrix: QMatMul, widths: Vec<usize> },
    /// Anything else (formats without a CPU kernel among others, or on a GPU): each on its
    /// own.
    Separate(Vec<Linear>),
}

impl Projections {
    pub fn new(parts: Vec<QMatMul>) -> Result<Self> {
        if let Some(cols) = common_cpu_width(&parts)? {
            let mut widths = Vec::with_capacity(parts.len());
            let mut matrices = Vec::new();
            // Runs of one format, as (dtype, raw bytes, rows).
            let mut run: Option<(GgmlDType, Vec<u8>, usize)> = None;
            for part in &parts {
                let QMatMul::QTensor(q) = part else {
                    unreachable!("checked by common_cpu_width")
                };
                let rows = q.shape().dims2()?.0;
                widths.push(rows);
                match &mut run {
                    Some((dtype, raw, run_rows)) if *dtype == q.dtype() => {
                        raw.extend_from_slice(&q.data()?);
                        *run_rows += rows;
                    }
                    _ => {
                        if let Some((dtype, raw, rows)) = run.take() {
                            matrices.push(QuantMatrix::from_ggml(dtype, &raw, rows, cols));
                        }
                        run = Some((q.dtype(), q.data()?.into_owned(), rows));
                    }
                }
            }
            if let Some((dtype, raw, rows)) = run {
                matrices.push(QuantMatrix::from_ggml(dtype, &raw, rows, cols));
            }
            return Ok(Projections::Fused { matrices, widths });
        }
        if let Some((matrix, widths)) = join(&parts)? {
            return Ok(Projections::Joined { matrix, widths });
        }
        Ok(Projections::Separate(
            parts.into_iter().map(Linear::new).collect::<Result<_>>()?,
        ))
    }

    /// `x` is `[tokens, in_features]`; returns `[tokens, sum of out_features]`, the parts side
    /// by side.
    pub fn forward_joined(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projections::Fused { matrices, widths } => {
                let out = quant_forward(matrices, x)?;
                Ok(Tensor::from_vec(
                    out,
                    (x.dim(0)?, widths.iter().sum::<usize>()),
                    x.device(),
                )?)
            }
            Projections::Joined { matrix, .. } => Ok(matrix.forward(x)?),
            Projections::Separate(parts) => {
                let outputs = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&outputs, 1)?)
            }
        }
    }

    /// `x` is `[tokens, in_features]`; returns one `[tokens, out_features]` per matrix.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Projections::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            Projections::Fused { widths, .. } | Projections::Joined { widths, .. } => {
                split(&self.forward_joined(x)?, widths)
            }
        }
    }
}

/// The columns of `joined` cut into parts of `widths`, each contiguous.
pub fn split(joined: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    widths
        .iter()
        .map(|&width| {
            let part = joined.narrow(1, offset, width)?.contiguous()?;
            offset += width;
            Ok(part)
        })
        .collect()
}

/// One matrix with the rows of all `parts`, when they share a quant format (or a dense dtype),
/// a device and an input width; with their widths.
fn join(parts: &[QMatMul]) -> Result<Option<(QMatMul, Vec<usize>)>> {
    let mut widths = Vec::with_capacity(parts.len());
    let dense: Option<Vec<&Tensor>> = parts
        .iter()
        .map(|p| match p {
            QMatMul::Tensor(t) => Some(t),
            _ => None,
        })
        .collect();
    if let Some(dense) = dense {
        let first = dense[0];
        if dense.iter().any(|t| {
            t.dtype() != first.dtype()
                || t.dim(1).ok() != first.dim(1).ok()
                || !t.device().same_device(first.device())
        }) {
            return Ok(None);
        }
        for t in &dense {
            widths.push(t.dim(0)?);
        }
        return Ok(Some((QMatMul::Tensor(Tensor::cat(&dense, 0)?), widths)));
    }
    let quantized: Option<Vec<&std::sync::Arc<candle_core::quantized::QTensor>>> = parts
        .iter()
        .map(|p| match p {
            QMatMul::QTensor(q) => Some(q),
            _ => None,
        })
        .collect();
    let Some(quantized) = quantized else {
        return Ok(None);
    };
    let first = quantized[0];
    let cols = first.shape().dims2()?.1;
    let mut raw = Vec::new();
    for q in &quantized {
        let (rows, c) = q.shape().dims2()?;
        if q.dtype() != first.dtype() || c != cols || !q.device().same_device(&first.device()) {
            return Ok(None);
        }
        // On a GPU this is a copy to the host and back, once per matrix at load.
        raw.extend_from_slice(&q.data()?);
        widths.push(rows);
    }
    let rows = widths.iter().sum::<usize>();
    let joined = qtensor_from_ggml(first.dtype(), &raw, vec![rows, cols], &first.device())?;
    Ok(Some((QMatMul::from_qtensor(joined)?, widths)))
}

/// `x` (`[tokens, cols]`) through our CPU kernels: `[tokens, Σ rows]`, flat. A malformed file
/// can pair matrices of the wrong width; candle's path reports it, so do we.
fn quant_forward(matrices: &[QuantMatrix], x: &Tensor) -> Result<Vec<f32>> {
    let (tokens, width) = x.dims2()?;
    if let Some(m) = matrices.iter().find(|m| m.cols() != width) {
        return Err(ModelError::Config(format!(
            "a {width}-wide input meets a matrix of {} columns",
            m.cols()
        )));
    }
    let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    Ok(quant::matmul_parts(matrices, &input, tokens))
}

/// The input width all `parts` share, if every one is quantized in a format with a CPU
/// kernel (not necessarily the same one) and lives on the CPU.
fn common_cpu_width(parts: &[QMatMul]) -> Result<Option<usize>> {
    let mut common = None;
    for part in parts {
        let QMatMul::QTensor(q) = part else {
            return Ok(None);
        };
        if !(has_cpu_kernel(q.dtype()) && q.device().is_cpu()) {
            return Ok(None);
        }
        let cols = q.shape().dims2()?.1;
        match common {
            None => common = Some(cols),
            Some(c) if c == cols => {}
            Some(_) => return Ok(None),
        }
    }
    Ok(common)
}

fn has_cpu_kernel(dtype: GgmlDType) -> bool {
    QuantMatrix::format_for(dtype).is_some()
}
