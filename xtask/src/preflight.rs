//! What is checked before any extraction starts, so that a model or prompt that cannot work is
//! refused in one line that names the file or option, not after minutes of work or in a Python
//! traceback.
//!
//! For each model directory (a hub id is first downloaded by [`extract::localize`]):
//! - config.json: a GPT-2 config whose every option the reference implements ([`Config`]);
//! - the weights: one of the layouts [`ModelFiles::find`] knows; a `pytorch_model.bin` is converted
//!   once, through transformers, to `model.safetensors` beside it (noted on the terminal); then every
//!   tensor's name, shape and dtype is checked against config.json from the headers alone;
//! - the tokenizer: every id it can produce has a row in wte (its vocabulary fits vocab_size);
//!
//! and for each prompt: it encodes to ids below vocab_size, and it fits n_positions together with
//! the tokens that will be generated.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use gpt2_checkpoints::config::Config;
use gpt2_checkpoints::tokenizer::Tokenizer;
use gpt2_checkpoints::weights::{Layout, ModelFiles, Weights};
use pyo3::types::PyAnyMethods;

use crate::extract::{self, SetPlan};
use crate::python::{Venv, path_str, python_error};

/// Downloads hub models, checks every model and prompt, converts pickles; returns the plans with
/// local model directories.
pub fn prepare(venv: &Venv, plans: Vec<SetPlan>) -> Result<Vec<SetPlan>> {
    let plans = extract::localize(venv, plans)?;
    let dirs: BTreeSet<String> = plans.iter().map(|p| extract::resolve_source(&p.source)).collect();
    for dir in &dirs {
        let checked = CHECKED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(Path::new(dir));
        let files = if checked { ModelFiles::find(Path::new(dir))? } else { check(Path::new(dir), &plans)? };
        if files.layout == Layout::PytorchBin {
            let files = convert(venv, &files)?;
            Weights::open(&files)?.check(&Config::from_model_dir(&files.dir)?)?;
        }
    }
    Ok(plans)
}

/// The directories [`check`] has passed in this command (local models are checked before Python
/// starts, and [`prepare`] does not read them again).
static CHECKED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Everything that can be checked in `dir` without Python, for the plans whose model it is: the
/// config, the weights' layout and (safetensors) headers, the tokenizer and the prompts.
pub fn check(dir: &Path, plans: &[SetPlan]) -> Result<ModelFiles> {
    let config = Config::from_model_dir(dir)?;
    let files = ModelFiles::find(dir)?;
    if let Some(tokenizer) = tokenizer(dir, &config)? {
        for plan in plans.iter().filter(|p| Path::new(&extract::resolve_source(&p.source)) == dir) {
            prompt_fits(dir, &tokenizer, &config, plan)?;
        }
    }
    if files.layout != Layout::PytorchBin {
        Weights::open(&files)?.check(&config)?;
    }
    CHECKED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(dir.to_path_buf());
    Ok(files)
}

/// The model's tokenizer.json, whose vocabulary must fit config.json's vocab_size; None when the
/// directory has only vocab.json + merges.txt (HF reads those; the prompt is then checked there).
fn tokenizer(dir: &Path, config: &Config) -> Result<Option<Tokenizer>> {
    if !dir.join("tokenizer.json").is_file() {
        if dir.join("vocab.json").is_file() {
            return Ok(None);
        }
        bail!(
            "{}: no tokenizer.json (or vocab.json + merges.txt): save the tokenizer beside the model with save_pretrained",
            dir.display()
        );
    }
    let tokenizer = Tokenizer::from_model_dir(dir)?;
    let size = tokenizer.vocab_size();
    if size > config.vocab_size {
        bail!(
            "{}: the tokenizer has {size} tokens but config.json's vocab_size is {}: ids from {} up have no embedding; save the tokenizer the model was trained with beside it",
            dir.join("tokenizer.json").display(),
            config.vocab_size,
            config.vocab_size
        );
    }
    Ok(Some(tokenizer))
}

/// The prompt's ids exist in wte, and the prompt and its generated tokens fit n_positions.
fn prompt_fits(dir: &Path, tokenizer: &Tokenizer, config: &Config, plan: &SetPlan) -> Result<()> {
    let ids = tokenizer.encode(&plan.prompt)?;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        bail!(
            "--prompt {:?} encodes to id {id}, beyond {}'s vocab_size {}: the tokenizer is not the model's",
            plan.prompt,
            dir.display(),
            config.vocab_size
        );
    }
    let needed = ids.len() + plan.generation.new_tokens;
    if needed > config.n_positions {
        bail!(
            "--prompt is {} tokens and {} more are generated: {needed} positions, over {}'s n_positions = {}; shorten the prompt or pass a smaller --new-tokens",
            ids.len(),
            plan.generation.new_tokens,
            dir.display(),
            config.n_positions
        );
    }
    Ok(())
}

