//! LayerNorm as torch defines it: biased variance (divide by C, not C - 1), eps inside the root;
//! mean and variance accumulated in float64, in 8 interleaved partial sums (`lanes`).

use multiversion::multiversion;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::kernels;
use super::lanes::sum_in_lanes;

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
        let eps = f64::from(self.eps);
        kernels::for_each_row_block(y.view_mut(), |mut rows| {
            for mut row in rows.axis_iter_mut(Axis(0)) {
                match (row.as_slice_mut(), self.weight.as_slice(), self.bias.as_slice()) {
                    (Some(row), Some(weight), Some(bias)) => normalize_row(row, weight, bias, eps),
                    _ => {
                        let (mut values, weight, bias) = (row.to_vec(), self.weight.to_vec(), self.bias.to_vec());
                        normalize_row(&mut values, &weight, &bias, eps);
                        row.assign(&ArrayView1::from(&values));
                    }
                }
            }
        });
        y
    }
}

/// One row, in place: (v - mean) / sqrt(variance + eps) * weight + bias, with the mean and the
/// (biased) variance in float64: a row of real GPT-2 holds a 3000 next to values of 0.1, where
/// float32 sums lose digits the output keeps. Over slices, and compiled for AVX2 and AVX-512 too
/// (`multiversion`; the same results on each, as Rust never fuses a multiply and an add): an
/// ndarray Zip compiled to a call per element in the dev profile (what `cargo xtask
/// validate/bench` run), and the baseline build to two float64 lanes.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f+avx512bw+avx512cd+avx512dq+avx512vl", "x86_64+avx+avx2+fma"))]
fn normalize_row(row: &mut [f32], weight: &[f32], bias: &[f32], eps: f64) {
    let n = row.len() as f64;
    let mean = sum_in_lanes(row, row.len(), f64::from) / n;
    let variance = sum_in_lanes(row, row.len(), |v| (f64::from(v) - mean).powi(2)) / n; // biased
    let inv_std = 1.0 / (variance + eps).sqrt();
    for (v, (&w, &b)) in row.iter_mut().zip(weight.iter().zip(bias)) {
        *v = (((f64::from(*v) - mean) * inv_std) as f32) * w + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    /// The float64 formula, for comparison.
    fn layer_norm_f64(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        x.iter().zip(w).zip(b).map(|((v, w), b)| (v - mean) / (var + eps).sqrt() * w + b).collect()
    }

    #[test]
    fn a_row_with_a_3000_channel_keeps_its_small_values() {
        let x = array![[3000.0f32, 0.1, -0.2, 0.15, 0.05, -0.1]];
        let ln = LayerNorm { weight: array![0.01f32, 1.5, 0.8, 2.0, 1.0, 0.3], bias: array![0.0f32, 0.2, -0.5, 0.1, 0.0, 0.4], eps: 1e-5 };
        let to64 = |a: &Array1<f32>| a.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        let expected =
            layer_norm_f64(&x.row(0).iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), &to64(&ln.weight), &to64(&ln.bias), 1e-5);
        let expected = Array2::from_shape_vec((1, 6), expected.into_iter().map(|v| v as f32).collect()).expect("6 values");
        assert_abs_diff_eq!(ln.forward(x.view()), expected, epsilon = 1e-6);
    }

    #[test]
    fn rows_of_any_width_match_float64_with_a_3000_channel() {
        // widths below, at and past the 8 lanes, and GPT-2 small's
        for c in [1, 7, 8, 9, 29, 768] {
            let x = Array2::from_shape_fn((2, c), |(i, j)| if j == c / 2 { 3000.0 } else { ((i * 7 + j * 13) % 11) as f32 * 0.03 - 0.15 });
            let ln = LayerNorm {
                weight: Array1::from_shape_fn(c, |j| 0.5 + (j % 5) as f32 * 0.3),
                bias: Array1::from_shape_fn(c, |j| (j % 3) as f32 * 0.1 - 0.1),
                eps: 1e-5,
            };
            let to64 = |a: ndarray::ArrayView1<f32>| a.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
            for (i, row) in ln.forward(x.view()).rows().into_iter().enumerate() {
                let expected = layer_norm_f64(&to64(x.row(i)), &to64(ln.weight.view()), &to64(ln.bias.view()), 1e-5);
                for (j, (&ours, truth)) in row.iter().zip(expected).enumerate() {
                    assert!(
                        (f64::from(ours) - truth).abs() <= 1e-6 * (1.0 + truth.abs()),
                        "C={c}, row {i}, channel {j}: {ours} against {truth}"
                    );
                }
            }
        }
    }

    #[test]
    fn eps_is_inside_the_root_and_the_variance_is_biased() {
        let x = array![[1.0f32, -1.0]]; // mean 0, biased variance 1
        let ln = LayerNorm { weight: array![1.0f32, 1.0], bias: array![0.0f32, 0.0], eps: 0.21 };
        let expected = 1.0 / 1.21f32.sqrt(); // 1 / sqrt(1 + eps); unbiased or outside: 1/sqrt(2), 1/1.21
        assert_abs_diff_eq!(ln.forward(x.view()), array![[expected, -expected]], epsilon = 1e-7);
    }
}
