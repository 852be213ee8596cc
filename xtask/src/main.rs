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
mod compare;
mod extract;
mod html_report;
mod make_model;
mod measure;
mod preflight;
mod progress;
mod python;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::Claims;
use gpt2_checkpoints::tolerances::{Precision, Tolerances};

use extract::{Generation, SetPlan};
use make_model::{Preset, SaveAs};
use python::Venv;

/// The fixture models the committed goldens come from: HF's own initialisation, and the same
/// size class edited to real GPT-2's statistics.
const TINY_MODEL: &str = "fixtures/models/tiny-gpt2";
const TINY_STATS_MODEL: &str = "fixtures/models/tiny-gpt2-stats";
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
        /// Default: the committed fixtures and their prompts.
        #[arg(long = "model")]
        models: Vec<String>,
        /// Prompt text. Repeatable; default: the three committed prompts.
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        /// Where the golden sets go: <out>/<model>/<prompt-slug>/. Default: fixtures/goldens.
        #[arg(long, default_value_os_t = project_root().join(GOLDENS))]
        out: PathBuf,
        /// Greedy tokens generated for checkpoint 12.
        #[arg(long, default_value_t = Generation::default().new_tokens)]
        new_tokens: usize,
        /// Re-extract the committed goldens under --out and compare instead of writing.
        #[arg(long)]
        check: bool,
        /// torch threads (the committed goldens use 1; `--check --threads 2` shows the limits
        /// absorb what the thread count changes).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Also measure HF's own error at a lower precision (bf16, f16; repeatable), for ports
        /// judged with that profile. The committed sets have both.
        #[arg(long = "precision", value_parser = parse_precision)]
        precisions: Vec<Precision>,
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
        /// Judge in units of HF's own error at this precision (f32, bf16, f16).
        #[arg(long, default_value = "f32", value_parser = parse_precision)]
        precision: Precision,
    },
    /// Time the Rust reference and HF (eager and sdpa) on the same weights; print the table with ratios.
    Bench {
        /// A GPT-2 directory, e.g. target/models/gpt2 from `cargo xtask make-model --preset gpt2`.
        #[arg(long)]
        model: PathBuf,
        /// Thread counts to measure: a list (`--threads 1,2,4`) or repeated.
        #[arg(long = "threads", value_delimiter = ',', default_values_t = [1, 2])]
        threads: Vec<usize>,
        /// Timed runs per process, after one warm-up.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Each side's process runs this many times, the sides taking turns: a slow spell of the
        /// host then falls on all of them. Each figure is the median over the rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
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
        /// Golden sets under this directory (<dir>/<model>/<slug>/manifest.json).
        #[arg(long, default_value_os_t = project_root().join(GOLDENS))]
        goldens: PathBuf,
        /// Also print every check with its worst elements.
        #[arg(long)]
        verbose: bool,
        /// First print HF float32's own error against the float64 truth, per tensor and model.
        #[arg(long)]
        noise: bool,
    },
    /// Judge ports from their dumps (CHECKPOINTS.md, "The dump protocol"): one table for all.
    /// Exit 0: nothing present fails and everything claimed is present; 1: a failure; 2: bad input.
    Compare {
        /// One golden set: a directory with manifest.json, e.g. fixtures/goldens/tiny-gpt2/hello.
        #[arg(long)]
        goldens: PathBuf,
        /// A directory of dumps; DIR1,DIR2 merges the stages of one pipeline. Repeatable: one
        /// column group per candidate.
        #[arg(long = "candidate", required = true)]
        candidates: Vec<String>,
        /// What must pass: NN (00 through NN), a list (00,01,04), `all` or `none` (default).
        #[arg(long, default_value = "none")]
        claims: String,
        /// Judge in units of HF's own error at this precision (f32, bf16, f16): a port that runs
        /// in bfloat16 against HF bfloat16's error.
        #[arg(long, default_value = "f32", value_parser = parse_precision)]
        precision: Precision,
        /// Where the JSON report goes. Default: target/compare/report.json.
        #[arg(long, default_value_os_t = project_root().join("target").join("compare").join("report.json"))]
        json: PathBuf,
    },
    /// Write the reference model's taps for a golden set's prompt in the dump protocol.
    DumpReference {
        /// One golden set: a directory with manifest.json.
        #[arg(long)]
        goldens: PathBuf,
        /// The model directory. Default: the one the golden set was extracted from.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a committed fixture with HF (fixed seed) and save it with save_pretrained.
    MakeTinyModel {
        /// The fixture with real GPT-2 statistics (fixtures/models/tiny-gpt2-stats).
        #[arg(long)]
        stats: bool,
        /// Default: the fixture's directory under fixtures/models.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create a GPT-2 with the real shapes of a preset and random weights, with HF (not committed).
    MakeModel {
        #[arg(long, value_enum)]
        preset: Preset,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Edit HF's initialisation to real GPT-2's statistics (biases, LayerNorm, outliers, logits).
        #[arg(long)]
        real_stats: bool,
        /// The file layout: safetensors, sharded, pytorch-bin, float16, bfloat16, no-prefix.
        #[arg(long, value_enum, default_value_t = SaveAs::default())]
        save_as: SaveAs,
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
    let cli = Cli::parse();
    if matches!(cli.command, Command::BenchRust { .. }) {
        keep_freed_allocations_for_reuse();
    } else {
        return_large_allocations_to_the_system();
    }
    if let Command::Compare { goldens, candidates, claims, precision, json } = &cli.command {
        return compare_exit(goldens, candidates, claims, *precision, json);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
/// tensors of that size come from the heap and, once freed, stay in the process. The extraction
/// converts every block of the model to float64 and back (a few MB to ~100 MB each), so the heap
/// kept growing by a fraction of the weights; a fixed 1 MB threshold hands every freed tensor back.
fn return_large_allocations_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread exists
    // (parsing the command line starts none).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// The opposite, for the Rust side of `bench`, as a long-running inference process tunes its
/// allocator: a freed tensor stays in the heap for the next layer's. With glibc's own policy, a
/// few-MB tensor went back to the kernel when freed and the next one paid its page faults again
/// (`bench-rust` with mimalloc, which also keeps freed memory, was 10-13% faster at 128 tokens and
/// 15-25% at decode; with these settings, within the noise of mimalloc, at 656 MB of peak RSS
/// against its 686-700).
fn keep_freed_allocations_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as above.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// `compare`'s three exit codes: 0 pass, 1 a failure, 2 bad input.
fn compare_exit(goldens: &Path, candidates: &[String], claims: &str, precision: Precision, json: &Path) -> ExitCode {
    let judged = Claims::parse(claims).map_err(anyhow::Error::from).and_then(|claims| {
        let tolerances = Tolerances::load(&project_root().join(TOLERANCES))?.with_precision(precision);
        let candidates: Vec<compare::Candidate> = candidates.iter().map(|c| compare::Candidate::parse(c)).collect();
        compare::compare(goldens, &candidates, &claims, &tolerances, json)
    });
    match judged {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = project_root();
    match cli.command {
        Command::ExtractGoldens { models, prompts, out, new_tokens, check, threads, precisions } => {
            let generation = Generation { new_tokens, ..Generation::default() };
            let plans = match (check, models.is_empty(), prompts.is_empty()) {
                (true, _, _) => committed_plans(&out)?,
                (false, true, true) => committed_sets(generation)?,
                (false, true, false) => plan(&[TINY_MODEL.to_string()], &prompts, generation)?,
                (false, false, _) => plan(&models, &prompts, generation)?,
            };
            let plans: Vec<SetPlan> = plans
                .into_iter()
                .map(|p| SetPlan { precisions: low_precisions(&precisions).unwrap_or(p.precisions.clone()), ..p })
                .collect();
            let venv = Venv::ensure()?;
            if check {
                let tolerances = Tolerances::load(&root.join(TOLERANCES))?;
                let plans = preflight::prepare(&venv, plans)?;
                let staging = extract::extract_all(&venv, &plans, &root.join("target").join("goldens-check"), threads)?;
                check::check(staging.path(), &plans, &out, &tolerances)
            } else {
                let plans = preflight::prepare(&venv, plans)?;
                let staging = extract::extract_all(&venv, &plans, &out, threads)?;
                extract::install(staging.path(), &plans, &out, &Tolerances::load(&root.join(TOLERANCES))?)
            }
        }
        Command::Validate { model, prompts, new_tokens, precision } => {
            let prompts = if prompts.is_empty() { vec!["Hello.".to_string()] } else { prompts };
            let plans = plan(std::slice::from_ref(&model), &prompts, Generation { new_tokens, ..Generation::default() })?;
            let plans = plans.into_iter().map(|p| SetPlan { precisions: low_precisions(&[precision]).unwrap_or_default(), ..p }).collect();
            let tolerances = Tolerances::load(&root.join(TOLERANCES))?.with_precision(precision);
            validate::validate(&Venv::ensure()?, &source_from_cwd(&model), plans, &tolerances)
        }
        Command::Bench { model, threads, runs, rounds } => bench::bench(&Venv::ensure()?, &model, &threads, runs, rounds),
        Command::BenchRust { model, threads, runs } => bench::bench_rust(&model, threads, runs),
        Command::Measure { goldens, verbose, noise } => {
            measure::measure(&goldens, &Tolerances::load(&root.join(TOLERANCES))?, verbose, noise)
        }
        Command::Compare { .. } => bail!("compare is dispatched by main with its own exit codes"),
        Command::DumpReference { goldens, model, out } => {
            let model = match model {
                Some(model) => model,
                None => gpt2_checkpoints::testing::model_dir(&GoldenSet::open(&goldens)?),
            };
            compare::dump_reference(&goldens, &model, &out)
        }
        Command::MakeTinyModel { stats, out } => {
            let (preset, model, seed) = if stats {
                (Preset::TinyStats, TINY_STATS_MODEL, make_model::TINY_STATS_SEED)
            } else {
                (Preset::Tiny, TINY_MODEL, make_model::TINY_SEED)
            };
            make_model::make_model(&Venv::ensure()?, preset, &out.unwrap_or_else(|| root.join(model)), seed, stats, SaveAs::Safetensors)
        }
        Command::MakeModel { preset, seed, real_stats, save_as, out } => {
            let out = out.unwrap_or_else(|| root.join("target").join("models").join(preset.name()));
            make_model::make_model(&Venv::ensure()?, preset, &out, seed, real_stats, save_as)
        }
    }
}

/// `--precision` as given, without f32 (always there); None when none was given.
fn low_precisions(given: &[Precision]) -> Option<Vec<Precision>> {
    (!given.is_empty()).then(|| given.iter().copied().filter(|p| *p != Precision::F32).collect())
}

fn parse_precision(text: &str) -> std::result::Result<Precision, String> {
    Precision::parse(text).map_err(|e| e.to_string())
}

/// What a plain `extract-goldens` writes: every prompt on the tiny fixture, the two short ones on
/// the fixture with real statistics (the long prompt's vocabulary-sized tensors and their truth
/// would add about 25 MB there).
fn committed_sets(generation: Generation) -> Result<Vec<SetPlan>> {
    let prompts = |n: usize| PROMPTS[..n].iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let mut plans = plan(&[TINY_MODEL.to_string()], &prompts(PROMPTS.len()), generation)?;
    plans.extend(plan(&[TINY_STATS_MODEL.to_string()], &prompts(2), generation)?);
    Ok(plans.into_iter().map(|p| SetPlan { precisions: Precision::LOW.to_vec(), ..p }).collect())
}

/// Every (model, prompt) pair, after checking what can be checked before Python starts.
fn plan(models: &[String], prompts: &[String], generation: Generation) -> Result<Vec<SetPlan>> {
    let prompts: Vec<String> = if prompts.is_empty() { PROMPTS.iter().map(|p| p.to_string()).collect() } else { prompts.to_vec() };
    if let Some(empty) = prompts.iter().find(|p| p.trim().is_empty()) {
        bail!("--prompt {empty:?} is empty: pass at least one word");
    }
    let models: Vec<String> = models.iter().map(|m| source_from_cwd(m)).collect();
    for source in &models {
        check_local_model(source)?;
    }
    let plans: Vec<SetPlan> = models
        .iter()
        .flat_map(|source| {
            prompts.iter().map(move |prompt| SetPlan {
                source: source.clone(),
                model_name: extract::model_name(source),
                prompt: prompt.clone(),
                generation,
                precisions: Vec::new(),
            })
        })
        .collect();
    // Local models are checked now, before Python starts (hub ones once downloaded).
    for dir in models.iter().map(|m| PathBuf::from(extract::resolve_source(m))).filter(|d| d.is_dir()) {
        preflight::check(&dir, &plans)?;
    }
    Ok(plans)
}

/// A model directory given on the command line is relative to where the command runs: it is kept
/// relative to the repository when it lies inside it (so that manifests stay portable), absolute
/// otherwise. Anything else (a hub id, the default fixture) is left as it is.
pub fn source_from_cwd(source: &str) -> String {
    let Ok(dir) = std::fs::canonicalize(source) else { return source.to_string() };
    match std::fs::canonicalize(project_root()).ok().and_then(|root| dir.strip_prefix(root).ok().map(Path::to_path_buf)) {
        Some(inside) => python::path_str(&inside),
        None => python::path_str(&dir),
    }
}

/// A local model directory must exist (everything in it is checked by [`preflight::prepare`]); a hub
/// id is left to HF.
fn check_local_model(source: &str) -> Result<()> {
    let dir = PathBuf::from(extract::resolve_source(source));
    let looks_local = dir.is_dir() || source.starts_with('.') || source.starts_with('/') || source.matches('/').count() > 1;
    if looks_local && !dir.is_dir() {
        bail!(
            "--model {source}: no such directory; pass a GPT-2 directory saved with save_pretrained or a hub id like openai-community/gpt2"
        );
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
                precisions: Precision::LOW.into_iter().filter(|p| m.precision_noise.contains_key(p.name())).collect(),
            }
        })
        .collect())
}
