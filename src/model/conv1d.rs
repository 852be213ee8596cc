//! HF's `Conv1D`: an affine map whose weight is stored [in, out], the transpose of `nn.Linear`.
//!
//! GPT-2 uses it for c_attn, c_proj, c_fc and mlp.c_proj. Keeping HF's [in, out] layout makes the
//! forward pass a plain `x · W + b`; the only place that knows about the layout is here and
//! [`crate::weights`], so a port that forgets the transpose fails checkpoint 02 or 05.

use ndarray::{Array1, Array2, ArrayView2, Axis};

pub struct Conv1D {
    /// [in, out], exactly as stored in model.safetensors.
    pub weight: Array2<f32>,
    /// [out]
    pub bias: Array1<f32>,
}

impl Conv1D {
    /// x [T, in] -> [T, out]
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut y = super::kernels::x_w(x.as_standard_layout().view(), self.weight.view()); // [T, out]
        y += &self.bias.view().insert_axis(Axis(0));
        y
    }

    pub fn n_out(&self) -> usize {
        self.weight.ncols()
    }
}
