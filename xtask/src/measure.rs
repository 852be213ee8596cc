//! `cargo xtask measure`: the reference model against every committed golden set, as a checkpoint
//! table (status, worst error in units of HF's own, limit, headroom, NMSE), and HF float32's own
//! error against the float64 truth per tensor and model (`--noise`). These are the figures
//! CHECKPOINTS.md cites.

use std::path::Path;

use anyhow::{Result, bail};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Noise, Status, judge_with};
use gpt2_checkpoints::model::Reference;
use gpt2_checkpoints::report::{mode_name, summarize, summary_table, verdict_line};
use gpt2_checkpoints::runner;
use gpt2_checkpoints::testing::model_dir;
use gpt2_checkpoints::tolerances::Tolerances;

pub fn measure(goldens: &Path, tolerances: &Tolerances, verbose: bool, noise: bool) -> Result<()> {
    let sets = GoldenSet::discover(goldens)?;
    if noise {
        print!("{}", noise_table(&sets)?);
    }
    let mut verdicts = Vec::new();
    for set in &sets {
        let mut reference = Reference::load(&model_dir(set))?;
        let noise = Noise::pooled(sets.iter().filter(|s| s.manifest.model.name == set.manifest.model.name), tolerances.precision());
        verdicts.extend(judge_with(set, &runner::port::observe(&mut reference, set), tolerances, &Claims::all(), noise));
    }
    println!("{} golden sets: {}\n", sets.len(), sets.iter().map(GoldenSet::name).collect::<Vec<_>>().join(", "));
    print!("{}", summary_table(&summarize(&verdicts)));
    if verbose {
        for v in &verdicts {
            println!("{}", verdict_line(v));
        }
    }
    let failed: Vec<_> = verdicts.iter().filter(|v| v.status == Status::Fail).collect();
    for v in &failed {
        eprintln!("{}", verdict_line(v));
    }
    if !failed.is_empty() {
        bail!("{} of {} checks failed", failed.len(), verdicts.len());
    }
    Ok(())
}

/// HF float32's own error against the truth (row-RMS units; probabilities against themselves),
/// the worst over each model's golden sets, layers and steps: one column per model.
fn noise_table(sets: &[GoldenSet]) -> Result<String> {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let mut models: Vec<String> = Vec::new();
    let mut rows: BTreeMap<(String, &'static str), BTreeMap<String, f64>> = BTreeMap::new();
    for set in sets {
        let model = set.manifest.model.name.clone();
        if !models.contains(&model) {
            models.push(model.clone());
        }
        for (mode, checkpoint, name, error) in Noise::measure(set)?.iter() {
            let worst =
                rows.entry((format!("{}.{name}", checkpoint.label()), mode_name(mode))).or_default().entry(model.clone()).or_insert(0.0);
            *worst = worst.max(error);
        }
    }
    let mut out = format!("| tensor | mode | {} |\n|---|---|{}\n", models.join(" | "), "---|".repeat(models.len()));
    for ((tensor, mode), errors) in rows {
        let cells: Vec<String> = models.iter().map(|m| errors.get(m).map_or("-".into(), |e| format!("{e:.1e}"))).collect();
        let _ = writeln!(out, "| {tensor} | {mode} | {} |", cells.join(" | "));
    }
    Ok(out + "\n")
}
