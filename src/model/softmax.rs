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
pub fn softmax_row(mut row: ArrayViewMut1<f32>) {
    let max = f64::from(row.fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
    let exps: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
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
