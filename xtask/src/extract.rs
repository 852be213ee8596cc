//! `cargo xtask extract-goldens`: runs HF GPT-2 through reference/gpt2_taps.py and writes one golden
//! set per (model, prompt): the .npy files the checkpoint catalog names, and manifest.json.
//!
//! Every tap is matched against the catalog (name, scope, shape, dtype); a tap the catalog does not
//! know, or a catalog tensor no tap produced, is an error. Everything is written into a staging
//! directory beside the goldens and only renamed into place once every set succeeded, so an
//! interrupted or failed run leaves the old goldens as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use gpt2_checkpoints::catalog::{Checkpoint, DType, Role, TensorKey};
use gpt2_checkpoints::compare::hf_error;
use gpt2_checkpoints::config::Config;
use gpt2_checkpoints::goldens::{
    Environment, FORMAT_VERSION, GenerationInfo, GoldenSet, MANIFEST, Manifest, ModelInfo, PromptInfo, TRUTH_DIR, TensorEntry,
};
use gpt2_checkpoints::judge::Noise;
use gpt2_checkpoints::runner::dumps::ISOLATED_DIR;
use gpt2_checkpoints::tolerances::{Mode, Precision, Tolerances};
use ndarray::ArrayD;
use ndarray_npy::WriteNpyExt;
use num_traits::AsPrimitive;
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use crate::progress::Progress;
use crate::python::{Venv, path_str, python_error};

/// What HF generates beyond the prompt's forward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Generation {
    pub new_tokens: usize,
    pub decode_steps: usize,
    pub temperature: f32,
    pub top_k: usize,
}

impl Default for Generation {
    fn default() -> Self {
        Generation { new_tokens: 16, decode_steps: 3, temperature: 0.7, top_k: 50 }
    }
}

/// One golden set to extract.
#[derive(Clone, Debug)]
pub struct SetPlan {
    /// from_pretrained's argument: a directory relative to the repository, an absolute one, or a hub id.
    pub source: String,
    /// The directory name under the goldens root.
    pub model_name: String,
    pub prompt: String,
    pub generation: Generation,
    /// Lower precisions whose HF error is measured too (the manifest's `precision_noise`).
    pub precisions: Vec<Precision>,
}

impl SetPlan {
    pub fn slug(&self) -> String {
        prompt_slug(&self.prompt)
    }

    /// `<model>/<slug>` relative to the goldens root.
    pub fn relative_dir(&self) -> PathBuf {
        Path::new(&self.model_name).join(self.slug())
    }
}

/// The directory name for a prompt: its first words, lower-case ASCII, joined by '-'.
pub fn prompt_slug(prompt: &str) -> String {
    let words: Vec<String> =
        prompt.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).take(6).map(str::to_ascii_lowercase).collect();
    if words.is_empty() { "prompt".to_string() } else { words.join("-") }
}

/// The name a model's goldens go under: the last component of its directory or hub id.
pub fn model_name(source: &str) -> String {
    source.trim_end_matches('/').rsplit('/').next().unwrap_or(source).to_string()
}

/// Extracts every planned set into a staging directory under `staging_parent` and returns it.
/// Nothing outside the staging directory is touched.
/// `threads`: torch's thread count (1 for the committed goldens; more only to show that the
/// limits absorb what the thread count changes).
pub fn extract_all(venv: &Venv, plans: &[SetPlan], staging_parent: &Path, threads: usize) -> Result<tempfile::TempDir> {
    let unwritable = |e: std::io::Error| anyhow!("cannot write goldens under {} ({e}): choose a writable --out", staging_parent.display());
    std::fs::create_dir_all(staging_parent).map_err(unwritable)?;
    let staging = tempfile::Builder::new().prefix(".staging-").tempdir_in(staging_parent).map_err(unwritable)?;
    venv.with_reference(|py, reference| {
        let progress = Progress::new("extracting", plans.len());
        let mut loaded: BTreeMap<&str, (Bound<'_, PyAny>, Bound<'_, PyAny>)> = BTreeMap::new();
        for plan in plans {
            if !loaded.contains_key(plan.source.as_str()) {
                progress.step(format!("loading {} into HF", plan.source));
                let pair = reference
                    .call_method1("load", (resolve_source(&plan.source), threads))
                    .and_then(|r| r.extract())
                    .map_err(|e| python_error(py, e))?;
                loaded.insert(&plan.source, pair);
            }
            let (model, tokenizer) = &loaded[plan.source.as_str()];
            progress.step(format!("{} ({:?})", plan.relative_dir().display(), plan.prompt));
            extract_set(py, reference, model, tokenizer, plan, &staging.path().join(plan.relative_dir()))?;
            progress.inc();
        }
        drop(loaded);
        reference.call_method0("release").map_err(|e| python_error(py, e))?;
        Ok(())
    })?;
    Ok(staging)
}

