//! `cargo xtask measure`: the reference model against every committed golden set, as a checkpoint
//! table (status, worst error, tolerance, headroom, NMSE). These are the figures CHECKPOINTS.md cites.

use std::path::Path;

use anyhow::{Result, bail};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Status, judge};
use gpt2_checkpoints::model::Reference;
use gpt2_checkpoints::report::{summarize, summary_table, verdict_line};
use gpt2_checkpoints::runner;
use gpt2_checkpoints::testing::model_dir;
use gpt2_checkpoints::tolerances::Tolerances;

pub fn measure(goldens: &Path, tolerances: &Tolerances, verbose: bool) -> Result<()> {
    let sets = GoldenSet::discover(goldens)?;
    let mut verdicts = Vec::new();
    for set in &sets {
        let mut reference = Reference::load(&model_dir(set))?;
        verdicts.extend(judge(set, &runner::port::observe(&mut reference, set), tolerances, &Claims::all()));
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
