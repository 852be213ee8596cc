//! HF's `Conv1D`: the affine map of c_attn, c_proj, c_fc and mlp.c_proj.
//!
//! HF stores its weight [in, out], the transpose of `nn.Linear`. The loader
//! ([`crate::weights::Weights::conv1d`], the one place that knows) transposes it to [out, in],
//! the layout of `nn.Linear` and of wte (the lm_head), with a few floats of padding after each row
//! (`kernels::with_padded_rows`); the product takes its transposed view, so nothing is copied per
//! call. A port that forgets HF's layout fails checkpoint 02.

use ndarray::{Array1, Array2, ArrayView2};

use super::kernels;

pub struct Conv1D {
    /// [out, in]: HF's stored [in, out] weight, transposed at load; its rows padded, so not
    /// contiguous as a whole.
    pub weight: Array2<f32>,
    /// [out]
    pub bias: Array1<f32>,
}

impl Conv1D {
    /// x [T, in] -> [T, out]
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.add_bias(kernels::x_wt(x, self.weight.view())) // [T, out]
    }

    /// [`Conv1D::forward`] for an output that the next product reads (c_fc's): its rows padded for
    /// a long prompt (`kernels::x_wt_for_next_product`), the same values.
    pub fn forward_for_next_product(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.add_bias(kernels::x_wt_for_next_product(x, self.weight.view())) // [T, out]
    }

    /// y [T, out] + bias, row by row.
    fn add_bias(&self, mut y: Array2<f32>) -> Array2<f32> {
        kernels::for_each_row_block(y.view_mut(), |mut rows| {
            for mut row in rows.rows_mut() {
                match (row.as_slice_mut(), self.bias.as_slice()) {
                    // Over slices: `row += &bias` goes through an ndarray Zip, which the dev
                    // profile (what `cargo xtask validate/bench` run) compiles to a call per element.
                    (Some(row), Some(bias)) => row.iter_mut().zip(bias).for_each(|(y, &b)| *y += b),
                    _ => row += &self.bias,
                }
            }
        });
        y
    }
}
