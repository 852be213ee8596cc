//! Reports: verdicts rendered for people (the checkpoint table, failure messages, the first
//! divergence) and for machines (JSON).

use std::fmt::Write as _;

use serde::Serialize;

use crate::catalog::{Checkpoint, DType};
use crate::judge::{Status, Verdict};
use crate::tolerances::Mode;

/// `isolated` / `chained`.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Isolated => "isolated",
        Mode::Chained => "chained",
    }
}

/// One line of the checkpoint table: every verdict of one checkpoint in one mode, over all layers,
/// tensors and golden sets.
#[derive(Clone, Debug, Serialize)]
pub struct SummaryRow {
    pub checkpoint: String,
    pub mode: &'static str,
    pub status: Status,
    pub checks: usize,
    pub passed: usize,
    pub failed: usize,
    pub pending: usize,
    /// How many passes were derived by the suite rather than computed by the port.
    pub derived: usize,
    /// Float comparisons: the worst error against the truth in units of HF float32's own
    /// (`3.2` = 3.2 times HF's), and the limit in force there.
    pub max_ratio: Option<f64>,
    pub limit: Option<String>,
    /// The smallest allowed / actual error over the float comparisons (None: every error is 0).
    pub headroom: Option<f64>,
    /// The worst |ours - truth| and NMSE against the truth.
    pub max_abs: Option<f64>,
    pub max_nmse: Option<f64>,
    /// Whether token ids were compared (exactly) in this row.
    pub ids_compared: bool,
}

/// Aggregates verdicts by checkpoint and mode, in checkpoint order (isolated first).
pub fn summarize(verdicts: &[Verdict]) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for checkpoint in Checkpoint::ALL {
        for mode in [Mode::Isolated, Mode::Chained] {
            let group: Vec<&Verdict> = verdicts.iter().filter(|v| v.key.checkpoint == checkpoint && v.mode == mode).collect();
            if !group.is_empty() {
                rows.push(summary_row(checkpoint, mode, &group));
            }
        }
    }
    rows
}

fn summary_row(checkpoint: Checkpoint, mode: Mode, group: &[&Verdict]) -> SummaryRow {
    let count = |s: Status| group.iter().filter(|v| v.status == s).count();
    let (passed, failed, pending) = (count(Status::Pass), count(Status::Fail), count(Status::Pending));
    let status = if failed > 0 {
        Status::Fail
    } else if passed > 0 {
        Status::Pass
    } else {
        Status::Pending
    };
    let mut row = SummaryRow {
        checkpoint: checkpoint.label(),
        mode: mode_name(mode),
        status,
        checks: group.len(),
        passed,
        failed,
        pending,
        derived: group.iter().filter(|v| v.status == Status::Pass && v.derived.is_some()).count(),
        max_ratio: None,
        limit: None,
        headroom: None,
        max_abs: None,
        max_nmse: None,
        ids_compared: group
            .iter()
            .any(|v| v.key.spec().dtype == DType::I64 && v.comparison.is_none() && (v.status == Status::Pass || v.diverged)),
    };
    // The error columns speak of what is judged: a pending value out of its limit is in the
    // pending count and its message, not in the worst error of a passing row.
    for c in group.iter().filter(|v| v.status != Status::Pending).filter_map(|v| v.comparison.as_ref()) {
        if row.max_ratio.is_none_or(|m| c.ratio() >= m) {
            row.max_ratio = Some(c.ratio());
            row.limit = Some(c.limit.to_string());
        }
        row.max_abs = Some(row.max_abs.map_or(c.max_abs, |m| m.max(c.max_abs)));
        row.max_nmse = Some(row.max_nmse.map_or(c.nmse, |m| m.max(c.nmse)));
        if c.headroom.is_finite() {
            row.headroom = Some(row.headroom.map_or(c.headroom, |h| h.min(c.headroom)));
        }
    }
    row
}