/// Converts a directory's `pytorch_model.bin` once, through transformers, to safetensors beside
/// it (same tensors, same dtype), and returns the new files.
fn convert(venv: &Venv, files: &ModelFiles) -> Result<ModelFiles> {
    let dir = &files.dir;
    let staging = tempfile::Builder::new()
        .prefix(".gpt2-checkpoints-convert-")
        .tempdir_in(dir)
        .with_context(|| format!("{}: cannot write model.safetensors beside pytorch_model.bin here; re-save the model with save_pretrained in a writable directory", dir.display()))?;
    eprintln!("{}: pytorch_model.bin only; converting it once to model.safetensors beside it, through transformers", dir.display());
    venv.with_reference(|py, reference| {
        reference.call_method1("convert_to_safetensors", (path_str(dir), path_str(staging.path()))).map_err(|e| python_error(py, e))?;
        Ok(())
    })?;
    let written: Vec<PathBuf> = std::fs::read_dir(staging.path())?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("model") && n.contains(".safetensors")))
        .collect();
    if written.is_empty() {
        bail!("{}: transformers wrote no model.safetensors while converting pytorch_model.bin", dir.display());
    }
    for file in &written {
        let name = file.file_name().ok_or_else(|| anyhow!("{}: no file name", file.display()))?;
        std::fs::rename(file, dir.join(name)).with_context(|| format!("cannot move {} into {}", file.display(), dir.display()))?;
    }
    let converted = ModelFiles::find(dir)?;
    eprintln!("{}: now has {} (the goldens come from the same weights either way)", dir.display(), converted.describe());
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Generation;

    /// A scratch copy of the tiny fixture with `edit` applied to its config.json.
    fn tiny_with_config(edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
        let fixture = crate::project_root().join("fixtures/models/tiny-gpt2");
        let dir = tempfile::tempdir().expect("scratch");
        for entry in std::fs::read_dir(&fixture).expect("fixture") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
        let config_path = dir.path().join("config.json");
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).expect("config")).expect("json");
        edit(&mut config);
        std::fs::write(&config_path, config.to_string()).expect("write");
        dir
    }

    fn plan(dir: &Path, prompt: &str) -> SetPlan {
        let source = path_str(dir);
        SetPlan {
            model_name: extract::model_name(&source),
            source,
            prompt: prompt.into(),
            generation: Generation::default(),
            precisions: vec![],
        }
    }

    fn refusal(dir: &Path, prompt: &str) -> String {
        match check(dir, &[plan(dir, prompt)]) {
            Ok(_) => panic!("{} with {prompt:?} was accepted", dir.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_fixture_and_its_prompts_pass() {
        let dir = crate::project_root().join("fixtures/models/tiny-gpt2");
        assert_eq!(check(&dir, &[plan(&dir, "Hello.")]).expect("accepted").layout, Layout::Safetensors);
    }

    #[test]
    fn a_vocabulary_that_does_not_fit_is_refused_naming_the_tokenizer() {
        let dir = tiny_with_config(|c| c["vocab_size"] = 1000.into());
        let message = refusal(dir.path(), "Hello.");
        assert!(
            message.contains("tokenizer.json") && message.contains("50257 tokens") && message.contains("vocab_size is 1000"),
            "{message}"
        );
    }

    #[test]
    fn a_prompt_longer_than_n_positions_is_refused() {
        let dir = crate::project_root().join("fixtures/models/tiny-gpt2");
        let message = refusal(&dir, &"word ".repeat(120));
        assert!(message.contains("n_positions = 128") && message.contains("16 more are generated"), "{message}");
    }

    #[test]
    fn an_option_the_reference_does_not_implement_is_named() {
        let dir = tiny_with_config(|c| c["reorder_and_upcast_attn"] = true.into());
        let message = refusal(dir.path(), "Hello.");
        assert!(message.contains("config.json") && message.contains("reorder_and_upcast_attn"), "{message}");
    }

    #[test]
    fn weights_that_do_not_match_the_config_are_refused_from_the_headers() {
        let dir = tiny_with_config(|c| c["n_layer"] = 2.into());
        let message = refusal(dir.path(), "Hello.");
        assert!(message.contains("model.safetensors") && message.contains("not part of GPT-2"), "{message}");
    }
}
