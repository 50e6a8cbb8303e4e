//! What of a step's logits crosses to the host: on the CPU every row whole (it is in memory
//! already); on a GPU only what each row's draw needs ([`Need`]), so 32k floats per sequence
//! need not come back.

use candle_core::{Tensor, D};
use ferrollama_model::top_k::top_k;

use crate::sampler::{Need, Normalizer, Shortlist};

/// What the step brings back for one logit row.
pub enum Row {
    /// The whole row, with its normalizer where the device summed one.
    Logits(Vec<f32>, Option<Normalizer>),
    /// A plain greedy pick, made on the device.
    Argmax(u32),
    /// The row's head, and the row itself left on the device in case the draw falls past it.
    Shortlist(Shortlist, Tensor),
}

/// The rows of `logits` (`[rows, vocab]`, f32): on the CPU every row whole; on a GPU
/// (`on_device`) what `needs` says of each (argmaxes, shortlists, normalizers and whole rows
/// each in one launch and one copy).
pub fn read_rows(
    logits: &Tensor,
    needs: &[Need],
    on_device: bool,
) -> ferrollama_model::Result<Vec<Row>> {
    if !on_device {
        return Ok(logits
            .to_vec2::<f32>()?
            .into_iter()
            .map(|row| Row::Logits(row, None))
            .collect());
    }
    let (_, vocab) = logits.dims2()?;
    let device = logits.device();
    let select = |index: &[u32]| logits.index_select(&Tensor::new(index, device)?, 0);
    let mut rows: Vec<Option<Row>> = (0..needs.len()).map(|_| None).collect();

    let argmax: Vec<u32> = rows_where(needs, |n| matches!(n, Need::Argmax));
    if !argmax.is_empty() {
        let picked = select(&argmax)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (&i, token) in argmax.iter().zip(picked) {
            rows[i as usize] = Some(Row::Argmax(token));
        }
    }

    let normalizers = normalizers(logits, needs)?;
    let whole = rows_where(needs, |n| matches!(n, Need::Whole { .. }));
    if !whole.is_empty() {
        for (&i, row) in whole.iter().zip(select(&whole)?.to_vec2::<f32>()?) {
            rows[i as usize] = Some(Row::Logits(row, normalizers[i as usize]));
        }
    }

    // Shortlists: (row, length, penalized tokens).
    let short: Vec<(u32, usize, &[u32])> = (0..needs.len() as u32)
        .filter_map(|i| match &needs[i as usize] {
            Need::Shortlist { len, penalized, .. } => Some((i, *len, penalized.as_slice())),
            _ => None,
        })
        .collect();
    if let Some(longest) = short.iter().map(|s| s.1).max() {
        let index: Vec<u32> = short.iter().map(|s| s.0).collect();
        let tops = top_k(&select(&index)?, longest)?;
        // The penalized tokens' own logits, all rows' in one gather.
        let at: Vec<u32> = short
            .iter()
            .flat_map(|&(i, _, penalized)| penalized.iter().map(move |&t| i * vocab as u32 + t))
            .collect();
        let mut own = if at.is_empty() {
            Vec::new()
        } else {
            logits
                .flatten_all()?
                .index_select(&Tensor::new(at.as_slice(), device)?, 0)?
                .to_vec1::<f32>()?
        }
        .into_iter();
        for (&(i, len, penalized), mut top) in short.iter().zip(tops) {
            top.truncate(len);
            let shortlist = Shortlist {
                complete: top.len() == vocab,
                top,
                penalized: penalized
                    .iter()
                    .map(|&t| (t, own.next().unwrap_or(f32::NEG_INFINITY)))
                    .collect(),
                normalizer: normalizers[i as usize],
            };
            rows[i as usize] = Some(Row::Shortlist(shortlist, logits.get(i as usize)?));
        }
    }
    Ok(rows
        .into_iter()
        .map(|row| row.expect("every row is read"))
        .collect())
}

fn rows_where(needs: &[Need], want: fn(&Need) -> bool) -> Vec<u32> {
    (0..needs.len() as u32)
        .filter(|&i| want(&needs[i as usize]))
        .collect()
}

