//! GPT-2's feed-forward network: c_fc, gelu_new, c_proj.

use ndarray::ArrayView2;

use super::conv1d::Conv1D;
use crate::candidate::MlpOutput;

pub struct Mlp {
    /// [C, 4C]
    pub c_fc: Conv1D,
    /// [4C, C]
    pub c_proj: Conv1D,
}

impl Mlp {
    /// x [T, C] (ln_2 output) -> gelu [T, 4C] and output [T, C]
    pub fn forward(&self, x: ArrayView2<f32>) -> MlpOutput {
        let mut gelu = self.c_fc.forward(x); // [T, 4C]
        gelu.mapv_inplace(gelu_new);
        let output = self.c_proj.forward(gelu.view()); // [T, C]
        MlpOutput { gelu, output }
    }
}

/// GPT-2's activation, the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
/// Not torch's default erf GELU: the two differ by up to ~1e-3.
pub fn gelu_new(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}