/// Plans whose model is a hub id get the local directory HF downloads it to (online), so that the
/// manifest names a directory the suite and `measure` can load the model from.
pub fn localize(venv: &Venv, plans: Vec<SetPlan>) -> Result<Vec<SetPlan>> {
    venv.with_reference(|py, reference| {
        plans
            .into_iter()
            .map(|plan| {
                if Path::new(&resolve_source(&plan.source)).is_dir() {
                    return Ok(plan);
                }
                let dir: String = reference
                    .call_method1("local_dir", (plan.source.as_str(),))
                    .and_then(|d| d.extract())
                    .map_err(|e| python_error(py, e))?;
                Ok(SetPlan { source: dir, ..plan })
            })
            .collect()
    })
}

/// A relative directory is relative to the repository, whatever the current directory.
pub fn resolve_source(source: &str) -> String {
    let path = crate::project_root().join(source);
    if !Path::new(source).is_absolute() && path.is_dir() { path_str(&path) } else { source.to_string() }
}

fn extract_set(
    py: Python<'_>,
    reference: &Bound<'_, PyModule>,
    model: &Bound<'_, PyAny>,
    tokenizer: &Bound<'_, PyAny>,
    plan: &SetPlan,
    dir: &Path,
) -> Result<()> {
    let g = plan.generation;
    let precisions: Vec<&str> = plan.precisions.iter().map(|p| p.name()).collect();
    let result = reference
        .call_method1("extract", (model, tokenizer, plan.prompt.as_str(), g.new_tokens, g.decode_steps, g.temperature, g.top_k, precisions))
        .map_err(|e| python_error(py, e))?;
    let result = result.cast::<PyDict>().map_err(|e| anyhow!("gpt2_taps.extract returned {e}, not a dict"))?;
    let item = |key: &str| -> Result<Bound<'_, PyAny>> {
        result.get_item(key).map_err(|e| python_error(py, e))?.ok_or_else(|| anyhow!("gpt2_taps.extract returned no {key:?}"))
    };
    let config_json: String = item("config_json")?.extract()?;
    let config: Config = serde_json::from_str(&config_json).context("HF's config is not a GPT-2 config")?;
    config.validate().map_err(|m| anyhow!("{}: {m}", plan.source))?;
    let env = reference.call_method0("environment").map_err(|e| python_error(py, e))?;
    let env_item = |k: &str| -> Result<String> { Ok(env.get_item(k)?.extract()?) };
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        model: ModelInfo { name: plan.model_name.clone(), source: plan.source.clone(), config },
        prompt: PromptInfo { text: plan.prompt.clone(), slug: plan.slug(), ids: item("prompt_ids")?.extract()? },
        generation: GenerationInfo {
            new_tokens: g.new_tokens,
            decode_steps: g.decode_steps,
            temperature: g.temperature,
            top_k: g.top_k,
            new_ids: item("new_ids")?.extract()?,
            text: item("generated_text")?.extract()?,
        },
        environment: Environment {
            python: env_item("python")?,
            torch: env_item("torch")?,
            transformers: env_item("transformers")?,
            numpy: env_item("numpy")?,
        },
        tensors: Vec::new(),
        precision_noise: BTreeMap::new(),
    };

    let expected: BTreeMap<TensorKey, Vec<usize>> = manifest.dims().all_tensors().into_iter().collect();
    let written = write_taps(&item("taps")?, dir, &expected, Truth::No)?;
    if let Some(missing) = expected.keys().find(|k| !written.contains_key(k)) {
        bail!("{missing}: the catalog expects it but reference/gpt2_taps.py produced no such tap");
    }
    // The truth: HF's float64 twin, as float32 (its rounding is ~6e-8 of a value, far below HF
    // float32's own error), for every float tensor a port is judged on, in both modes.
    let float_output = |k: &TensorKey| k.spec().role == Role::Output && k.spec().dtype == DType::F32;
    let chained: BTreeMap<TensorKey, Vec<usize>> = expected.iter().filter(|(k, _)| float_output(k)).map(|(k, s)| (*k, s.clone())).collect();
    let isolated: BTreeMap<TensorKey, Vec<usize>> =
        chained.iter().filter(|(k, _)| k.is_isolated_output()).map(|(k, s)| (*k, s.clone())).collect();
    for (taps, subdir, wanted) in
        [("truth_taps", TRUTH_DIR.to_string(), &chained), ("isolated_truth_taps", isolated_truth_dir(), &isolated)]
    {
        let written = write_taps(&item(taps)?, &dir.join(&subdir), wanted, Truth::Yes)?;
        if let Some(missing) = wanted.keys().find(|k| !written.contains_key(k)) {
            bail!("{missing}: reference/gpt2_taps.py produced no float64 truth for it in {taps}");
        }
    }
    manifest.tensors = written.into_values().collect();
    std::fs::write(dir.join(MANIFEST), manifest.to_json()).with_context(|| format!("cannot write {}", dir.join(MANIFEST).display()))?;
    if !plan.precisions.is_empty() {
        let set = GoldenSet::open(dir)?;
        let by_precision = item("precision_taps")?;
        for precision in &plan.precisions {
            let taps = by_precision.get_item(precision.name()).map_err(|e| python_error(py, e))?;
            manifest.precision_noise.insert(precision.name().to_string(), precision_noise(&set, &taps)?.to_table());
        }
        std::fs::write(dir.join(MANIFEST), manifest.to_json()).with_context(|| format!("cannot write {}", dir.join(MANIFEST).display()))?;
    }
    Ok(())
}

