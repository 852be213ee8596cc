//! `cargo xtask bench`: the Rust reference and HF transformers side by side, same weights, same
//! thread count, same protocol, measured in the same run.
//!
//! Protocol (also in reference/bench_hf.py): prompt ids i -> (i * 7919 + 13) % vocab. prefill T
//! (8, 128, 512): a fresh forward of T tokens with the KV cache on, logits of the last position
//! only. decode: after
//! an 8-token prefill, 64 greedy steps with the cache, ms per step. Median of `runs` runs after one
//! warm-up. Each implementation runs in its own process so that its peak RSS (VmHWM) is its own:
//! the Rust side is this binary's hidden `bench-rust` subcommand. The processes run `rounds` times,
//! the sides taking turns (this host's speed drifts by 20-60% within minutes), and each figure is
//! the median over the rounds.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use gpt2_checkpoints::model::{Gpt2, kernels};
use gpt2_checkpoints::sampling::argmax;
use gpt2_checkpoints::taps::NoTaps;
use serde::{Deserialize, Serialize};

use crate::python::Venv;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Timings {
    pub prefill_8_ms: f64,
    pub prefill_128_ms: f64,
    pub prefill_512_ms: f64,
    pub decode_ms_per_token: f64,
    pub peak_rss_mb: f64,
}

pub const NEW_TOKENS: usize = 64;

fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn median_ms(mut run: impl FnMut() -> Result<f64>, runs: usize) -> Result<f64> {
    run()?; // warm-up
    let mut times = (0..runs).map(|_| run()).collect::<Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2] * 1000.0)
}

/// The Rust side, in this process: prints one JSON object.
pub fn bench_rust(model_dir: &Path, threads: usize, runs: usize) -> Result<()> {
    kernels::set_threads(threads);
    let model = Gpt2::load(model_dir)?;
    let vocab = model.config.vocab_size;
    let prefill = |n: usize| {
        let ids = prompt_ids(n, vocab);
        let model = &model;
        move || -> Result<f64> {
            let start = Instant::now();
            let mut cache = model.new_cache(n);
            let h = model.forward(&ids, &mut cache, &mut NoTaps)?; // [T, C]
            let _logits = model.lm_head_row(h.row(n - 1)); // [V]
            Ok(start.elapsed().as_secs_f64())
        }
    };
    let decode = || -> Result<f64> {
        let ids = prompt_ids(8, vocab);
        let mut cache = model.new_cache(8 + NEW_TOKENS);
        let h = model.forward(&ids, &mut cache, &mut NoTaps)?;
        let mut token = argmax(model.lm_head_row(h.row(7)).view())?;
        let start = Instant::now();
        for _ in 0..NEW_TOKENS {
            let h = model.forward(&[token], &mut cache, &mut NoTaps)?; // [1, C]
            token = argmax(model.lm_head_row(h.row(0)).view())?;
        }
        Ok(start.elapsed().as_secs_f64() / NEW_TOKENS as f64)
    };
    let timings = Timings {
        prefill_8_ms: median_ms(prefill(8), runs)?,
        prefill_128_ms: median_ms(prefill(128), runs)?,
        prefill_512_ms: median_ms(prefill(512), runs)?,
        decode_ms_per_token: median_ms(decode, runs)?,
        peak_rss_mb: peak_rss_mb(),
    };
    println!("{}", serde_json::to_string(&timings)?);
    Ok(())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn run_json(command: &mut Command, what: &str) -> Result<Timings> {
    let output = command.output().with_context(|| format!("cannot start the {what} benchmark"))?;
    if !output.status.success() {
        bail!(
            "the {what} benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("the {what} benchmark printed {line:?}, not its timings"))
}

/// The median of each figure over the rounds; peak RSS: the highest.
fn over_rounds(rounds: &[Timings]) -> Timings {
    let median = |field: fn(&Timings) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(field).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Timings {
        prefill_8_ms: median(|t| t.prefill_8_ms),
        prefill_128_ms: median(|t| t.prefill_128_ms),
        prefill_512_ms: median(|t| t.prefill_512_ms),
        decode_ms_per_token: median(|t| t.decode_ms_per_token),
        peak_rss_mb: rounds.iter().map(|t| t.peak_rss_mb).fold(f64::NAN, f64::max),
    }
}

/// Runs both sides for each thread count, `rounds` times in turn, and prints the markdown table
/// with Rust/HF ratios.
pub fn bench(venv: &Venv, model_dir: &Path, threads: &[usize], runs: usize, rounds: usize) -> Result<()> {
    if let Err(e) = gpt2_checkpoints::weights::ModelFiles::find(model_dir) {
        bail!("{e}; make a model with `cargo xtask make-model --preset gpt2`");
    }
    if runs == 0 || rounds == 0 {
        bail!("--runs and --rounds must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let python = venv.dir.join("bin").join("python");
    let script = crate::project_root().join("reference").join("bench_hf.py");
    let mut table = String::from(
        "| implementation | threads | prefill 8 tok (ms) | prefill 128 tok (ms) | prefill 512 tok (ms) | decode (ms/token) | peak RSS (MB) |\n|---|---|---|---|---|---|---|\n",
    );
    for &n in threads {
        let (threads_arg, runs_arg) = (n.to_string(), runs.to_string());
        let mut sides: Vec<(String, Command)> = vec![("Rust reference".to_string(), Command::new(&exe))];
        sides[0].1.args(["bench-rust", "--threads", &threads_arg, "--runs", &runs_arg, "--model"]).arg(model_dir);
        for attn in ["eager", "sdpa"] {
            let mut command = Command::new(&python);
            command.arg(&script).args(["--attn", attn, "--threads", &threads_arg, "--runs", &runs_arg, "--model"]).arg(model_dir);
            sides.push((format!("HF transformers, {attn}"), command));
        }
        let mut measured: Vec<Vec<Timings>> = vec![Vec::new(); sides.len()];
        for round in 1..=rounds {
            for ((name, command), measured) in sides.iter_mut().zip(&mut measured) {
                eprintln!("benchmarking with {n} thread(s), round {round}/{rounds}: {name}");
                measured.push(run_json(command, name)?);
            }
        }
        let rows: Vec<(&str, Timings)> = sides.iter().zip(&measured).map(|((name, _), m)| (name.as_str(), over_rounds(m))).collect();
        let rust = rows[0].1;
        for (name, t) in &rows {
            table.push_str(&format!(
                "| {name} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
                t.prefill_8_ms, t.prefill_128_ms, t.prefill_512_ms, t.decode_ms_per_token, t.peak_rss_mb
            ));
        }
        for (name, hf) in &rows[1..] {
            let attn = name.rsplit(' ').next().unwrap_or_default();
            table.push_str(&format!(
                "| Rust / HF {attn} | {n} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                rust.prefill_8_ms / hf.prefill_8_ms,
                rust.prefill_128_ms / hf.prefill_128_ms,
                rust.prefill_512_ms / hf.prefill_512_ms,
                rust.decode_ms_per_token / hf.decode_ms_per_token,
                rust.peak_rss_mb / hf.peak_rss_mb
            ));
        }
    }
    println!("\n{}: median over {rounds} rounds of the median of {runs} runs, {NEW_TOKENS} decode steps\n\n{table}", model_dir.display());
    Ok(())
}