/// `4.4x`; `2e6x` where the error is far below the limit.
pub fn headroom(h: f64) -> String {
    if h >= 1e4 { format!("{h:.0e}x") } else { format!("{h:.1}x") }
}

/// The summary as a markdown table.
pub fn summary_table(rows: &[SummaryRow]) -> String {
    let mut out = String::from(
        "| checkpoint | mode | status | worst error (×HF's) | limit | headroom | max abs | max NMSE |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let status = match r.status {
            Status::Fail => format!("FAIL ({}/{})", r.failed, r.checks),
            Status::Pending => format!("pending ({})", r.checks),
            Status::Pass if r.pending > 0 => format!("pass ({}; {} pending)", r.passed, r.pending),
            Status::Pass => format!("pass ({})", r.passed),
        };
        let status = if r.derived > 0 { format!("{status}, {} derived", r.derived) } else { status };
        let dash = || "-".to_string();
        let (ratio, limit, headroom, max_abs, nmse) = match (r.max_ratio, &r.limit) {
            (Some(ratio), Some(limit)) => (
                format!("{ratio:.2}"),
                limit.clone(),
                r.headroom.map_or("exact".to_string(), headroom),
                r.max_abs.map_or_else(dash, |m| format!("{m:.1e}")),
                r.max_nmse.map_or_else(dash, |n| format!("{n:.1e}")),
            ),
            _ if r.ids_compared => ("ids".into(), "exact".into(), dash(), dash(), dash()),
            _ => (dash(), dash(), dash(), dash(), dash()),
        };
        let _ = writeln!(out, "| {} | {} | {status} | {ratio} | {limit} | {headroom} | {max_abs} | {nmse} |", r.checkpoint, r.mode);
    }
    out
}

/// Where the chain first went wrong: the first chained tensor, in forward order, that is out of
/// its limit (claimed or not), or else the first claimed one that was never reported.
pub fn first_divergence(verdicts: &[Verdict]) -> Option<&Verdict> {
    let chained = || verdicts.iter().filter(|v| v.mode == Mode::Chained);
    chained().find(|v| v.diverged).or_else(|| chained().find(|v| v.status == Status::Fail))
}

/// One verdict as a report line (plus the worst pairs on following lines).
pub fn verdict_line(v: &Verdict) -> String {
    let mark = match v.status {
        Status::Pass => "ok     ",
        Status::Fail => "FAIL   ",
        Status::Pending => "pending",
    };
    format!("{mark} {} [{}, {}]: {}", v.key, mode_name(v.mode), v.set, v.detail)
}

/// The message of a failed check: where the chain first diverged (the cause to look at), then
/// every failing verdict.
pub fn failure_message(failing: &[&Verdict], all: &[Verdict]) -> String {
    let mut out = String::new();
    if let Some(first) = first_divergence(all) {
        let _ = writeln!(
            out,
            "first divergence in the chain of {}: {} ({}): {}",
            first.set,
            first.key,
            first.key.checkpoint.label(),
            first.detail
        );
    }
    for v in failing {
        let _ = writeln!(out, "{}", verdict_line(v));
    }
    out
}

/// The machine-readable report: the table rows and every verdict that is not a plain pass.
#[derive(Serialize)]
pub struct JsonReport<'a> {
    pub claims: String,
    pub passed: bool,
    pub rows: &'a [SummaryRow],
    pub first_divergence: Option<JsonVerdict>,
    pub failures: Vec<JsonVerdict>,
    pub pending: Vec<JsonVerdict>,
}

#[derive(Serialize)]
pub struct JsonVerdict {
    pub set: String,
    pub mode: &'static str,
    pub tensor: String,
    pub status: Status,
    pub detail: String,
}

impl From<&Verdict> for JsonVerdict {
    fn from(v: &Verdict) -> Self {
        JsonVerdict { set: v.set.clone(), mode: mode_name(v.mode), tensor: v.key.stem(), status: v.status, detail: v.detail.clone() }
    }
}
