//! From last-position logits to a token: checkpoints 10 (argmax) and 11 (softmax, temperature, top-k),
//! in the order HF's generate applies them: temperature, then top-k, then softmax.

use ndarray::{Array1, ArrayView1};

use crate::error::{Error, Result};
use crate::model::softmax::softmax_row;
use crate::port::Sampling;

/// The id of the largest logit (the first one on a tie, as torch.argmax). NaN is an error.
pub fn argmax(logits: ArrayView1<f32>) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            return Err(Error::NonFinite(format!("logit {i} is NaN: no token can be chosen")));
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    let (id, _) = best.ok_or_else(|| Error::Input("argmax of an empty logits vector".into()))?;
    Ok(id as u32)
}

/// softmax(logits / temperature) [V].
pub fn softmax_with_temperature(logits: ArrayView1<f32>, temperature: f32) -> Result<Array1<f32>> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Input(format!("temperature {temperature} must be a positive number")));
    }
    let mut probs = logits.mapv(|v| v / temperature); // [V]
    softmax_row(probs.view_mut());
    Ok(probs)
}

/// HF's TemperatureLogitsWarper then TopKLogitsWarper then softmax: the distribution sampling
/// draws from. Logits below the k-th largest get probability 0 (ties with it are kept).
pub fn warped_probs(logits: ArrayView1<f32>, temperature: f32, top_k: usize) -> Result<Array1<f32>> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Input(format!("temperature {temperature} must be a positive number")));
    }
    let mut scores = logits.mapv(|v| v / temperature); // [V]
    if let Some(&kth) = top_k_ids(scores.view(), top_k).last() {
        let threshold = scores[kth as usize];
        scores.mapv_inplace(|v| if v < threshold { f32::NEG_INFINITY } else { v });
    }
    softmax_row(scores.view_mut());
    Ok(scores)
}

/// Checkpoint 11's three outputs: softmax(logits), the warped distribution and the top-k ids.
pub fn distributions(logits: ArrayView1<f32>, temperature: f32, top_k: usize) -> Result<Sampling> {
    Ok(Sampling {
        probs: softmax_with_temperature(logits, 1.0)?,
        probs_warped: warped_probs(logits, temperature, top_k)?,
        top_ids: top_k_ids(logits, top_k),
    })
}

/// The ids of the k largest logits, largest first (torch.topk, sorted).
pub fn top_k_ids(logits: ArrayView1<f32>, k: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(ids.len());
    let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if k < ids.len() {
        ids.select_nth_unstable_by(k, by_logit_desc);
    }
    ids.truncate(k);
    ids.sort_by(by_logit_desc);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima_and_refuses_nan() {
        assert_eq!(argmax(array![1.0, 3.0, 3.0, 2.0].view()).unwrap(), 1);
        assert!(argmax(array![1.0, f32::NAN].view()).is_err());
    }

    #[test]
    fn top_k_keeps_the_k_largest_in_order() {
        assert_eq!(top_k_ids(array![0.1, 0.9, 0.5, 0.7].view(), 2), vec![1, 3]);
        let probs = warped_probs(array![0.1, 0.9, 0.5, 0.7].view(), 1.0, 2).unwrap();
        assert_eq!(probs[0], 0.0);
        assert_eq!(probs[2], 0.0);
        assert!((probs.sum() - 1.0).abs() < 1e-6);
    }
}