/// The normalizers the needs ask for, summed on the device for all rows at once; None for
/// the other rows.
fn normalizers(
    logits: &Tensor,
    needs: &[Need],
) -> ferrollama_model::Result<Vec<Option<Normalizer>>> {
    let asked: Vec<(u32, f32)> = (0..needs.len() as u32)
        .filter_map(|i| match &needs[i as usize] {
            Need::Whole { normalize } | Need::Shortlist { normalize, .. } => {
                Some((i, (*normalize)?))
            }
            Need::Argmax => None,
        })
        .collect();
    let mut out = vec![None; needs.len()];
    if asked.is_empty() {
        return Ok(out);
    }
    let device = logits.device();
    let index: Vec<u32> = asked.iter().map(|a| a.0).collect();
    let temperature: Vec<f32> = asked.iter().map(|a| a.1).collect();
    let rows = logits.index_select(&Tensor::new(index.as_slice(), device)?, 0)?;
    let max = rows.max_keepdim(D::Minus1)?;
    let sum = rows
        .broadcast_sub(&max)?
        .broadcast_div(&Tensor::new(temperature.as_slice(), device)?.unsqueeze(1)?)?
        .exp()?
        .sum(D::Minus1)?;
    let (max, sum) = (max.squeeze(1)?.to_vec1::<f32>()?, sum.to_vec1::<f32>()?);
    for (k, &(i, _)) in asked.iter().enumerate() {
        out[i as usize] = Some(Normalizer {
            max: max[k],
            sum: sum[k] as f64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{read_rows, Need, Row};
    use crate::sampler::Normalizer;
    use candle_core::{Device, Tensor};

    #[test]
    fn on_a_device_each_row_comes_back_as_its_draw_needs() {
        let logits = Tensor::new(
            &[
                [0.1f32, 2.0, -1.0, 0.3],
                [3.0, 0.5, 0.2, 0.1],
                [0.0, 0.1, 0.7, 0.6],
                [0.4, 0.9, 0.8, 0.1],
                [1.0, 0.0, 1.0, 0.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let shortlist = |len, penalized: &[u32], normalize| Need::Shortlist {
            len,
            penalized: penalized.to_vec(),
            normalize,
        };
        let needs = [
            Need::Argmax,
            Need::Whole { normalize: None },
            shortlist(2, &[0], None),
            shortlist(1, &[], None),
            shortlist(4, &[], Some(2.0)),
        ];
        let rows = read_rows(&logits, &needs, true).unwrap();
        assert!(matches!(rows[0], Row::Argmax(1)));
        assert!(matches!(&rows[1], Row::Logits(r, None) if r == &[3.0, 0.5, 0.2, 0.1]));
        // The two highest, then the penalized token's own logit.
        let Row::Shortlist(s, rest) = &rows[2] else {
            panic!("a shortlist")
        };
        assert_eq!(
            (s.top.as_slice(), s.penalized.as_slice()),
            (&[(2, 0.7), (3, 0.6)][..], &[(0, 0.0)][..])
        );
        assert!(!s.complete && s.normalizer.is_none());
        assert_eq!(rest.to_vec1::<f32>().unwrap(), [0.0, 0.1, 0.7, 0.6]);
        let Row::Shortlist(s, _) = &rows[3] else {
            panic!("a shortlist")
        };
        assert_eq!(s.top, [(1, 0.9)]);
        // All four tokens, and the normalizer at temperature 2: 2 · e⁰ + 2 · e^(−1/2).
        let Row::Shortlist(s, _) = &rows[4] else {
            panic!("a shortlist")
        };
        assert!(s.complete);
        let Normalizer { max, sum } = s.normalizer.unwrap();
        assert_eq!(max, 1.0);
        assert!((sum - (2.0 + 2.0 * (-0.5f64).exp())).abs() < 1e-6, "{sum}");
        let all = read_rows(&logits, &needs, false).unwrap();
        assert!(all.iter().all(|r| matches!(r, Row::Logits(_, None))));
    }
}
