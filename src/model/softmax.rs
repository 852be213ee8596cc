//! Numerically stable softmax over the last axis: exp(x - max) / sum, accumulated in float64.
//!
//! Masked entries hold [`MASKED`] (torch.finfo(float32).min, what HF's eager mask adds) or -inf;
//! both give exp(...) = 0.

use multiversion::multiversion;
use ndarray::{ArrayBase, ArrayView1, ArrayViewMut1, Axis, DataMut, Dimension, RemoveAxis};

use super::lanes::sum_in_lanes;

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
    softmax_into(ArrayView1::from(&scores), row, &mut Vec::new());
}

/// [`softmax_row`] of `scores`, written into `weights` (of the same length): attention's weights
/// from its scores, without a copy of the scores first. `exps` holds the row's exponentials: one
/// buffer reused from row to row, rather than one zeroed allocation per row. With the masked tail
/// left out of the sum (below), attention's scores step at 512 tokens, one layer, one thread:
/// 161 -> 130 million instructions (callgrind; the same floats).
pub fn softmax_into(scores: ArrayView1<f32>, mut weights: ArrayViewMut1<f32>, exps: &mut Vec<f64>) {
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
        Some(values) => softmax_slice(scores, values, exps),
        None => {
            let mut values = vec![0.0f32; scores.len()];
            softmax_slice(scores, &mut values, exps);
            weights.assign(&ArrayView1::from(&values));
        }
    }
}

/// [`softmax_into`] on slices, where its loops compile to vector instructions (4 float64 lanes
/// where the CPU has AVX2, 8 with AVX-512; the same results bit for bit: Rust never fuses a
/// multiply and an add on its own, and the exponential's fused ones, `mul_add`, round once on
/// every target). The AVX-512 build, on an AVX-512 Xeon at 512 tokens: perf's samples of
/// the softmax per sample of gemm's micro-kernel 0.127-0.137 -> 0.096-0.105 (three runs each).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f+avx512bw+avx512cd+avx512dq+avx512vl", "x86_64+avx+avx2+fma"))]
fn softmax_slice(values: &[f32], weights: &mut [f32], exps: &mut Vec<f64>) {
    // A causal row's masked entries are its tail: their weights are zeros, not computed. The tail
    // is found 8 entries at a time (a test of 8 lanes at once), then one at a time. A row with
    // nothing but masked entries is computed whole, as any other.
    let in_tail = |v: f32| v <= MASKED;
    let mut visible = values.len();
    while visible >= 8 && values[visible - 8..visible].iter().fold(true, |all, &v| all & in_tail(v)) {
        visible -= 8;
    }
    let visible = match values[..visible].iter().rposition(|&v| !in_tail(v)) {
        Some(last) => last + 1,
        None => values.len(),
    };
    // The tail is below every visible entry, so this is the row's max.
    let max = f64::from(max_in_lanes(&values[..visible]));
    let masked = |v: f32| v <= MASKED && f64::from(v) < max;
    // Written through a zip of slices, not `extend` with a closure: that form compiled to one
    // scalar exponential per call.
    exps.resize(visible, 0.0);
    for (e, &v) in exps.iter_mut().zip(&values[..visible]) {
        let exp = exp_nonpositive(f64::from(v) - max);
        *e = if masked(v) { 0.0 } else { exp }; // computed either way: the loop stays branch-free
    }
    let inverse_sum = 1.0 / sum_in_lanes(exps, values.len(), |e| e);
    for (w, &e) in weights.iter_mut().zip(exps.iter()) {
        *w = (e * inverse_sum) as f32;
    }
    weights[visible..].fill(0.0);
}

/// The largest of `values` (NaNs left out, as `f32::max` does; -inf if there are none), in 16
/// interleaved running maxima that vector instructions compare side by side: a fold of `f32::max`
/// compiled to one scalar comparison per entry, ~13% of the softmax's perf samples at 512 tokens on
/// the Xeon (its samples per sample of gemm's micro-kernel: 0.092-0.093 -> 0.082-0.086). The order
/// of comparisons changes no result: a max is exact. (It may pick +0 where `f32::max` picks -0,
/// which changes no difference `v - max` but that of a zero, whose exponential is 1 either way.)
#[inline(always)]
fn max_in_lanes(values: &[f32]) -> f32 {
    let larger = |m: f32, v: f32| if v > m { v } else { m }; // m never NaN: NaN > m is false
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, v);
        }
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| larger(m, v))
}

