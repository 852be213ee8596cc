//! cargo xtask: the project's automation, one binary with subcommands (see `cargo xtask --help`).
//!
//! - `extract-goldens`: HF GPT-2 -> fixtures/goldens (and `--check` that they still reproduce).
//! - `validate`: any GPT-2 (directory or hub id): extract goldens to target/, run all checkpoints.
//! - `bench`: the reference and HF transformers timed side by side, with ratios.
//! - `measure`: the reference model against committed goldens: the checkpoint error table.
//! - `make-tiny-model`: the tiny GPT-2 fixture under fixtures/models, created and saved by HF.
//! - `make-model`: a GPT-2 with the real shapes of distilgpt2, gpt2 or gpt2-medium (random weights).
//!
//! Python is embedded through pyo3 and used only here; the library and its tests need none.

mod bench;
mod check;
mod extract;
mod make_model;
mod measure;
mod python;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use gpt2_checkpoints::config::Config;
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::tolerances::Tolerances;

use extract::{Generation, SetPlan};
use make_model::Preset;
use python::Venv;

/// The fixture model the committed goldens come from.
const TINY_MODEL: &str = "fixtures/models/tiny-gpt2";
const GOLDENS: &str = "fixtures/goldens";
const TOLERANCES: &str = "fixtures/tolerances.yaml";

/// The committed prompts: the e2e gate, a short factual one, and a long one with punctuation,
/// digits and non-ASCII text.
const PROMPTS: &[&str] = &[
    "Hello.",
    "The capital of France is",
    "On 14 July 1789, the people of Paris stormed the Bastille; by 1792 France was a republic. « La Marseillaise » — naïve, peut-être, mais sincère à 100%! Today 2,165,423 Parisiens live there.",
];

