//! The `k` highest logits of each row, ranked as the engine's sampler ranks them (the higher
//! first, the lower id among equals). On CUDA our kernel (`kernels/top_k.cu`) finds them, so a
//! sampled row crosses to the host as k pairs instead of the whole vocabulary; elsewhere the
//! host sorts (the logits are there already).

use crate::Result;
use candle_core::Tensor;
use std::cmp::Ordering;

/// The order logits rank in, as (id, logit): the higher logit first, the lower id among
/// equals. A total order, so the top k are one set whether taken from a whole row or a
/// shortlist; the sampler ranks by it too.
pub fn ranked(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The most [`top_k`] returns per row (the kernel's `TOP_K_MAX`).
pub const TOP_K_MAX: usize = 256;

#[cfg(feature = "cuda")]
const _: () = assert!(TOP_K_MAX == ferrollama_kernels::ffi::TOP_K_MAX);

/// Per row of `[rows, vocab]` f32 logits, its `k` highest as (id, logit), ranked.
pub fn top_k(logits: &Tensor, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
    let (rows, vocab) = logits.dims2()?;
    let k = k.min(vocab);
    if rows == 0 || k == 0 {
        return Ok(vec![Vec::new(); rows]);
    }
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() && k <= TOP_K_MAX {
        let (values, ids) = ferrollama_kernels::top_k(logits, k)?;
        let (values, ids) = (values.to_vec2::<f32>()?, ids.to_vec2::<u32>()?);
        return Ok(ids
            .into_iter()
            .zip(values)
            .map(|(ids, values)| ids.into_iter().zip(values).collect())
            .collect());
    }
    Ok(logits
        .to_vec2::<f32>()?
        .into_iter()
        .map(|row| {
            let mut ranked_row: Vec<(u32, f32)> = row
                .into_iter()
                .enumerate()
                .map(|(i, l)| (i as u32, l))
                .collect();
            ranked_row.select_nth_unstable_by(k - 1, ranked);
            ranked_row.truncate(k);
            ranked_row.sort_unstable_by(ranked);
            ranked_row
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_highest_first_and_equals_by_id() {
        let logits = Tensor::new(
            &[[0.5f32, 2.0, 2.0, -1.0, 2.0], [3.0, 1.0, 0.0, 1.0, 1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let top = top_k(&logits, 2).unwrap();
        assert_eq!(
            top,
            vec![vec![(1, 2.0), (2, 2.0)], vec![(0, 3.0), (1, 1.0)]]
        );
        assert_eq!(
            top_k(&logits, 9).unwrap()[0].len(),
            5,
            "at most the vocabulary"
        );
    }
}
