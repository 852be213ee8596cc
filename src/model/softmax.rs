//! Numerically stable softmax over the last axis: exp(x - max) / sum, accumulated in float64.
//!
//! Masked entries hold [`MASKED`] (torch.finfo(float32).min, what HF's eager mask adds) or -inf;
//! both give exp(...) = 0.

use ndarray::{ArrayBase, ArrayViewMut1, Axis, DataMut, Dimension, RemoveAxis};

/// The value HF's eager attention leaves at masked positions: torch.finfo(torch.float32).min.
pub const MASKED: f32 = f32::MIN;

/// Softmax of one row, in place. The exponentials and their sum are taken in float64: a float32
/// sum of 50257 terms in a row is off by ~1e-5 of a probability (CHECKPOINTS.md, 11), ten times
/// HF's own error; in float64 the result is the correctly rounded float32 of the true softmax.
///
/// A masked entry's exponential is 0 exactly; it is written as such rather than computed (libm's
/// exp is slow on the underflow path, and half the scores of a prompt are masked).
pub fn softmax_row(mut row: ArrayViewMut1<f32>) {
    let max = f64::from(row.fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
    let masked = |v: f32| v <= MASKED && f64::from(v) < max;
    let exps: Vec<f64> = row.iter().map(|&v| if masked(v) { 0.0 } else { (f64::from(v) - max).exp() }).collect();
    let sum: f64 = exps.iter().sum();
    for (v, e) in row.iter_mut().zip(exps) {
        *v = (e / sum) as f32;
    }
}

/// Softmax over the last axis of any array, in place.
pub fn softmax_last_axis<S, D>(x: &mut ArrayBase<S, D>)
where
    S: DataMut<Elem = f32>,
    D: Dimension + RemoveAxis,
{
    let last = Axis(x.ndim() - 1);
    for row in x.lanes_mut(last) {
        softmax_row(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn real_gpt2_logits_do_not_overflow() {
        // logits of real GPT-2 are large and negative: exp without the max shift is 0/0
        let mut row = array![-165.0f32, -120.0, -121.0, -300.0];
        softmax_row(row.view_mut());
        let (e0, e2) = ((-45.0f64).exp(), (-1.0f64).exp());
        let sum = 1.0 + e0 + e2 + (-180.0f64).exp();
        assert_abs_diff_eq!(row, array![(e0 / sum) as f32, (1.0 / sum) as f32, (e2 / sum) as f32, 0.0], epsilon = 1e-9);
    }

    #[test]
    fn masked_entries_get_zero_weight() {
        let mut x = array![[0.5f32, MASKED], [0.25, 0.75]];
        softmax_last_axis(&mut x);
        assert_eq!(x[[0, 0]], 1.0);
        assert_eq!(x[[0, 1]], 0.0);
        assert_abs_diff_eq!(x.row(1).sum(), 1.0, epsilon = 1e-7);
    }
}
