//! `cargo xtask compare`: ports in any language, judged from their dumps (the dump protocol of
//! CHECKPOINTS.md), one table for one or several candidates; and `cargo xtask dump-reference`,
//! the reference model's own taps in that protocol.
//!
//! Exit status: 0 when nothing present fails and everything claimed is present, 1 otherwise, 2 on
//! bad input (a missing directory, an unknown file name, a wrong shape or dtype, NaN), with a
//! one-line error naming the file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Status, Verdict, judge};
use gpt2_checkpoints::model::Reference;
use gpt2_checkpoints::report::{self, JsonReport, JsonVerdict, SummaryRow, failure_message, first_divergence, summarize, summary_table};
use gpt2_checkpoints::runner::{self, dumps};
use gpt2_checkpoints::tolerances::Tolerances;

use crate::html_report::{self, Section};

/// One candidate: a name and the directories of its stages.
pub struct Candidate {
    pub name: String,
    pub stages: Vec<PathBuf>,
}

impl Candidate {
    /// `DIR` or `DIR1,DIR2` (the stages of one pipeline-parallel port, merged).
    pub fn parse(arg: &str) -> Candidate {
        let stages: Vec<PathBuf> = arg.split(',').filter(|s| !s.is_empty()).map(PathBuf::from).collect();
        Candidate { name: arg.to_string(), stages }
    }
}

/// Judges every candidate; prints the table and writes the JSON report. Ok(true) when all pass.
pub fn compare(goldens: &Path, candidates: &[Candidate], claims: &Claims, tolerances: &Tolerances, json: &Path) -> Result<bool> {
    let set = GoldenSet::open(goldens)?;
    let mut judged: Vec<(&Candidate, Vec<Verdict>)> = Vec::new();
    for candidate in candidates {
        let observations = dumps::read(&candidate.stages, &set)?;
        judged.push((candidate, judge(&set, &observations, tolerances, claims)));
    }
    println!("golden set {} ({}), claims: {claims}\n", set.name(), goldens.display());
    let mut report = Vec::new();
    let mut all_passed = true;
    for (candidate, verdicts) in &judged {
        let rows = summarize(verdicts);
        let passed = verdicts.iter().all(|v| v.status != Status::Fail);
        all_passed &= passed;
        if judged.len() == 1 {
            print!("{}", summary_table(&rows));
        }
        let failing: Vec<&Verdict> = verdicts.iter().filter(|v| v.status == Status::Fail).collect();
        if !failing.is_empty() {
            println!("\n{}: {} failing tensors", candidate.name, failing.len());
            print!("{}", failure_message(&failing[..failing.len().min(8)], verdicts));
        }
        report.push(CandidateReport { name: candidate.name.clone(), stages: candidate.stages.clone(), rows, verdicts: verdicts.clone() });
    }
    if judged.len() > 1 {
        print!("\n{}", side_by_side(&report));
    }
    write_json(json, claims, &report)?;
    let html = json.with_extension("html");
    let sections: Vec<Section<'_>> = report
        .iter()
        .map(|r| Section {
            title: r.name.clone(),
            facts: vec![
                ("golden set".to_string(), format!("{} ({})", set.name(), goldens.display())),
                ("candidate".to_string(), r.stages.iter().map(|s| s.display().to_string()).collect::<Vec<_>>().join(", ")),
                ("claims".to_string(), claims.to_string()),
                ("precision profile".to_string(), tolerances.precision().name().to_string()),
            ],
            verdicts: &r.verdicts,
        })
        .collect();
    html_report::write(&html, &format!("compare on {}", set.name()), &sections)?;
    println!("\nJSON report: {}\nHTML report: {}", json.display(), html.display());
    Ok(all_passed)
}

struct CandidateReport {
    name: String,
    stages: Vec<PathBuf>,
    rows: Vec<SummaryRow>,
    verdicts: Vec<Verdict>,
}

/// One table, a column group (status, worst error, headroom) per candidate.
fn side_by_side(reports: &[CandidateReport]) -> String {
    let mut out = String::from("| checkpoint | mode |");
    let mut rule = String::from("|---|---|");
    for r in reports {
        let _ = write!(out, " {} | worst | headroom |", r.name);
        rule.push_str("---|---|---|");
    }
    let _ = writeln!(out, "\n{rule}");
    for (i, row) in reports[0].rows.iter().enumerate() {
        let _ = write!(out, "| {} | {} |", row.checkpoint, row.mode);
        for r in reports {
            let Some(row) = r.rows.get(i) else { continue };
            let status = match row.status {
                Status::Pass if row.pending > 0 => format!("pass ({} pending)", row.pending),
                Status::Pass => "pass".to_string(),
                Status::Fail => format!("FAIL ({}/{})", row.failed, row.checks),
                Status::Pending => "pending".to_string(),
            };
            let worst = row.max_abs.map_or("-".to_string(), |m| format!("{m:.2e}"));
            let headroom = row.headroom.map_or("-".to_string(), report::headroom);
            let _ = write!(out, " {status} | {worst} | {headroom} |");
        }
        out.push('\n');
    }
    out
}

fn write_json(path: &Path, claims: &Claims, reports: &[CandidateReport]) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Candidate<'a> {
        name: &'a str,
        stages: &'a [PathBuf],
        #[serde(flatten)]
        report: JsonReport<'a>,
    }
    let candidates: Vec<Candidate<'_>> = reports
        .iter()
        .map(|r| Candidate {
            name: &r.name,
            stages: &r.stages,
            report: JsonReport {
                claims: claims.to_string(),
                passed: r.verdicts.iter().all(|v| v.status != Status::Fail),
                rows: &r.rows,
                first_divergence: first_divergence(&r.verdicts).map(JsonVerdict::from),
                failures: r.verdicts.iter().filter(|v| v.status == Status::Fail).map(JsonVerdict::from).collect(),
                pending: r.verdicts.iter().filter(|v| v.status == Status::Pending).map(JsonVerdict::from).collect(),
            },
        })
        .collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(&serde_json::json!({ "candidates": candidates }))?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// The reference's taps for a golden set's prompt, chained and isolated, written in the protocol.
pub fn dump_reference(goldens: &Path, model: &Path, out: &Path) -> Result<()> {
    let set = GoldenSet::open(goldens)?;
    let mut reference = Reference::load(model)?;
    let observations = runner::port::observe(&mut reference, &set);
    let files = dumps::write(&observations, &set, out)?;
    eprintln!("wrote {files} files of the reference's taps for {} into {}", set.name(), out.display());
    Ok(())
}
