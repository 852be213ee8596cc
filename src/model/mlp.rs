//! GPT-2's feed-forward network: c_fc, gelu_new, c_proj.

use multiversion::multiversion;
use ndarray::ArrayView2;

use super::conv1d::Conv1D;
use super::kernels;
use crate::port::MlpOutput;

pub struct Mlp {
    /// [C, 4C]
    pub c_fc: Conv1D,
    /// [4C, C]
    pub c_proj: Conv1D,
}

impl Mlp {
    /// x [T, C] (ln_2 output) -> gelu [T, 4C] and output [T, C]
    pub fn forward(&self, x: ArrayView2<f32>) -> MlpOutput {
        let mut gelu = self.c_fc.forward_for_next_product(x); // [T, 4C], rows padded for c_proj
        kernels::for_each_row_block(gelu.view_mut(), |mut rows| {
            for mut row in rows.rows_mut() {
                match row.as_slice_mut() {
                    Some(values) => gelu_in_place(values),
                    None => row.mapv_inplace(gelu_new),
                }
            }
        });
        let output = self.c_proj.forward(gelu.view()); // [T, C]
        MlpOutput { gelu, output }
    }
}

/// [`gelu_new`] of every value, in place: 8 float32 lanes where the CPU has AVX2, 16 with AVX-512
/// (the same results bit for bit, as Rust never fuses a multiply and an add). The AVX-512 build,
/// on an AVX-512 Xeon at 512 tokens: perf's samples of the GELU per sample of gemm's micro-kernel
/// 0.094-0.100 -> 0.078-0.081 (three runs each).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f+avx512bw+avx512cd+avx512dq+avx512vl", "x86_64+avx+avx2+fma"))]
fn gelu_in_place(values: &mut [f32]) {
    for v in values {
        *v = gelu_new(*v);
    }
}

/// GPT-2's activation, the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
/// Not torch's default erf GELU: the two differ by up to ~1e-3.
#[inline(always)]
pub fn gelu_new(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2|u|): within a few ulp of libm's, and
/// branch-free, so that a loop of GELUs compiles to vector instructions (libm's tanhf does not).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    let e = exp_nonpositive(-2.0 * u.abs());
    ((1.0 - e) / (1.0 + e)).copysign(u)
}

/// exp(x) for x <= 0, Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6
/// polynomial, 2^n by building the float's exponent bits. Relative error ~2e-7.
///
/// 2^n's bits come from n as it sits in the low bits of `shifted` (as in the softmax's float64
/// exponential), not from `n as i32`: Rust's saturating float-to-int conversion compiled to one
/// scalar comparison per lane, and perf's samples of the GELU per sample of gemm's micro-kernel
/// (Xeon, 512 tokens) went from 0.067 to 0.031 at 1 thread and 0.068 to 0.029 at 2 with it gone
/// (the same floats: the passes' hashes are unchanged).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer, kept in the low bits
    let x = x.max(-87.0); // below this, e^x underflows f32's normal range; tanh is then exactly 1
    let shifted = x * LOG2_E + ROUND; // ROUND + n, n in -126..=0
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    let two_to_n = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23); // (n + 127) << 23: the bits of 2^n
    e_r * two_to_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_new_matches_the_libm_formula() {
        let reference = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
        let mut worst = 0.0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 1e-3; // -20 .. 20
            worst = worst.max((f64::from(gelu_new(x)) - reference(f64::from(x))).abs() / (1.0 + f64::from(x).abs()));
        }
        assert!(worst < 3e-7, "worst scaled error {worst:e}");
        assert_eq!(gelu_new(0.0), 0.0);
        assert_eq!(gelu_new(-100.0), 0.0);
        assert_eq!(gelu_new(100.0), 100.0);
    }

    #[test]
    fn the_exponential_is_its_polynomial_times_two_to_the_n_for_every_n() {
        // x = n ln2 for every n the clamp allows, and a point between each two: e^r and 2^n as
        // written out here, with 2^n from powi rather than from the float's bits
        for n in -126..=0 {
            for x in [n as f32 * std::f32::consts::LN_2, (n as f32 - 0.3) * std::f32::consts::LN_2] {
                let x = x.max(-87.0);
                let n = (x * std::f32::consts::LOG2_E).round_ties_even();
                let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
                let p = [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5].iter().fold(1.987_569_1e-4, |p, &c| p * r + c);
                let expected = (p * r * r + r + 1.0) * 2f32.powi(n as i32);
                assert_eq!(exp_nonpositive(x).to_bits(), expected.to_bits(), "x = {x}");
            }
        }
    }

    #[test]
    fn the_mlp_is_its_three_steps_for_any_prompt_length_and_thread_count() {
        let values = |rows: usize, cols: usize, scale: f32| {
            ndarray::Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 31 + j * 17) % 23) as f32 * scale - 0.25)
        };
        let conv1d = |inputs: usize, outputs: usize| Conv1D {
            weight: kernels::with_padded_rows(values(outputs, inputs, 0.01).view()),
            bias: ndarray::Array1::from_shape_fn(outputs, |j| j as f32 * 1e-3),
        };
        let mlp = Mlp { c_fc: conv1d(48, 192), c_proj: conv1d(192, 48) };
        for threads in [1, 2] {
            kernels::set_threads(threads);
            // T: decode, the hand-written kernel, a column-major destination, then rows padded for c_proj
            for t in [1, 5, 40, 64, 65, 130] {
                let x = values(t, 48, 0.03); // [T, C]
                let MlpOutput { gelu, output } = mlp.forward(x.view());
                let step_by_step = mlp.c_fc.forward(x.view()).mapv(gelu_new); // [T, 4C]
                assert_eq!(gelu, step_by_step, "{threads} threads, T={t}: gelu");
                assert_eq!(output, mlp.c_proj.forward(step_by_step.view()), "{threads} threads, T={t}: output");
            }
        }
        kernels::set_threads(1);
    }
}