#[derive(Parser)]
#[command(name = "cargo xtask", about = "gpt2-checkpoints automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run HF GPT-2 on the prompts and write its goldens for all 13 checkpoints.
    ExtractGoldens {
        /// A GPT-2 directory saved with save_pretrained, or a hub id (openai-community/gpt2). Repeatable.
        #[arg(long = "model", default_value = TINY_MODEL)]
        models: Vec<String>,
        /// Prompt text. Repeatable; default: the three committed prompts.
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        /// Where the golden sets go: <out>/<model>/<prompt-slug>/.
        #[arg(long, default_value = GOLDENS)]
        out: PathBuf,
        /// Greedy tokens generated for checkpoint 12.
        #[arg(long, default_value_t = Generation::default().new_tokens)]
        new_tokens: usize,
        /// Re-extract the committed goldens under --out and compare instead of writing.
        #[arg(long)]
        check: bool,
    },
    /// Extract goldens for any GPT-2 into target/validate and run all 13 checkpoints against them.
    Validate {
        /// A GPT-2 directory saved with save_pretrained, or a hub id (openai-community/gpt2).
        #[arg(long)]
        model: String,
        /// Prompt text. Repeatable; default: "Hello.".
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        #[arg(long, default_value_t = Generation::default().new_tokens)]
        new_tokens: usize,
    },
    /// Time the Rust reference and HF (eager and sdpa) on the same weights; print the table with ratios.
    Bench {
        /// A GPT-2 directory, e.g. target/models/gpt2 from `cargo xtask make-model --preset gpt2`.
        #[arg(long)]
        model: PathBuf,
        /// Thread counts to measure (repeatable).
        #[arg(long = "threads", default_values_t = [1, 2])]
        threads: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The Rust side of `bench`, run by it in a process of its own.
    #[command(hide = true)]
    BenchRust {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Run every checkpoint of the reference model against committed goldens and print the error table.
    Measure {
        /// Golden sets under this directory (<dir>/<model>/<slug>/manifest.yaml).
        #[arg(long, default_value = GOLDENS)]
        goldens: PathBuf,
        /// Also print every check with its worst elements.
        #[arg(long)]
        verbose: bool,
    },
    /// Create the tiny GPT-2 fixture with HF (fixed seed) and save it with save_pretrained.
    MakeTinyModel {
        #[arg(long, default_value = TINY_MODEL)]
        out: PathBuf,
        #[arg(long, default_value_t = make_model::TINY_SEED)]
        seed: u64,
    },
    /// Create a GPT-2 with the real shapes of a preset and random weights, with HF (not committed).
    MakeModel {
        #[arg(long, value_enum)]
        preset: Preset,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Default: target/models/<preset>.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The repository root: the parent of xtask/.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = project_root();
    match cli.command {
        Command::ExtractGoldens { models, prompts, out, new_tokens, check } => {
            let out = root.join(out);
            let generation = Generation { new_tokens, ..Generation::default() };
            let plans = if check { committed_plans(&out)? } else { plan(&models, &prompts, generation)? };
            let venv = Venv::ensure()?;
            if check {
                let tolerances = Tolerances::load(&root.join(TOLERANCES))?;
                let staging = extract::extract_all(&venv, &plans, &root.join("target").join("goldens-check"))?;
                check::check(staging.path(), &plans, &out, &tolerances)
            } else {
                let staging = extract::extract_all(&venv, &plans, &out)?;
                extract::install(staging.path(), &plans, &out)
            }
        }
        Command::Validate { model, prompts, new_tokens } => {
            let prompts = if prompts.is_empty() { vec!["Hello.".to_string()] } else { prompts };
            let plans = plan(std::slice::from_ref(&model), &prompts, Generation { new_tokens, ..Generation::default() })?;
            validate::validate(&Venv::ensure()?, &model, plans, &Tolerances::load(&root.join(TOLERANCES))?)
        }
        Command::Bench { model, threads, runs } => bench::bench(&Venv::ensure()?, &root.join(model), &threads, runs),
        Command::BenchRust { model, threads, runs } => bench::bench_rust(&root.join(model), threads, runs),
        Command::Measure { goldens, verbose } => measure::measure(&root.join(goldens), &Tolerances::load(&root.join(TOLERANCES))?, verbose),
        Command::MakeTinyModel { out, seed } => make_model::make_model(&Venv::ensure()?, Preset::Tiny, &root.join(out), seed),
        Command::MakeModel { preset, seed, out } => {
            let out = out.unwrap_or_else(|| Path::new("target").join("models").join(preset.name()));
            make_model::make_model(&Venv::ensure()?, preset, &root.join(out), seed)
        }
    }
}

/// Every (model, prompt) pair, after checking what can be checked before Python starts.
fn plan(models: &[String], prompts: &[String], generation: Generation) -> Result<Vec<SetPlan>> {
    let prompts: Vec<String> = if prompts.is_empty() { PROMPTS.iter().map(|p| p.to_string()).collect() } else { prompts.to_vec() };
    if let Some(empty) = prompts.iter().find(|p| p.trim().is_empty()) {
        bail!("--prompt {empty:?} is empty: pass at least one word");
    }
    for source in models {
        check_local_model(source)?;
    }
    Ok(models
        .iter()
        .flat_map(|source| {
            prompts.iter().map(move |prompt| SetPlan {
                source: source.clone(),
                model_name: extract::model_name(source),
                prompt: prompt.clone(),
                generation,
            })
        })
        .collect())
}

/// A local model directory must have a GPT-2 config.json and weights; a hub id is left to HF.
fn check_local_model(source: &str) -> Result<()> {
    let dir = project_root().join(source);
    let looks_local = dir.is_dir() || source.starts_with('.') || source.starts_with('/') || source.matches('/').count() > 1;
    if !looks_local {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!(
            "--model {source}: no such directory; pass a GPT-2 directory saved with save_pretrained or a hub id like openai-community/gpt2"
        );
    }
    Config::from_model_dir(&dir)?;
    if !dir.join("model.safetensors").is_file() && !dir.join("pytorch_model.bin").is_file() {
        bail!("{}: no model.safetensors: save the weights with save_pretrained", dir.display());
    }
    Ok(())
}

/// What `--check` re-extracts: exactly the sets committed under `out`, as their manifests describe.
fn committed_plans(out: &Path) -> Result<Vec<SetPlan>> {
    let sets = GoldenSet::discover(out)?;
    if sets.is_empty() {
        bail!("{}: no golden sets to check; run `cargo xtask extract-goldens` first", out.display());
    }
    Ok(sets
        .into_iter()
        .map(|set| {
            let m = set.manifest;
            let g = &m.generation;
            SetPlan {
                source: m.model.source,
                model_name: m.model.name,
                prompt: m.prompt.text,
                generation: Generation {
                    new_tokens: g.new_tokens,
                    decode_steps: g.decode_steps,
                    temperature: g.temperature,
                    top_k: g.top_k,
                },
            }
        })
        .collect())
}
