//! Comparing a port's tensor with the truth, calibrated by HuggingFace float32's own error.
//!
//! The truth is HF's model run in float64 (chained mode), or HF's float64 module fed the float32
//! golden input (isolated mode). Two correct float32 programs are each some distance from it, in
//! different directions; so a port is judged by its own distance to the truth, in units of HF
//! float32's distance there:
//!
//! - each element's error is measured on a [`Scale`] that a channel of magnitude 3000 does not
//!   break: |ours - truth| / RMS(truth row), the row being the last axis (for probabilities,
//!   / (|p| + 0.1 RMS(row)), so that small probabilities are not drowned by the large ones);
//! - HF's own error is the same measure for HF's float32 golden, the worst over the tensor's
//!   layers and steps ([`hf_error`], computed by the judge);
//! - the tensor passes when its worst element is within `factor × HF's error + floor`
//!   ([`Limit`], from fixtures/tolerances.yaml).
//!
//! Positions HF masks (scores at or below -1e30) are not compared: the port may mask with any value
//! there. A port that masks a position HF attends to, NaN or Inf never passes. Besides the verdict
//! a [`Comparison`] holds the worst absolute error, NMSE against the truth (as ggml's
//! test-backend-ops) and the worst elements with ours, the truth and HF's value.

use std::fmt::Write as _;

use ndarray::{ArrayViewD, Axis};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Values at or below this are a mask, not a score: HF adds finfo(float32).min ~ -3.4e38.
pub const MASK_THRESHOLD: f32 = -1e30;

/// How far a tensor may be from the truth: `factor × HF float32's own error + floor`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub factor: f64,
    pub floor: f64,
}

impl Limit {
    /// The allowed error when HF's own is `hf_error` (both on the comparison's scale).
    pub fn allowed(&self, hf_error: f64) -> f64 {
        self.factor * hf_error + self.floor
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×HF + {:.0e}", self.factor, self.floor)
    }
}

/// The scale each element's error is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// |ours - truth| / RMS of the truth's row (last axis), masked entries left out.
    RowRms,
    /// |ours - truth| / (|truth| + 0.1 RMS of the row): probabilities, where a row's RMS is set by
    /// its few large entries.
    Probability,
}

/// One element of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub index: Vec<usize>,
    pub ours: f32,
    pub truth: f32,
    /// HF float32's value there.
    pub hf: f32,
    /// |ours - truth| on the comparison's scale.
    pub error: f64,
}

#[derive(Clone, Debug)]
pub struct Comparison {
    pub limit: Limit,
    /// HF float32's own error (worst over the tensor's layers and steps), on the scale.
    pub hf_error: f64,
    /// `limit.allowed(hf_error)`.
    pub allowed: f64,
    /// Our worst error, on the scale.
    pub error: f64,
    pub elements: usize,
    /// Elements whose error exceeds the allowed one, including mask and NaN/Inf mismatches.
    pub violations: usize,
    pub masked: usize,
    /// The worst |ours - truth|, unscaled.
    pub max_abs: f64,
    /// sum (ours - truth)^2 / sum truth^2.
    pub nmse: f64,
    /// allowed / error (inf when the error is 0).
    pub headroom: f64,
    /// The worst elements, largest error first (at most [`Comparison::WORST`]).
    pub worst: Vec<Pair>,
}

impl Comparison {
    pub const WORST: usize = 5;

    pub fn passed(&self) -> bool {
        self.violations == 0
    }

    /// Our error in units of HF float32's own (inf when HF's is 0 and ours is not).
    pub fn ratio(&self) -> f64 {
        if self.error == 0.0 { 0.0 } else { self.error / self.hf_error }
    }

    /// One line: `error 3.1e-6 = 1.2×HF (limit 5×HF + 1e-6 = 1.6e-5), max abs 2.0e-5, NMSE 1e-14, 0/96 outside`.
    pub fn summary(&self) -> String {
        format!(
            "error {:.2e} = {:.2}×HF's {:.2e} (allowed {:.2e} = {}), max abs {:.2e}, NMSE {:.1e}, {}/{} outside{}",
            self.error,
            self.ratio(),
            self.hf_error,
            self.allowed,
            self.limit,
            self.max_abs,
            self.nmse,
            self.violations,
            self.elements,
            if self.masked > 0 { format!(", {} masked", self.masked) } else { String::new() }
        )
    }

    /// The summary, then the worst elements (when any is outside), one per line.
    pub fn report(&self) -> String {
        let mut out = self.summary();
        if !self.passed() {
            for p in &self.worst {
                let _ = write!(out, "\n    at {:?}: ours {:e}, truth {:e}, HF {:e}, error {:.2e}", p.index, p.ours, p.truth, p.hf, p.error);
            }
        }
        out
    }
}

