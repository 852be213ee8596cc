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

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use gpt2_checkpoints::catalog::{Checkpoint, DType, Role, TensorKey};
use gpt2_checkpoints::compare::{compare, hf_error};
use gpt2_checkpoints::goldens::{GoldenSet, MANIFEST, TRUTH_DIR};
use gpt2_checkpoints::judge::Noise;
use gpt2_checkpoints::runner::dumps::ISOLATED_DIR;
use gpt2_checkpoints::tolerances::{Mode, Tolerances};

use crate::extract::SetPlan;

/// The truth is float64 rounded to float32: two machines agree to about an ulp (6e-8 of a value).
/// More than this, relative to the row's RMS, is a change of the truth, not rounding.
const TRUTH_DRIFT: f64 = 1e-6;

/// One file of a golden set: HF's float32 golden, or the truth in a mode.
#[derive(Clone, Copy, Debug)]
pub enum File {
    Golden(TensorKey),
    Truth(TensorKey, Mode),
}

impl File {
    /// Every file of a set, goldens then truth.
    pub fn all(set: &GoldenSet) -> Vec<File> {
        let keys: Vec<TensorKey> = set.manifest.tensors.iter().filter_map(|e| e.key()).collect();
        let float_outputs = || keys.iter().copied().filter(|k| k.spec().role == Role::Output && k.spec().dtype == DType::F32);
        let mut files: Vec<File> = keys.iter().map(|&k| File::Golden(k)).collect();
        files.extend(float_outputs().map(|k| File::Truth(k, Mode::Chained)));
        files.extend(float_outputs().filter(TensorKey::is_isolated_output).map(|k| File::Truth(k, Mode::Isolated)));
        files
    }

    /// Relative to the set's directory.
    pub fn path(&self) -> PathBuf {
        match *self {
            File::Golden(k) => PathBuf::from(k.file_name()),
            File::Truth(k, Mode::Chained) => Path::new(TRUTH_DIR).join(k.file_name()),
            File::Truth(k, Mode::Isolated) => Path::new(TRUTH_DIR).join(ISOLATED_DIR).join(k.file_name()),
        }
    }
}

/// How one file of a fresh extraction differs from the committed one, or None when it agrees: the
/// committed HF float32 golden must pass the limits as a port would, judged against the fresh
/// truth in units of the fresh HF's own error (`noise`, measured on `fresh`); the chained truth
/// must agree to rounding, the isolated truth as its float32 inputs do; token ids exactly.
pub fn file_drift(fresh: &GoldenSet, committed: &GoldenSet, noise: &Noise, file: File, tolerances: &Tolerances) -> Result<Option<String>> {
    Ok(match file {
        File::Golden(key) if key.spec().dtype == DType::I64 => {
            let (ours, golden) = (fresh.i64(key)?, committed.i64(key)?);
            (ours != golden).then(|| format!("token ids differ: re-extracted {:?}, committed {:?}", ours.as_slice(), golden.as_slice()))
        }
        File::Golden(key) if key.spec().role == Role::Output => {
            let (ours, golden, truth) = (committed.f32(key)?, fresh.f32(key)?, fresh.truth(key, Mode::Chained)?);
            let c = compare(
                &key.stem(),
                ours.view(),
                truth.view(),
                golden.view(),
                noise.of(Mode::Chained, key),
                tolerances.limit(key, Mode::Chained),
                Tolerances::scale(key),
            )?;
            (!c.passed()).then(|| c.summary())
        }
        File::Golden(key) => {
            // Isolated inputs and HF's evidence: HF float32 against HF float32, on the same scale,
            // within the limit of what they feed (12's top-2 logits are logits: 09's).
            let (ours, golden) = (fresh.f32(key)?, committed.f32(key)?);
            let drift = hf_error(ours.view(), golden.view(), Tolerances::scale(key))?;
            let like =
                if key.spec().role == Role::Evidence { TensorKey::new(Checkpoint::SelectedLogits, None, None, "last_logits") } else { key };
            let allowed =
                tolerances.limit(like, Mode::Chained).allowed(noise.of(Mode::Chained, like).max(noise_of_checkpoint(noise, like)));
            (drift > allowed).then(|| format!("differs by {drift:.2e} of its row's RMS, more than {allowed:.2e}"))
        }
        File::Truth(key, mode) => {
            let drift = hf_error(fresh.truth(key, mode)?.view(), committed.truth(key, mode)?.view(), Tolerances::scale(key))?;
            // The chained truth (float64 from the token ids) agrees to rounding; the isolated one
            // (HF's float64 module fed the float32 goldens) moves with its inputs, by as much as a
            // golden may.
            let allowed = match mode {
                Mode::Chained => TRUTH_DRIFT,
                Mode::Isolated => tolerances.limit(key, Mode::Chained).allowed(noise.of(Mode::Chained, key)),
            };
            (drift > allowed).then(|| format!("the float64 truth moved by {drift:.2e} of its row's RMS (more than {allowed:.2e})"))
        }
    })
}

/// For a tensor that is not itself judged (an isolated input), HF's error at the output it feeds:
/// the worst of its checkpoint's outputs.
fn noise_of_checkpoint(noise: &Noise, key: TensorKey) -> f64 {
    key.checkpoint
        .tensors()
        .iter()
        .filter(|t| t.role == Role::Output && t.dtype == DType::F32)
        .map(|t| noise.of(Mode::Chained, TensorKey { name: t.name, ..key }))
        .fold(0.0, f64::max)
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
        let noise = Noise::measure(&fresh)?;
        for file in File::all(&committed) {
            files += 1;
            let problem = file_drift(&fresh, &committed, &noise, file, tolerances).unwrap_or_else(|e| Some(e.to_string()));
            if let Some(problem) = problem {
                drift.push(format!("{}: {problem}", committed_dir.join(file.path()).display()));
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
    let noise = Noise::measure(fresh)?;
    let mut changed = Vec::new();
    for file in File::all(fresh) {
        let agrees = matches!(file_drift(fresh, &committed, &noise, file, tolerances), Ok(None));
        if agrees {
            std::fs::copy(committed.dir.join(file.path()), fresh.dir.join(file.path()))?;
        } else {
            changed.push(file.path().display().to_string());
        }
    }
    match manifest_agrees(fresh, committed_dir) {
        true => {
            std::fs::copy(committed_dir.join(MANIFEST), fresh.dir.join(MANIFEST))?;
        }
        false => changed.push(MANIFEST.to_string()),
    }
    Ok(changed)
}

/// The committed manifest says the same: the same provenance and tensors, and HF's error at the
/// lower precisions within a factor of 2 (an estimate that moves with the machine like the goldens).
fn manifest_agrees(fresh: &GoldenSet, committed_dir: &Path) -> bool {
    let Ok(committed) = GoldenSet::open(committed_dir) else { return false };
    let (f, c) = (&fresh.manifest, &committed.manifest);
    let same_noise = f.precision_noise.len() == c.precision_noise.len()
        && f.precision_noise.iter().all(|(precision, table)| {
            c.precision_noise.get(precision).is_some_and(|other| {
                other.len() == table.len()
                    && table
                        .iter()
                        .all(|(k, &a)| other.get(k).is_some_and(|&b| (a == b) || (a > 0.0 && b > 0.0 && (a / b).abs().log2().abs() <= 1.0)))
            })
        });
    same_noise
        && f.format_version == c.format_version
        && f.model == c.model
        && f.prompt == c.prompt
        && f.generation == c.generation
        && f.environment == c.environment
        && f.tensors == c.tensors
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
