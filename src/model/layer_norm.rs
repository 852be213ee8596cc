//! LayerNorm as torch computes it: biased variance (divide by C, not C - 1), eps inside the root.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};

pub struct LayerNorm {
    /// [C]
    pub weight: Array1<f32>,
    /// [C]
    pub bias: Array1<f32>,
    pub eps: f32,
}

impl LayerNorm {
    /// x [T, C] -> [T, C]
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut y = x.to_owned(); // [T, C]
        for mut row in y.axis_iter_mut(Axis(0)) {
            let n = row.len() as f32;
            let mean = row.sum() / n;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n; // biased
            let inv_std = 1.0 / (variance + self.eps).sqrt();
            Zip::from(&mut row).and(&self.weight).and(&self.bias).for_each(|v, &w, &b| {
                *v = (*v - mean) * inv_std * w + b;
            });
        }
        y
    }
}