fn is_masked(v: f32) -> bool {
    v <= MASK_THRESHOLD
}

/// Each row's denominator per element, and how to walk a tensor row by row.
fn row_denominators(truth: &[f32], hf: &[f32], scale: Scale) -> Vec<f64> {
    let kept: Vec<f64> = truth.iter().zip(hf).filter(|(t, g)| !is_masked(**g) && t.is_finite()).map(|(t, _)| f64::from(*t)).collect();
    let rms = if kept.is_empty() { 0.0 } else { (kept.iter().map(|t| t * t).sum::<f64>() / kept.len() as f64).sqrt() };
    let floor = f64::from(f32::MIN_POSITIVE);
    truth
        .iter()
        .map(|&t| match scale {
            Scale::RowRms => rms.max(floor),
            Scale::Probability => (f64::from(t).abs() + 0.1 * rms).max(floor),
        })
        .collect()
}

/// The rows (last axis) of three same-shaped tensors, as contiguous slices.
fn rows<'a>(a: &'a ArrayViewD<'a, f32>) -> impl Iterator<Item = Vec<f32>> + 'a {
    let last = Axis(a.ndim().saturating_sub(1));
    a.lanes(last).into_iter().map(|lane| lane.to_vec())
}

/// HF float32's own error: the worst element of `hf` against `truth`, on `scale`.
pub fn hf_error(hf: ArrayViewD<f32>, truth: ArrayViewD<f32>, scale: Scale) -> Result<f64> {
    if hf.shape() != truth.shape() {
        return Err(Error::Input(format!("HF's golden has shape {:?}, its truth {:?}", hf.shape(), truth.shape())));
    }
    let mut worst = 0.0f64;
    for (t, g) in rows(&truth).zip(rows(&hf)) {
        let denominators = row_denominators(&t, &g, scale);
        for ((&t, &g), d) in t.iter().zip(&g).zip(denominators) {
            if !is_masked(g) && t.is_finite() {
                worst = worst.max((f64::from(g) - f64::from(t)).abs() / d);
            }
        }
    }
    Ok(worst)
}

/// Compares `ours` with `truth` on `scale`, allowing `limit` times HF's own `hf_error`; `hf` (HF's
/// float32 golden) marks the masked positions and is shown beside the worst elements.
pub fn compare(
    what: &str,
    ours: ArrayViewD<f32>,
    truth: ArrayViewD<f32>,
    hf: ArrayViewD<f32>,
    hf_err: f64,
    limit: Limit,
    scale: Scale,
) -> Result<Comparison> {
    if ours.shape() != truth.shape() || hf.shape() != truth.shape() {
        return Err(Error::Input(format!("{what}: shape {:?}, the golden has {:?}", ours.shape(), truth.shape())));
    }
    let allowed = limit.allowed(hf_err);
    let mut c = Comparison {
        limit,
        hf_error: hf_err,
        allowed,
        error: 0.0,
        elements: truth.len(),
        violations: 0,
        masked: 0,
        max_abs: 0.0,
        nmse: 0.0,
        headroom: f64::INFINITY,
        worst: Vec::new(),
    };
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    let mut worst: Vec<Pair> = Vec::new(); // sorted by error, largest first
    let row_len = truth.shape().last().copied().unwrap_or(1).max(1);
    for (row, ((o, t), g)) in rows(&ours).zip(rows(&truth)).zip(rows(&hf)).enumerate() {
        let denominators = row_denominators(&t, &g, scale);
        for (j, (((&o, &t), &g), d)) in o.iter().zip(&t).zip(&g).zip(denominators).enumerate() {
            if is_masked(g) {
                // HF's causal mask: any mask value of the port is harmless there; what it does to
                // the weights is compared where they are zero.
                c.masked += 1;
                continue;
            }
            let abs = (f64::from(o) - f64::from(t)).abs();
            // The port masking a position HF attends to, or NaN/Inf, never passes.
            let error = if is_masked(o) || !o.is_finite() || !t.is_finite() { f64::INFINITY } else { abs / d };
            if error.is_finite() {
                c.max_abs = c.max_abs.max(abs);
                err2 += abs * abs;
                ref2 += f64::from(t) * f64::from(t);
            }
            c.error = c.error.max(error);
            if error > allowed {
                c.violations += 1;
            }
            if worst.len() < Comparison::WORST || error > worst[worst.len() - 1].error {
                let flat = row * row_len + j;
                let index = unravel(flat, truth.shape());
                let at = worst.partition_point(|p| p.error >= error);
                worst.insert(at, Pair { index, ours: o, truth: t, hf: g, error });
                worst.truncate(Comparison::WORST);
            }
        }
    }
    if c.error > 0.0 {
        c.headroom = allowed / c.error;
    }
    if c.violations > 0 && c.max_abs == 0.0 {
        c.max_abs = f64::INFINITY; // only mask or NaN/Inf mismatches
    }
    c.nmse = if ref2 > 0.0 { err2 / ref2 } else { err2 };
    c.worst = worst;
    Ok(c)
}

