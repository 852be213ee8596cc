//! LayerNorm as torch defines it: biased variance (divide by C, not C - 1), eps inside the root;
//! mean and variance accumulated in float64.

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
            // Mean and variance in float64: a row of real GPT-2 holds a 3000 next to values of 0.1,
            // where float32 sums lose digits the output keeps.
            let n = row.len() as f64;
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let variance = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n; // biased
            let inv_std = 1.0 / (variance + f64::from(self.eps)).sqrt();
            Zip::from(&mut row).and(&self.weight).and(&self.bias).for_each(|v, &w, &b| {
                *v = (((f64::from(*v) - mean) * inv_std) as f32) * w + b;
            });
        }
        y
    }
}
