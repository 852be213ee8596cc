//! Numerically stable softmax over the last axis: exp(x - max) / sum, accumulated in float64.
//!
//! Masked entries hold [`MASKED`] (torch.finfo(float32).min, what HF's eager mask adds) or -inf;
//! both give exp(...) = 0.

use multiversion::multiversion;
use ndarray::{ArrayBase, ArrayView1, ArrayViewMut1, Axis, DataMut, Dimension, RemoveAxis};

/// The value HF's eager attention leaves at masked positions: torch.finfo(torch.float32).min.
pub const MASKED: f32 = f32::MIN;

/// Softmax of one row, in place. The exponentials and their sum are taken in float64: a float32
/// sum of 50257 terms in a row is off by ~1e-5 of a probability (CHECKPOINTS.md, 11), ten times
/// HF's own error; in float64 the result is the correctly rounded float32 of the true softmax.
///
/// A masked entry's exponential is 0 exactly. The masked tail of a causal row (half the scores of
/// a long prompt) is not computed at all; a masked entry before the last visible one is computed
/// and replaced by 0, which keeps the loop free of branches.
pub fn softmax_row(row: ArrayViewMut1<f32>) {
    let scores = row.to_vec();
    softmax_into(ArrayView1::from(&scores), row);
}

/// [`softmax_row`] of `scores`, written into `weights` (of the same length): attention's weights
/// from its scores, without a copy of the scores first.
pub fn softmax_into(scores: ArrayView1<f32>, mut weights: ArrayViewMut1<f32>) {
    assert_eq!(scores.len(), weights.len(), "softmax_into: {} scores, {} weights", scores.len(), weights.len());
    let scores_copy; // only if the scores are not contiguous
    let scores = match scores.to_slice() {
        Some(values) => values,
        None => {
            scores_copy = scores.to_vec();
            &scores_copy
        }
    };
    match weights.as_slice_mut() {
        Some(values) => softmax_slice(scores, values),
        None => {
            let mut values = vec![0.0f32; scores.len()];
            softmax_slice(scores, &mut values);
            weights.assign(&ArrayView1::from(&values));
        }
    }
}

/// [`softmax_into`] on slices, where its loops compile to vector instructions (4 float64 lanes
/// where the CPU has AVX2; the same results bit for bit, as Rust never fuses a multiply and an add).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn softmax_slice(values: &[f32], weights: &mut [f32]) {
    let max = f64::from(values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
    let masked = |v: f32| v <= MASKED && f64::from(v) < max;
    let mut exps = vec![0.0f64; values.len()];
    // A causal row's masked entries are its tail: their exponentials are the zeros already there.
    // The tail is skipped 8 entries at a time (a test of 8 lanes at once), then one at a time.
    let mut visible = values.len();
    while visible >= 8 && values[visible - 8..visible].iter().fold(true, |all, &v| all & masked(v)) {
        visible -= 8;
    }
    let visible = values[..visible].iter().rposition(|&v| !masked(v)).map_or(0, |last| last + 1);
    for (e, &v) in exps[..visible].iter_mut().zip(&values[..visible]) {
        let exp = exp_nonpositive(f64::from(v) - max);
        *e = if masked(v) { 0.0 } else { exp }; // computed either way: the loop stays branch-free
    }
    let inverse_sum = 1.0 / sum_in_lanes(&exps);
    for (w, e) in weights.iter_mut().zip(exps) {
        *w = (e * inverse_sum) as f32;
    }
}

/// The sum of `values` in 8 interleaved partial sums, which vector instructions add side by side
/// (one running sum waits ~4 cycles per addition). In float64 the order changes a float32 weight
/// only when the result lies within 2^-29 of a rounding boundary, as does multiplying by the
/// inverse of the sum instead of dividing (both measured: the same table as in order).
#[inline(always)]
fn sum_in_lanes(values: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f64>() + chunks.remainder().iter().sum::<f64>()
}

/// e^x for x <= 0, in float64: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series to r^13
/// (relative error below 1e-16, where libm's is ~1e-16 too), 2^n built in the exponent bits; 0 below
/// -708, where e^x leaves float64's normal range (a float32 weight is 0 from e^-104 on). Unlike
/// libm's exp, a loop of these compiles to vector instructions: with libm, the exponentials were
/// ~10% of a 512-token prefill.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer, kept in the low bits
    const INVERSE_FACTORIALS: [f64; 14] = {
        let mut c = [1.0; 14];
        let mut i = 1;
        while i < 14 {
            c[i] = c[i - 1] / i as f64;
            i += 1;
        }
        c
    };
    let clamped = x.max(-708.0);
    let shifted = clamped * std::f64::consts::LOG2_E + ROUND; // ROUND + n
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let e_r = INVERSE_FACTORIALS.iter().rev().fold(0.0, |p, &c| p * r + c);
    let two_to_n = f64::from_bits(shifted.to_bits().wrapping_add(1023) << 52); // (n + 1023) << 52: the bits of 2^n
    if x < -708.0 { 0.0 } else { e_r * two_to_n }
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
    fn exp_nonpositive_matches_libm() {
        let mut worst = 0.0f64;
        for i in 0..=800_000 {
            let x = -(i as f64) * 1e-3; // 0 .. -800
            let (ours, libm) = (exp_nonpositive(x), x.exp());
            if x >= -708.0 {
                worst = worst.max((ours - libm).abs() / libm);
            } else {
                assert!(ours == 0.0 && libm < 1e-307, "{x}: {ours} against {libm}");
            }
        }
        assert!(worst < 4e-16, "worst relative difference {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

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
