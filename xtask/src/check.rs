//! Goldens that reproduce on any machine: `cargo xtask extract-goldens --check`, and what a plain
//! `extract-goldens` keeps.
//!
//! A fresh extraction differs from the committed goldens by HF float32's own run-to-run noise (the
//! thread count, the BLAS kernel a CPU picks), so floats are compared within the checkpoint's
//! tolerance, never bit for bit; token ids and the provenance (prompt ids, HF's generation,
//! config) must agree exactly.
//! - `--check` re-extracts every committed set into target/ and reports each file that drifted.
//! - A plain extraction keeps every committed file that agrees within those limits and rewrites
//!   only what truly changed, saying which, so that a run on another machine leaves the checkout
//!   clean.

use std::path::Path;

use anyhow::{Result, bail};
use gpt2_checkpoints::catalog::{DType, Role, TensorKey};
use gpt2_checkpoints::compare::{Tolerance, compare};
use gpt2_checkpoints::goldens::{GoldenSet, MANIFEST};
use gpt2_checkpoints::tolerances::{Mode, Tolerances};

use crate::extract::SetPlan;

/// How one file of a fresh extraction differs from the committed one, or None when it agrees.
pub fn file_drift(fresh: &GoldenSet, committed: &GoldenSet, key: TensorKey, tolerances: &Tolerances) -> Result<Option<String>> {
    Ok(match key.spec().dtype {
        DType::F32 => {
            let (ours, golden) = (fresh.f32(key)?, committed.f32(key)?);
            // HF's top-2 logits (evidence for 12's margin guard) are logits: compared as 08.
            let tolerance = match key.spec().role {
                Role::Evidence => Tolerance { atol: tolerances.logits(), rtol: 0.0 },
                _ => tolerances.for_tensor(key, Mode::Chained),
            };
            let c = compare(&key.stem(), ours.view(), golden.view(), tolerance)?;
            (!c.passed()).then(|| c.report())
        }
        DType::I64 => {
            let (ours, golden) = (fresh.i64(key)?, committed.i64(key)?);
            (ours != golden).then(|| format!("token ids differ: re-extracted {:?}, committed {:?}", ours.as_slice(), golden.as_slice()))
        }
    })
}

pub fn check(staging: &Path, plans: &[SetPlan], root: &Path, tolerances: &Tolerances) -> Result<()> {
    let mut drift: Vec<String> = Vec::new();
    let mut files = 0;
    for plan in plans {
        let committed_dir = root.join(plan.relative_dir());
        let fresh = GoldenSet::open(&staging.join(plan.relative_dir()))?;
        let committed = match GoldenSet::open(&committed_dir) {
            Ok(set) => set,
            Err(e) => {
                drift.push(e.to_string());
                continue;
            }
        };
        drift.extend(provenance_drift(&fresh, &committed));
        for entry in &committed.manifest.tensors {
            let Some(key) = entry.key() else { continue }; // GoldenSet::open checked every entry
            files += 1;
            if let Some(problem) = file_drift(&fresh, &committed, key, tolerances)? {
                drift.push(format!("{}: {problem}", committed_dir.join(&entry.file).display()));
            }
        }
        drift.extend(stray_files(&committed));
    }
    if drift.is_empty() {
        eprintln!("extract-goldens --check: {files} files in {} golden sets match a fresh extraction", plans.len());
        return Ok(());
    }
    for line in &drift {
        eprintln!("DRIFT {line}");
    }
    bail!("{} goldens differ from a fresh extraction: re-run `cargo xtask extract-goldens` and review the diff", drift.len())
}

/// Replaces each file of the freshly extracted `fresh` set by the committed one where the two
/// agree within the limits; returns the files that truly changed, with how.
pub fn keep_agreeing(fresh: &GoldenSet, committed_dir: &Path, tolerances: &Tolerances) -> Result<Vec<String>> {
    // The committed files are read as the fresh manifest describes them, so that a change of the
    // manifest's format alone keeps every .npy file.
    let committed = GoldenSet { dir: committed_dir.to_path_buf(), manifest: fresh.manifest.clone() };
    let mut changed = Vec::new();
    for entry in &fresh.manifest.tensors {
        let Some(key) = entry.key() else { continue };
        let agrees = matches!(file_drift(fresh, &committed, key, tolerances), Ok(None));
        if agrees {
            std::fs::copy(committed.dir.join(&entry.file), fresh.dir.join(&entry.file))?;
        } else {
            changed.push(entry.file.clone());
        }
    }
    Ok(changed)
}

fn provenance_drift(fresh: &GoldenSet, committed: &GoldenSet) -> Vec<String> {
    let (f, c) = (&fresh.manifest, &committed.manifest);
    let path = committed.dir.join(MANIFEST);
    let mut drift = Vec::new();
    let mut differs = |what: &str, same: bool, detail: String| {
        if !same {
            drift.push(format!("{}: {what} differs: {detail}", path.display()));
        }
    };
    differs("prompt", f.prompt == c.prompt, format!("re-extracted {:?}, committed {:?}", f.prompt, c.prompt));
    differs("generation", f.generation == c.generation, format!("re-extracted {:?}, committed {:?}", f.generation, c.generation));
    differs("model", f.model == c.model, format!("re-extracted {:?}, committed {:?}", f.model, c.model));
    if f.environment != c.environment {
        eprintln!("note: {} was extracted with {:?}, this run uses {:?}", path.display(), c.environment, f.environment);
    }
    drift
}

/// Files in a set's directory that its manifest does not list.
fn stray_files(set: &GoldenSet) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(&set.dir) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != MANIFEST && !set.manifest.tensors.iter().any(|t| &t.file == name))
        .map(|name| format!("{}: not listed in the manifest", set.dir.join(name).display()))
        .collect()
}