/// e^x for x <= 0, in float64: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series to r^13
/// (relative error below 1e-16, where libm's is ~1e-16 too), 2^n built in the exponent bits; 0 below
/// -708, where e^x leaves float64's normal range (a float32 weight is 0 from e^-104 on). Unlike
/// libm's exp, a loop of these compiles to vector instructions: with libm, the exponentials were
/// ~10% of a 512-token prefill.
///
/// The series is summed by fused multiply-adds (Horner's rule, 13 `mul_add` where there were 13
/// multiplies and 13 additions; a CPU without FMA would take libm's slow `fma` instead). On the
/// Xeon at 512 tokens, perf's samples of the softmax per sample of gemm's micro-kernel went from
/// 0.092 to 0.060 at 1 thread and 0.076 to 0.058 at 2. Its largest difference from libm's exp over
/// 0 to -708 is 2.2e-16 either way (the test below), and no float32 weight moved: the final hidden
/// state's and the logits' hashes of 8-, 40-, 128- and 512-token passes are unchanged (a change of
/// ~1e-16 moves a float32 only where it lies that close to a rounding boundary).
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
    let e_r = INVERSE_FACTORIALS.iter().rev().fold(0.0, |p: f64, &c| p.mul_add(r, c));
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

    /// A whole row's exponentials, its masked entries' zeros among them, summed as 8 interleaved
    /// partial sums and then the last len % 8 in order: the sum that skipping the tail must keep.
    fn sum_of_whole_row(exps: &[f64]) -> f64 {
        let mut lanes = [0.0f64; 8];
        let mut chunks = exps.chunks_exact(8);
        for chunk in &mut chunks {
            for (lane, &e) in lanes.iter_mut().zip(chunk) {
                *lane += e;
            }
        }
        lanes.iter().sum::<f64>() + chunks.remainder().iter().sum::<f64>()
    }

    #[test]
    fn a_causal_rows_masked_tail_is_skipped_without_changing_a_bit() {
        fn whole_row(values: &[f32]) -> Vec<f32> {
            let max = f64::from(values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
            let exps: Vec<f64> =
                values.iter().map(|&v| if v <= MASKED && f64::from(v) < max { 0.0 } else { exp_nonpositive(f64::from(v) - max) }).collect();
            let inverse_sum = 1.0 / sum_of_whole_row(&exps);
            exps.iter().map(|&e| (e * inverse_sum) as f32).collect()
        }
        for len in 1..40 {
            for visible in 1..=len {
                // scores of every size and sign, a masked entry among the visible ones, then the tail
                let mut row: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) * 1.37).collect();
                row[visible - 1] = row[visible - 1].abs() + 0.5; // the last visible entry is not masked
                if visible > 2 {
                    row[visible / 2] = MASKED;
                }
                row[visible..].fill(MASKED);
                let mut ours = ndarray::Array1::from(row.clone());
                softmax_row(ours.view_mut());
                assert_eq!(ours.to_vec(), whole_row(&row), "{visible} visible of {len}");
            }
        }
    }

    #[test]
    fn the_sum_of_a_rows_visible_part_is_the_sum_of_the_row_with_its_zeros() {
        for len in 1..40 {
            // magnitudes far apart, so that a different order of the additions changes the sum
            let row: Vec<f64> = (0..len).map(|i| 10f64.powi(-((i * 7 % 17) as i32))).collect();
            for visible in 0..=len {
                let mut with_zeros = row.clone();
                with_zeros[visible..].fill(0.0);
                assert_eq!(
                    sum_in_lanes(&row[..visible], len, |v| v).to_bits(),
                    sum_of_whole_row(&with_zeros).to_bits(),
                    "{visible} of {len}"
                );
            }
        }
    }

    #[test]
    fn the_max_in_lanes_is_f32_max_over_the_row() {
        for len in 0..70 {
            let mut row: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) * 1.37).collect();
            if len > 5 {
                row[len / 3] = f32::NAN;
                row[len - 2] = MASKED;
            }
            let truth = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max_in_lanes(&row), truth, "{len} entries");
            // the max anywhere in the row: before, inside and after the 16 lanes
            for at in [0, len / 2, len.saturating_sub(1)].into_iter().filter(|&at| at < len) {
                let mut peaked = row.clone();
                peaked[at] = 1e30;
                assert_eq!(max_in_lanes(&peaked), 1e30, "{len} entries, max at {at}");
            }
        }
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
