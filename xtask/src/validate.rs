//! `cargo xtask validate`: any GPT-2 (a local directory or a hub id) checked end to end.
//!
//! Extracts HF goldens for the model into target/validate/, runs all 13 checkpoints of the reference
//! against them in both modes, and prints the checkpoint table (status, worst error, tolerance,
//! headroom, NMSE) and, on failure, the first checkpoint that diverged.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Noise, Status, judge_with};
use gpt2_checkpoints::model::Reference;
use gpt2_checkpoints::report::{first_divergence, summarize, summary_table, verdict_line};
use gpt2_checkpoints::runner;
use gpt2_checkpoints::tolerances::Tolerances;
use gpt2_checkpoints::weights::ModelFiles;

use crate::extract::{self, SetPlan};
use crate::html_report::{self, Section};
use crate::progress::Progress;
use crate::project_root;
use crate::python::Venv;

pub fn validate(venv: &Venv, source: &str, plans: Vec<SetPlan>, tolerances: &Tolerances) -> Result<()> {
    let start = Instant::now();
    let plans = crate::preflight::prepare(venv, plans)?;
    let model_dir = plans.first().map(|p| extract::resolve_source(&p.source)).unwrap_or_default();
    let root = project_root().join("target").join("validate");
    let staging = extract::extract_all(venv, &plans, &root, 1)?;
    extract::install(staging.path(), &plans, &root, tolerances)?;
    let progress = Progress::new("checking", 2 * plans.len());
    progress.println(format!("goldens extracted in {:.1} s", start.elapsed().as_secs_f64()));
    progress.step(format!("loading {model_dir} into the reference"));
    let mut reference = Reference::load(&PathBuf::from(&model_dir))?;
    let sets = plans.iter().map(|plan| GoldenSet::open(&root.join(plan.relative_dir()))).collect::<gpt2_checkpoints::Result<Vec<_>>>()?;
    let mut verdicts = Vec::new();
    for set in &sets {
        progress.step(format!("{}: chained", set.name()));
        let mut observations = runner::port::chained(&mut reference, set);
        progress.inc();
        progress.step(format!("{}: isolated", set.name()));
        observations.merge(runner::port::isolated(&mut reference, set));
        progress.inc();
        // HF's own error pooled over the prompts given (one model).
        verdicts.extend(judge_with(set, &observations, tolerances, &Claims::all(), Noise::pooled(&sets, tolerances.precision())));
    }
    drop(progress);
    let weights = format!(
        "{}, {} (computed in float32{})",
        ModelFiles::find(Path::new(&model_dir))?.describe(),
        reference.model.source_dtype,
        if reference.model.source_dtype == "float32" { "" } else { ", upcast at load as HF does" }
    );
    println!("\n{source}: {} golden sets in {}; weights: {weights}\n", plans.len(), root.display());
    print!("{}", summary_table(&summarize(&verdicts)));
    if let Some(first) = first_divergence(&verdicts) {
        println!("\nfirst divergence in the chain: {} ({})", first.key, first.detail.lines().next().unwrap_or_default());
    }
    let failed: Vec<_> = verdicts.iter().filter(|v| v.status == Status::Fail).collect();
    for v in failed.iter().take(5) {
        eprintln!("{}", verdict_line(v));
    }
    let report = root.join("report.html");
    let facts = vec![
        ("model".to_string(), model_dir.clone()),
        ("weights".to_string(), weights),
        (
            "golden sets".to_string(),
            sets.iter().map(|s| format!("{} ({:?})", s.name(), s.manifest.prompt.text)).collect::<Vec<_>>().join(", "),
        ),
        ("precision profile".to_string(), tolerances.precision().name().to_string()),
        ("candidate".to_string(), "the Rust reference (gpt2_checkpoints::model)".to_string()),
    ];
    html_report::write(&report, &format!("validate {source}"), &[Section { title: source.to_string(), facts, verdicts: &verdicts }])?;
    println!("\nreport: {}", report.display());
    println!("validate took {:.1} s", start.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("{} of {} checks failed", failed.len(), verdicts.len());
    }
    Ok(())
}