/// HF's own error at a lower precision: its taps (chained and isolated) against the truth just
/// written, on each tensor's scale, the worst over layers and steps.
fn precision_noise(set: &GoldenSet, taps: &Bound<'_, PyAny>) -> Result<Noise> {
    let mut noise = Noise::default();
    for (mode, name) in [(Mode::Chained, "chained"), (Mode::Isolated, "isolated")] {
        for tap in taps.get_item(name)?.try_iter()? {
            let (checkpoint, layer, step, tensor, array): (u8, Option<usize>, Option<usize>, String, Bound<'_, PyAny>) = tap?.extract()?;
            let Some(key) = Checkpoint::from_id(checkpoint).and_then(|c| TensorKey::find(c, layer, step, &tensor)) else { continue };
            let wanted =
                key.spec().role == Role::Output && key.spec().dtype == DType::F32 && (mode == Mode::Chained || key.is_isolated_output());
            if !wanted {
                continue;
            }
            let array: PyReadonlyArrayDyn<'_, f64> = array.extract().map_err(|e| anyhow!("{key}: expected a float64 array: {e}"))?;
            let ours: ArrayD<f32> = array.as_array().mapv(|v| v as f32);
            noise.record(mode, key, hf_error(ours.view(), set.truth(key, mode)?.view(), Tolerances::scale(key))?);
        }
    }
    Ok(noise)
}

/// Whether taps are the float64 truth (written as float32, floats only) or HF's own goldens.
#[derive(Clone, Copy, PartialEq)]
enum Truth {
    No,
    Yes,
}

/// `truth/isolated`, relative to a golden set.
fn isolated_truth_dir() -> String {
    format!("{TRUTH_DIR}/{ISOLATED_DIR}")
}

/// Writes every tap of `taps` that `wanted` lists into `dir`, checking its shape; the truth's
/// ids are HF float32's and are not written. Returns the manifest entry of each file.
fn write_taps(
    taps: &Bound<'_, PyAny>,
    dir: &Path,
    wanted: &BTreeMap<TensorKey, Vec<usize>>,
    truth: Truth,
) -> Result<BTreeMap<TensorKey, TensorEntry>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written: BTreeMap<TensorKey, TensorEntry> = BTreeMap::new();
    for tap in taps.try_iter()? {
        let (checkpoint, layer, step, name, array): (u8, Option<usize>, Option<usize>, String, Bound<'_, PyAny>) = tap?.extract()?;
        let key = Checkpoint::from_id(checkpoint)
            .and_then(|c| TensorKey::find(c, layer, step, &name))
            .ok_or_else(|| anyhow!("reference/gpt2_taps.py produced tap ({checkpoint}, layer {layer:?}, step {step:?}, {name:?}), which the checkpoint catalog (src/catalog.rs) does not have"))?;
        let Some(shape) = wanted.get(&key) else {
            if truth == Truth::Yes {
                continue; // ids and evidence of the float64 run: not part of the truth
            }
            bail!("{key}: not expected for this model");
        };
        let path = dir.join(key.file_name());
        let spec = key.spec();
        let actual_shape = match (spec.dtype, truth) {
            (DType::F32, Truth::No) => write_array::<f32, f32>(&array, &path)?,
            (DType::F32, Truth::Yes) => write_array::<f64, f32>(&array, &path)?,
            (DType::I64, _) => write_array::<i64, i64>(&array, &path)?,
        };
        if &actual_shape != shape {
            bail!("{key}: HF produced shape {actual_shape:?}, the catalog expects {shape:?}");
        }
        let entry = TensorEntry {
            checkpoint,
            layer,
            step,
            name: spec.name.to_string(),
            shape: actual_shape,
            dtype: spec.dtype,
            file: key.file_name(),
        };
        if written.insert(key, entry).is_some() {
            bail!("{key}: tapped twice; the reference's hooks fired more often than once per forward pass");
        }
    }
    Ok(written)
}

/// Writes a numpy array of element type `T` as .npy of element type `W` and returns its shape.
fn write_array<T, W>(array: &Bound<'_, PyAny>, path: &Path) -> Result<Vec<usize>>
where
    T: numpy::Element + Copy + AsPrimitive<W>,
    W: ndarray_npy::WritableElement + Copy + 'static,
{
    let array: PyReadonlyArrayDyn<'_, T> =
        array.extract().map_err(|e| anyhow!("{}: expected a numpy array of {}: {e}", path.display(), std::any::type_name::<T>()))?;
    let shape = array.shape().to_vec();
    let owned: ArrayD<W> = array.as_array().mapv(|v| v.as_());
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    owned.write_npy(std::io::BufWriter::new(file)).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(shape)
}

/// Moves every set of `staging` to the same place under `root`, replacing what was there, but
/// keeping each committed file that agrees with the fresh one within `tolerances`: a run on
/// another machine rewrites only what truly changed, and says which.
pub fn install(staging: &Path, plans: &[SetPlan], root: &Path, tolerances: &Tolerances) -> Result<()> {
    for plan in plans {
        let from = staging.join(plan.relative_dir());
        let to = root.join(plan.relative_dir());
        let changed = crate::check::keep_agreeing(&GoldenSet::open(&from)?, &to, tolerances)?;
        let parent = to.parent().unwrap_or(root);
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        if to.exists() {
            let old = staging.join(".replaced").join(plan.relative_dir());
            std::fs::create_dir_all(old.parent().unwrap_or(staging))?;
            std::fs::rename(&to, &old).with_context(|| format!("cannot move the old {} aside", to.display()))?;
        }
        std::fs::rename(&from, &to).with_context(|| format!("cannot move {} into place", to.display()))?;
        match changed.as_slice() {
            [] => eprintln!("{}: every file agrees with the committed one within the tolerances; kept", to.display()),
            changed => {
                let shown = changed.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
                let more = if changed.len() > 4 { format!(", and {} more", changed.len() - 4) } else { String::new() };
                eprintln!("wrote {}: {} files changed ({shown}{more})", to.display(), changed.len());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_model_names_read_well() {
        assert_eq!(prompt_slug("Hello."), "hello");
        assert_eq!(prompt_slug("The capital of France is"), "the-capital-of-france-is");
        assert_eq!(prompt_slug("¿Qué?"), "qu");
        assert_eq!(prompt_slug("..."), "prompt");
        assert_eq!(model_name("fixtures/models/tiny-gpt2"), "tiny-gpt2");
        assert_eq!(model_name("openai-community/gpt2"), "gpt2");
    }
}
