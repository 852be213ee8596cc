//! Comparing a candidate's tensor with HF's: allclose semantics plus the numbers that explain a miss.
//!
//! An element passes when |ours - golden| <= atol + rtol * |golden|. Where HF's attention scores are
//! masked (finfo.min), the port's value is not compared (any mask value is harmless); a port that
//! masks a position HF attends to fails there. NaN or Inf in either side never passes. Besides pass/fail a [`Comparison`] holds the max abs and rel error, NMSE
//! (sum (a - b)^2 / sum b^2, as ggml's test-backend-ops) and the worst pairs, for the report.

use std::fmt::Write as _;

use ndarray::{ArrayViewD, Dimension};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Values at or below this are a mask, not a score: HF adds finfo(float32).min ~ -3.4e38.
pub const MASK_THRESHOLD: f32 = -1e30;

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    #[serde(default)]
    pub atol: f64,
    #[serde(default)]
    pub rtol: f64,
}

impl Tolerance {
    pub const EXACT: Tolerance = Tolerance { atol: 0.0, rtol: 0.0 };

    pub fn allows(&self, ours: f64, golden: f64) -> bool {
        (ours - golden).abs() <= self.atol + self.rtol * golden.abs()
    }
}

impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rtol > 0.0 { write!(f, "{:.0e} + {:.0e}·|golden|", self.atol, self.rtol) } else { write!(f, "{:.0e}", self.atol) }
    }
}

/// One element of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub index: Vec<usize>,
    pub ours: f32,
    pub golden: f32,
    /// Whether this element fails the tolerance.
    pub outside: bool,
}

impl Pair {
    fn abs_err(&self) -> f64 {
        (f64::from(self.ours) - f64::from(self.golden)).abs()
    }
}

#[derive(Clone, Debug)]
pub struct Comparison {
    pub tolerance: Tolerance,
    pub elements: usize,
    /// Elements outside the tolerance, including mask and NaN/Inf mismatches.
    pub violations: usize,
    pub masked: usize,
    pub max_abs: f64,
    pub max_rel: f64,
    pub nmse: f64,
    /// The smallest allowed / actual error over the elements (inf when every error is 0).
    pub headroom: f64,
    /// The worst elements, by how far they exceed the tolerance (at most [`Comparison::WORST`]).
    pub worst: Vec<Pair>,
}

impl Comparison {
    pub const WORST: usize = 5;

    pub fn passed(&self) -> bool {
        self.violations == 0
    }

    /// A one-line summary: `max abs 1.2e-7 (atol 1e-4), max rel 3e-6, NMSE 1e-14, 0/96 outside`.
    pub fn summary(&self) -> String {
        format!(
            "max abs {:.3e} (atol {:.0e}, rtol {:.0e}), max rel {:.3e}, NMSE {:.3e}, {}/{} outside{}",
            self.max_abs,
            self.tolerance.atol,
            self.tolerance.rtol,
            self.max_rel,
            self.nmse,
            self.violations,
            self.elements,
            if self.masked > 0 { format!(", {} masked", self.masked) } else { String::new() }
        )
    }

    /// The summary, then the worst failing elements, one per line.
    pub fn report(&self) -> String {
        let mut out = self.summary();
        for pair in self.worst.iter().filter(|p| p.outside) {
            let _ = write!(out, "\n    at {:?}: ours {:e}, golden {:e}, |diff| {:.3e}", pair.index, pair.ours, pair.golden, pair.abs_err());
        }
        out
    }
}

fn is_masked(v: f32) -> bool {
    v <= MASK_THRESHOLD
}

