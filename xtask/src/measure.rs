//! `cargo xtask measure`: the reference model against every committed golden set, as a checkpoint
//! table (status, worst error, tolerance, headroom, NMSE). These are the figures CHECKPOINTS.md cites.

use std::path::Path;

use anyhow::{Result, bail};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::model::Gpt2;
use gpt2_checkpoints::suite::{run_all, summarize, summary_table};
use gpt2_checkpoints::tolerances::Tolerances;

use crate::project_root;

pub fn measure(goldens: &Path, tolerances: &Tolerances, verbose: bool) -> Result<()> {
    let sets = GoldenSet::discover(goldens)?;
    let mut reports = Vec::new();
    for set in &sets {
        let mut model = Gpt2::load(&project_root().join(&set.manifest.model.source))?;
        reports.extend(run_all(&mut model, set, tolerances, &mut |_| {}));
    }
    println!("{} golden sets: {}\n", sets.len(), sets.iter().map(GoldenSet::name).collect::<Vec<_>>().join(", "));
    print!("{}", summary_table(&summarize(&reports)));
    if verbose {
        for report in &reports {
            println!("{}", report.message());
        }
    }
    let failed: Vec<_> = reports.iter().filter(|r| !r.passed()).collect();
    for report in &failed {
        eprintln!("{}", report.message());
    }
    if !failed.is_empty() {
        bail!("{} of {} checks failed", failed.len(), reports.len());
    }
    Ok(())
}