/// The multi-index of the `flat`-th element of a row-major `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &n) in shape.iter().enumerate().rev() {
        let n = n.max(1);
        index[i] = flat % n;
        flat /= n;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn, array};

    const LIMIT: Limit = Limit { factor: 5.0, floor: 1e-6 };

    fn cmp(ours: ndarray::Array2<f32>, truth: ndarray::Array2<f32>, hf: ndarray::Array2<f32>) -> Comparison {
        let (o, t, g) = (ours.into_dyn(), truth.into_dyn(), hf.into_dyn());
        let hf_err = hf_error(g.view(), t.view(), Scale::RowRms).unwrap();
        compare("t", o.view(), t.view(), g.view(), hf_err, LIMIT, Scale::RowRms).unwrap()
    }

    #[test]
    fn a_port_passes_within_factor_times_hfs_own_error() {
        let truth = array![[1.0f32, -2.0, 3.0, 2000.0]];
        let hf = array![[1.0f32 + 1e-3, -2.0, 3.0, 2000.0]]; // HF is 1e-3 off
        let within = cmp(array![[1.0f32 - 4e-3, -2.0, 3.0, 2000.0]], truth.clone(), hf.clone());
        assert!(within.passed(), "{}", within.report());
        assert!((within.ratio() - 4.0).abs() < 0.1, "{}", within.report());
        let beyond = cmp(array![[1.0f32 - 8e-3, -2.0, 3.0, 2000.0]], truth, hf);
        assert!(!beyond.passed());
        assert_eq!(beyond.worst[0].index, vec![0, 0]);
    }

    #[test]
    fn a_huge_channel_does_not_hide_an_error_in_another_row() {
        // row 0 has a 3000 channel; row 1 is ordinary: its error counts against its own RMS
        let truth = array![[3000.0f32, 1.0, -1.0, 0.5], [0.5, 1.0, -1.0, 0.5]];
        let hf = truth.clone();
        let mut ours = truth.clone();
        ours[[1, 1]] += 1e-3;
        let c = cmp(ours, truth, hf);
        assert!(!c.passed(), "{}", c.report());
        assert_eq!(c.worst[0].index, vec![1, 1]);
    }

    #[test]
    fn nan_and_inf_never_pass() {
        for bad in [f32::NAN, f32::INFINITY] {
            let c = cmp(array![[bad, 1.0]], array![[0.5, 1.0]], array![[0.5, 1.0]]);
            assert!(!c.passed());
        }
    }

    #[test]
    fn positions_hf_masks_are_not_compared() {
        let truth = array![[0.5f32, f32::NEG_INFINITY]];
        let hf = array![[0.5f32, f32::MIN]];
        for port_mask in [f32::NEG_INFINITY, f32::MIN, -1e10, -1e9, -1e4, 0.25] {
            let c = cmp(array![[0.5, port_mask]], truth.clone(), hf.clone());
            assert!(c.passed(), "mask value {port_mask}: {}", c.report());
            assert_eq!(c.masked, 1);
        }
        let c = cmp(array![[f32::MIN, f32::MIN]], truth, hf);
        assert!(!c.passed(), "masking a position HF attends to must fail");
    }

    #[test]
    fn probabilities_are_measured_against_themselves() {
        let truth = array![[0.9f32, 0.09, 0.009, 0.001]].into_dyn();
        let hf = truth.clone();
        let mut ours = truth.clone();
        ours[[0, 3]] = 0.002; // doubles a small probability: a large error on this scale
        let c = compare("p", ours.view(), truth.view(), hf.view(), 0.0, LIMIT, Scale::Probability).unwrap();
        assert!(!c.passed() && c.worst[0].index == vec![0, 3], "{}", c.report());
    }

    #[test]
    fn shapes_must_agree() {
        let a = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
        let b = ArrayD::<f32>::zeros(IxDyn(&[3, 2]));
        assert!(compare("t", a.view(), b.view(), b.view(), 0.0, LIMIT, Scale::RowRms).is_err());
    }
}
