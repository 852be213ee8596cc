//! Numerically stable softmax over the last axis, as torch computes it: exp(x - max) / sum.
//!
//! Masked entries hold [`MASKED`] (torch.finfo(float32).min, what HF's eager mask adds) or -inf;
//! both give exp(...) = 0.

use ndarray::{ArrayBase, ArrayViewMut1, Axis, DataMut, Dimension, RemoveAxis};

/// The value HF's eager attention leaves at masked positions: torch.finfo(torch.float32).min.
pub const MASKED: f32 = f32::MIN;

/// Softmax of one row, in place.
pub fn softmax_row(mut row: ArrayViewMut1<f32>) {
    let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    row.mapv_inplace(|v| {
        let e = (v - max).exp();
        sum += e;
        e
    });
    row.mapv_inplace(|e| e / sum);
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