/// Compares element by element; shapes must be equal.
pub fn compare(what: &str, ours: ArrayViewD<f32>, golden: ArrayViewD<f32>, tolerance: Tolerance) -> Result<Comparison> {
    if ours.shape() != golden.shape() {
        return Err(Error::Input(format!("{what}: shape {:?}, the golden has {:?}", ours.shape(), golden.shape())));
    }
    let mut c = Comparison {
        tolerance,
        elements: golden.len(),
        violations: 0,
        masked: 0,
        max_abs: 0.0,
        max_rel: 0.0,
        nmse: 0.0,
        headroom: f64::INFINITY,
        worst: Vec::new(),
    };
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    // (how far past the tolerance, pair), kept sorted, at most WORST long
    let mut worst: Vec<(f64, Pair)> = Vec::new();
    for ((index, &o), &g) in ours.indexed_iter().zip(golden.iter()) {
        let (mask_o, mask_g) = (is_masked(o), is_masked(g));
        let (o64, g64) = (f64::from(o), f64::from(g));
        if mask_g {
            // HF's causal mask: the port may mask with any value there (-inf, -1e10, -1e4);
            // what it does to the weights is compared where they are zero.
            c.masked += 1;
            continue;
        }
        // The port masking a position HF attends to, or NaN/Inf, never passes.
        let excess = if mask_o || !o.is_finite() || !g.is_finite() {
            f64::INFINITY
        } else {
            let abs = (o64 - g64).abs();
            c.max_abs = c.max_abs.max(abs);
            if g64 != 0.0 {
                c.max_rel = c.max_rel.max(abs / g64.abs());
            }
            err2 += abs * abs;
            ref2 += g64 * g64;
            let allowed = tolerance.atol + tolerance.rtol * g64.abs();
            if abs > 0.0 {
                c.headroom = c.headroom.min(allowed / abs);
            }
            abs - allowed
        };
        if excess > 0.0 {
            c.violations += 1;
        }
        if worst.len() < Comparison::WORST || excess > worst[worst.len() - 1].0 {
            let pair = Pair { index: index.slice().to_vec(), ours: o, golden: g, outside: excess > 0.0 };
            let at = worst.partition_point(|(e, _)| *e >= excess);
            worst.insert(at, (excess, pair));
            worst.truncate(Comparison::WORST);
        }
    }
    if c.violations > 0 {
        c.headroom = c.headroom.min(0.0);
    }
    if c.violations > 0 && c.max_abs == 0.0 {
        c.max_abs = f64::INFINITY; // only mask or NaN/Inf mismatches
    }
    c.nmse = if ref2 > 0.0 { err2 / ref2 } else { err2 };
    c.worst = worst.into_iter().map(|(_, p)| p).collect();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn, array};

    fn dyn1(v: ndarray::Array1<f32>) -> ArrayD<f32> {
        v.into_dyn()
    }

    #[test]
    fn allclose_uses_atol_plus_rtol_times_golden() {
        let tol = Tolerance { atol: 1e-3, rtol: 1e-2 };
        let c = compare("t", dyn1(array![1.0, 100.5]).view(), dyn1(array![1.0005, 100.0]).view(), tol).unwrap();
        assert!(c.passed(), "{}", c.report());
        let c = compare("t", dyn1(array![1.0, 102.0]).view(), dyn1(array![1.0005, 100.0]).view(), tol).unwrap();
        assert_eq!(c.violations, 1);
        assert_eq!(c.worst[0].index, vec![1]);
    }

    #[test]
    fn nan_and_inf_never_pass() {
        let loose = Tolerance { atol: 1e9, rtol: 1e9 };
        for bad in [f32::NAN, f32::INFINITY] {
            let c = compare("t", dyn1(array![bad, 1.0]).view(), dyn1(array![0.0, 1.0]).view(), loose).unwrap();
            assert!(!c.passed());
        }
    }

    #[test]
    fn positions_hf_masks_are_not_compared() {
        let tol = Tolerance { atol: 1e-4, rtol: 0.0 };
        let golden = dyn1(array![0.5, f32::MIN]);
        for port_mask in [f32::NEG_INFINITY, f32::MIN, -1e10, -1e9, -1e4, 0.25] {
            let c = compare("t", dyn1(array![0.5, port_mask]).view(), golden.view(), tol).unwrap();
            assert!(c.passed(), "mask value {port_mask}: {}", c.report());
            assert_eq!(c.masked, 1);
        }
        let c = compare("t", dyn1(array![f32::MIN, f32::MIN]).view(), golden.view(), tol).unwrap();
        assert!(!c.passed(), "masking a position HF attends to must fail");
    }

    #[test]
    fn shapes_must_agree() {
        let a = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
        let b = ArrayD::<f32>::zeros(IxDyn(&[3, 2]));
        assert!(compare("t", a.view(), b.view(), Tolerance::EXACT).is_err());
    }
}
