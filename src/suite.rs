//! The checkpoint suite: runs a [`Candidate`] against a golden set, one checkpoint at a time.
//!
//! - [`check_isolated`] feeds a checkpoint's golden input to the candidate's component and compares
//!   its outputs: a failure is that component's fault.
//! - [`ChainedRun`] runs the candidate once from token ids; [`check_chained`] compares one
//!   checkpoint of it and, on failure, names the first tensor in forward order that diverged.
//!
//! Float tensors are compared within fixtures/tolerances.yaml ([`crate::compare`]); token ids
//! exactly. A token decided by a top-1/top-2 margin smaller than the logits tolerance is reported as
//! ambiguous and fails: a match there would be luck.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ndarray::{ArrayD, ArrayView1, Axis, Dimension, Ix1, Ix2, Ix3, s};

use crate::candidate::{Candidate, KvPair, LnSite};
use crate::catalog::{Checkpoint, Dim, Role, TensorKey};
use crate::compare::{Comparison, compare};
use crate::error::{Error, Result};
use crate::goldens::GoldenSet;
use crate::taps::TapRecorder;
use crate::tolerances::{Mode, Tolerances};

/// A candidate's value for one catalog tensor.
#[derive(Clone, Debug)]
pub enum Value {
    /// Single-sequence: the golden's leading batch axis is left out.
    F32(ArrayD<f32>),
    Ids(Vec<u32>),
}

/// The verdict on one tensor.
#[derive(Clone, Debug)]
pub struct TensorCheck {
    pub key: TensorKey,
    pub passed: bool,
    /// One line (plus the worst pairs for floats).
    pub detail: String,
    pub comparison: Option<Comparison>,
}

/// The verdict on one checkpoint of one golden set, at one layer (or the model-level tensors).
#[derive(Clone, Debug)]
pub struct CheckpointReport {
    pub set: String,
    pub checkpoint: Checkpoint,
    pub layer: Option<usize>,
    pub mode: Mode,
    pub checks: Vec<TensorCheck>,
    /// Chained mode, on failure: the first tensor in forward order that failed.
    pub first_divergence: Option<TensorCheck>,
}

impl CheckpointReport {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The full message: header, one entry per tensor, and the first divergence.
    pub fn message(&self) -> String {
        let layer = self.layer.map_or(String::new(), |l| format!(" layer {l}"));
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        let mut out = format!("{} ({:?}) {verdict} for {}{layer}", self.checkpoint, self.mode, self.set);
        for check in &self.checks {
            let mark = if check.passed { "ok  " } else { "FAIL" };
            let _ = write!(out, "\n  {mark} {}: {}", check.key, check.detail);
        }
        if let Some(first) = &self.first_divergence {
            let _ = write!(out, "\n  first divergence in the chain: {} ({}): {}", first.key, first.key.checkpoint.label(), first.detail);
        }
        out
    }
}

/// Everything a candidate computes from token ids for one golden set, computed once and shared by
/// the chained checks of every checkpoint.
pub struct ChainedRun {
    values: BTreeMap<TensorKey, Value>,
    /// Why the run stopped early, if it did: every key it did not reach fails with this.
    error: Option<String>,
}

impl ChainedRun {
    pub fn new(candidate: &mut dyn Candidate, set: &GoldenSet) -> ChainedRun {
        let mut run = ChainedRun { values: BTreeMap::new(), error: None };
        if let Err(e) = run.fill(candidate, set) {
            run.error = Some(e.to_string());
        }
        run
    }

    fn fill(&mut self, candidate: &mut dyn Candidate, set: &GoldenSet) -> Result<()> {
        let g = &set.manifest.generation;
        let prompt = set.ids(key(Checkpoint::Embeddings, None, "input_ids"))?;
        let decode_ids = set.ids(key(Checkpoint::KvCache, None, "decode_ids"))?;
        let mut recorder = TapRecorder::default();
        let result = candidate.run_prompt(&prompt, &decode_ids, &mut recorder);
        self.values.extend(recorder.tensors.into_iter().map(|(k, v)| (k, Value::F32(v))));
        result?;
        let logits_key = key(Checkpoint::Logits, None, "logits");
        let logits = match self.values.get(&logits_key) {
            Some(Value::F32(l)) => l.clone().into_dimensionality::<Ix2>().map_err(|e| Error::Input(format!("{logits_key}: {e}")))?,
            _ => return Err(Error::Input(format!("the candidate did not tap {logits_key}"))),
        };
        let last = candidate.select_last(logits.view())?; // [V]
        let next = candidate.argmax(last.view())?;
        let sampling = candidate.sampling(last.view(), g.temperature, g.top_k)?;
        self.values.insert(key(Checkpoint::SelectedLogits, None, "last_logits"), Value::F32(last.into_dyn()));
        self.values.insert(key(Checkpoint::Argmax, None, "next_token"), Value::Ids(vec![next]));
        self.values.insert(key(Checkpoint::Softmax, None, "probs"), Value::F32(sampling.probs.into_dyn()));
        self.values.insert(key(Checkpoint::Softmax, None, "probs_warped"), Value::F32(sampling.probs_warped.into_dyn()));
        self.values.insert(key(Checkpoint::Softmax, None, "top_ids"), Value::Ids(sampling.top_ids));
        let generated = candidate.generate_greedy(&prompt, g.new_tokens)?;
        self.values.insert(key(Checkpoint::Generation, None, "new_ids"), Value::Ids(generated));
        Ok(())
    }

    fn get(&self, key: TensorKey) -> std::result::Result<&Value, String> {
        self.values.get(&key).ok_or_else(|| match &self.error {
            Some(e) => format!("not reached: the chained run stopped with: {e}"),
            None => format!("the candidate did not tap {key}"),
        })
    }
}

fn key(checkpoint: Checkpoint, layer: Option<usize>, name: &'static str) -> TensorKey {
    TensorKey::new(checkpoint, layer, None, name)
}

/// The compared tensors of `checkpoint` at `layer` (None: its model-level tensors).
pub fn outputs_of(set: &GoldenSet, checkpoint: Checkpoint, layer: Option<usize>) -> Vec<TensorKey> {
    set.manifest
        .dims()
        .all_tensors()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.checkpoint == checkpoint && k.layer == layer && k.spec().role == Role::Output)
        .collect()
}

/// Checks `checkpoint` at `layer` in chained mode; on failure also finds the first divergence.
pub fn check_chained(
    run: &ChainedRun,
    set: &GoldenSet,
    tolerances: &Tolerances,
    checkpoint: Checkpoint,
    layer: Option<usize>,
) -> CheckpointReport {
    let checks: Vec<TensorCheck> =
        outputs_of(set, checkpoint, layer).into_iter().map(|k| check_value(set, tolerances, k, Mode::Chained, run.get(k))).collect();
    let mut report = CheckpointReport { set: set.name(), checkpoint, layer, mode: Mode::Chained, checks, first_divergence: None };
    if !report.passed() {
        report.first_divergence = first_divergence(run, set, tolerances);
    }
    report
}

/// The first tensor, in forward order, whose chained value fails its check.
pub fn first_divergence(run: &ChainedRun, set: &GoldenSet, tolerances: &Tolerances) -> Option<TensorCheck> {
    set.manifest.dims().forward_order().into_iter().map(|k| check_value(set, tolerances, k, Mode::Chained, run.get(k))).find(|c| !c.passed)
}

/// Checks `checkpoint` at `layer` in isolated mode: golden inputs in, the candidate's outputs compared.
pub fn check_isolated(
    candidate: &mut dyn Candidate,
    set: &GoldenSet,
    tolerances: &Tolerances,
    checkpoint: Checkpoint,
    layer: Option<usize>,
) -> CheckpointReport {
    let keys = outputs_of(set, checkpoint, layer);
    let checks = match isolated_values(candidate, set, checkpoint, layer) {
        Ok(values) => keys
            .into_iter()
            .map(|k| {
                check_value(set, tolerances, k, Mode::Isolated, values.get(&k).ok_or_else(|| format!("the isolated run produced no {k}")))
            })
            .collect(),
        Err(e) => keys.into_iter().map(|k| TensorCheck { key: k, passed: false, detail: e.to_string(), comparison: None }).collect(),
    };
    CheckpointReport { set: set.name(), checkpoint, layer, mode: Mode::Isolated, checks, first_divergence: None }
}

/// Checkpoint 03's promise: decoding with the cache gives the logits of recomputing the whole
/// sequence. For each decode step s, the candidate's cached decode logits (chained run) are compared
/// with the last-position logits of a fresh run on prompt + the first s decode ids.
pub fn check_cache_matches_recompute(
    candidate: &mut dyn Candidate,
    run: &ChainedRun,
    set: &GoldenSet,
    tolerances: &Tolerances,
) -> CheckpointReport {
    let decode_key = key(Checkpoint::KvCache, None, "decode_logits");
    let check = (|| -> std::result::Result<TensorCheck, String> {
        let cached = match run.get(decode_key)? {
            Value::F32(v) => v.clone(),
            Value::Ids(_) => return Err(format!("{decode_key} holds ids")),
        };
        let prompt = set.ids(key(Checkpoint::Embeddings, None, "input_ids")).map_err(|e| e.to_string())?;
        let decode_ids = set.ids(key(Checkpoint::KvCache, None, "decode_ids")).map_err(|e| e.to_string())?;
        let mut rows = Vec::with_capacity(decode_ids.len());
        for step in 1..=decode_ids.len() {
            let sequence: Vec<u32> = prompt.iter().chain(&decode_ids[..step]).copied().collect();
            let mut recorder = TapRecorder::default();
            candidate.run_prompt(&sequence, &[], &mut recorder).map_err(|e| e.to_string())?;
            let logits =
                recorder.tensors.remove(&key(Checkpoint::Logits, None, "logits")).ok_or("the candidate did not tap 08_logits.logits")?;
            let last = logits.shape()[0] - 1;
            rows.push(logits.index_axis_move(Axis(0), last)); // [V]
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let recomputed = ndarray::stack(Axis(0), &views).map_err(|e| e.to_string())?; // [S, V]
        let c = compare(&decode_key.stem(), cached.view(), recomputed.view(), tolerances.for_tensor(decode_key, Mode::Chained))
            .map_err(|e| e.to_string())?;
        Ok(TensorCheck {
            key: decode_key,
            passed: c.passed(),
            detail: format!("cached vs recomputed: {}", c.report()),
            comparison: Some(c),
        })
    })()
    .unwrap_or_else(|detail| TensorCheck { key: decode_key, passed: false, detail, comparison: None });
    CheckpointReport {
        set: set.name(),
        checkpoint: Checkpoint::KvCache,
        layer: None,
        mode: Mode::Chained,
        checks: vec![check],
        first_divergence: None,
    }
}

/// A golden float tensor without its batch axis, as the candidate sees it.
fn read_golden<D: Dimension>(set: &GoldenSet, key: TensorKey) -> Result<ndarray::Array<f32, D>> {
    let array = set.f32(key)?;
    let array = if key.spec().shape.first() == Some(&Dim::B) { array.index_axis_move(Axis(0), 0) } else { array };
    array.into_dimensionality::<D>().map_err(|e| Error::golden(&set.dir.join(key.file_name()), e.to_string()))
}

fn isolated_values(
    c: &mut dyn Candidate,
    set: &GoldenSet,
    checkpoint: Checkpoint,
    layer: Option<usize>,
) -> Result<BTreeMap<TensorKey, Value>> {
    let mut out = BTreeMap::new();
    let mut put = |checkpoint, layer, name, value: ArrayD<f32>| {
        out.insert(key(checkpoint, layer, name), Value::F32(value));
    };
    use Checkpoint as C;
    match (checkpoint, layer) {
        (C::Embeddings, None) => {
            let ids = set.ids(key(C::Embeddings, None, "input_ids"))?;
            put(C::Embeddings, None, "embeddings", c.embeddings(&ids)?.into_dyn());
        }
        (C::LayerNorm, Some(l)) => {
            let ln_1 = c.layer_norm(LnSite::Ln1(l), read_golden::<Ix2>(set, key(C::LayerNorm, layer, "ln_1.input"))?.view())?;
            let ln_2 = c.layer_norm(LnSite::Ln2(l), read_golden::<Ix2>(set, key(C::LayerNorm, layer, "ln_2.input"))?.view())?;
            put(C::LayerNorm, layer, "ln_1", ln_1.into_dyn());
            put(C::LayerNorm, layer, "ln_2", ln_2.into_dyn());
        }
        (C::LayerNorm, None) => {
            let ln_f = c.layer_norm(LnSite::LnF, read_golden::<Ix2>(set, key(C::LayerNorm, None, "ln_f.input"))?.view())?;
            put(C::LayerNorm, None, "ln_f", ln_f.into_dyn());
        }
        (C::Qkv, Some(l)) => {
            let qkv = c.qkv(l, read_golden::<Ix2>(set, key(C::LayerNorm, layer, "ln_1"))?.view())?;
            put(C::Qkv, layer, "q", qkv.q.into_dyn());
            put(C::Qkv, layer, "k", qkv.k.into_dyn());
            put(C::Qkv, layer, "v", qkv.v.into_dyn());
        }
        (C::KvCache, Some(l)) => {
            // Step s: the golden cache of step s - 1 plus the last position of step s's golden.
            let state = |s: usize| -> Result<KvPair> {
                let at = |name| read_golden::<Ix3>(set, TensorKey::new(C::KvCache, layer, Some(s), name));
                Ok(KvPair { keys: at("keys")?, values: at("values")? })
            };
            for s in 1..=set.manifest.generation.decode_steps {
                let (past, now) = (state(s - 1)?, state(s)?);
                let last = now.keys.shape()[1] - 1;
                let new =
                    KvPair { keys: now.keys.slice(s![.., last.., ..]).to_owned(), values: now.values.slice(s![.., last.., ..]).to_owned() };
                let appended = c.kv_append(l, &past, &new)?;
                out.insert(TensorKey::new(C::KvCache, layer, Some(s), "keys"), Value::F32(appended.keys.into_dyn()));
                out.insert(TensorKey::new(C::KvCache, layer, Some(s), "values"), Value::F32(appended.values.into_dyn()));
            }
            // Step 0 is the prompt's cache: its keys and values are checkpoint 02's k and v.
            let prompt = state(0)?;
            out.insert(TensorKey::new(C::KvCache, layer, Some(0), "keys"), Value::F32(prompt.keys.into_dyn()));
            out.insert(TensorKey::new(C::KvCache, layer, Some(0), "values"), Value::F32(prompt.values.into_dyn()));
        }
        (C::AttnScores, Some(l)) => {
            let q = read_golden::<Ix3>(set, key(C::Qkv, layer, "q"))?;
            let k = read_golden::<Ix3>(set, key(C::Qkv, layer, "k"))?;
            let scores = c.attention_scores(l, q.view(), k.view())?;
            put(C::AttnScores, layer, "scores", scores.scores.into_dyn());
            put(C::AttnScores, layer, "weights", scores.weights.into_dyn());
        }
        (C::AttnOutput, Some(l)) => {
            let weights = read_golden::<Ix3>(set, key(C::AttnScores, layer, "weights"))?;
            let v = read_golden::<Ix3>(set, key(C::Qkv, layer, "v"))?;
            put(C::AttnOutput, layer, "attn_output", c.attention_output(l, weights.view(), v.view())?.into_dyn());
        }
        (C::Ffn, Some(l)) => {
            let mlp = c.mlp(l, read_golden::<Ix2>(set, key(C::LayerNorm, layer, "ln_2"))?.view())?;
            put(C::Ffn, layer, "gelu", mlp.gelu.into_dyn());
            put(C::Ffn, layer, "mlp_output", mlp.output.into_dyn());
        }
        (C::Block, Some(l)) => {
            let output = c.block(l, read_golden::<Ix2>(set, key(C::Block, layer, "input"))?.view())?;
            put(C::Block, layer, "output", output.into_dyn());
        }
        (C::Logits, None) => {
            let logits = c.logits(read_golden::<Ix2>(set, key(C::LayerNorm, None, "ln_f"))?.view())?;
            put(C::Logits, None, "logits", logits.into_dyn());
        }
        (C::SelectedLogits, None) => {
            let last = c.select_last(read_golden::<Ix2>(set, key(C::Logits, None, "logits"))?.view())?;
            put(C::SelectedLogits, None, "last_logits", last.into_dyn());
        }
        (C::Argmax, None) => {
            let next = c.argmax(read_golden::<Ix1>(set, key(C::SelectedLogits, None, "last_logits"))?.view())?;
            out.insert(key(C::Argmax, None, "next_token"), Value::Ids(vec![next]));
        }
        (C::Softmax, None) => {
            let g = &set.manifest.generation;
            let last = read_golden::<Ix1>(set, key(C::SelectedLogits, None, "last_logits"))?;
            let sampling = c.sampling(last.view(), g.temperature, g.top_k)?;
            put(C::Softmax, None, "probs", sampling.probs.into_dyn());
            put(C::Softmax, None, "probs_warped", sampling.probs_warped.into_dyn());
            out.insert(key(C::Softmax, None, "top_ids"), Value::Ids(sampling.top_ids));
        }
        (C::Generation, None) => {
            let prompt = set.ids(key(C::Embeddings, None, "input_ids"))?;
            out.insert(key(C::Generation, None, "new_ids"), Value::Ids(c.generate_greedy(&prompt, set.manifest.generation.new_tokens)?));
        }
        (checkpoint, layer) => {
            return Err(Error::Input(format!(
                "{checkpoint} has nothing to run in isolation at layer {layer:?} (03's decode logits need the whole model: chained only)"
            )));
        }
    }
    Ok(out)
}

/// Compares one value with its golden.
fn check_value(
    set: &GoldenSet,
    tolerances: &Tolerances,
    key: TensorKey,
    mode: Mode,
    ours: std::result::Result<&Value, String>,
) -> TensorCheck {
    let fail = |detail: String| TensorCheck { key, passed: false, detail, comparison: None };
    let ours = match ours {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    match ours {
        Value::F32(ours) => {
            let golden = match read_golden::<ndarray::IxDyn>(set, key) {
                Ok(g) => g,
                Err(e) => return fail(e.to_string()),
            };
            match compare(&key.stem(), ours.view(), golden.view(), tolerances.for_tensor(key, mode)) {
                Ok(c) => TensorCheck { key, passed: c.passed(), detail: c.report(), comparison: Some(c) },
                Err(e) => fail(e.to_string()),
            }
        }
        Value::Ids(ours) => match set.ids(key) {
            Ok(golden) => check_ids(set, tolerances, key, ours, &golden),
            Err(e) => fail(e.to_string()),
        },
    }
}

/// Token ids: exact. For 10 and 12 no step may be decided by an HF top-1/top-2 margin below the
/// logits tolerance (that would be ambiguous); for 11's top-k ranking, two ids may trade places only
/// where HF's logits for them are within the logits tolerance (a tie, not an error).
fn check_ids(set: &GoldenSet, tolerances: &Tolerances, key: TensorKey, ours: &[u32], golden: &[u32]) -> TensorCheck {
    let tol = tolerances.logits();
    let result = match key.checkpoint {
        Checkpoint::Softmax => check_ranking(set, ours, golden, tol),
        _ => check_decisions(set, key, ours, golden, tol),
    };
    let (passed, detail) = result.unwrap_or_else(|e| (false, e.to_string()));
    TensorCheck { key, passed, detail, comparison: None }
}

fn check_decisions(set: &GoldenSet, key: TensorKey, ours: &[u32], golden: &[u32], tol: f64) -> Result<(bool, String)> {
    let margins: Vec<f32> = match key.checkpoint {
        Checkpoint::Argmax => {
            vec![top2_margin(read_golden::<Ix1>(set, TensorKey::new(Checkpoint::SelectedLogits, None, None, "last_logits"))?.view())]
        }
        Checkpoint::Generation => {
            let top2 = read_golden::<Ix2>(set, TensorKey::new(Checkpoint::Generation, None, None, "top2_logits"))?;
            top2.rows().into_iter().map(|r| r[0] - r[1]).collect()
        }
        _ => Vec::new(),
    };
    let mismatch = first_mismatch(ours, golden);
    let min_margin = margins.iter().copied().fold(f32::INFINITY, f32::min);
    let note = format!("smallest HF top-1/top-2 margin {min_margin:.3e} (logits atol {tol:.0e})");
    if let Some((step, margin)) = margins.iter().copied().enumerate().find(|&(_, m)| f64::from(m) < tol) {
        return Ok((
            false,
            format!(
                "AMBIGUOUS at step {step}: HF's top-1/top-2 margin {margin:.3e} is below the logits tolerance {tol:.0e}, so that token is decided by rounding; ours {ours:?}, HF {golden:?}"
            ),
        ));
    }
    Ok(match mismatch {
        None => (true, format!("{} ids equal; {note}", golden.len())),
        Some(at) => (
            false,
            format!(
                "ids differ first at step {at}: ours {:?}, HF {:?}; ours {ours:?}, HF {golden:?}; {note}",
                ours.get(at),
                golden.get(at)
            ),
        ),
    })
}

fn check_ranking(set: &GoldenSet, ours: &[u32], golden: &[u32], tol: f64) -> Result<(bool, String)> {
    let logits = read_golden::<Ix1>(set, TensorKey::new(Checkpoint::SelectedLogits, None, None, "last_logits"))?;
    let logit = |id: u32| logits.get(id as usize).copied().unwrap_or(f32::NAN);
    if ours.len() != golden.len() {
        return Ok((false, format!("{} ids, HF has {}", ours.len(), golden.len())));
    }
    let mut ties = 0;
    for (rank, (&a, &b)) in ours.iter().zip(golden).enumerate() {
        if a == b {
            continue;
        }
        let gap = f64::from((logit(a) - logit(b)).abs());
        if gap > tol || gap.is_nan() {
            return Ok((false, format!("rank {rank}: ours {a}, HF {b}, whose HF logits differ by {gap:.3e} > {tol:.0e}")));
        }
        ties += 1;
    }
    Ok((
        true,
        format!(
            "{} ids equal{}",
            golden.len(),
            if ties > 0 { format!(" up to {ties} swaps of ids whose HF logits tie within {tol:.0e}") } else { String::new() }
        ),
    ))
}

fn first_mismatch(ours: &[u32], golden: &[u32]) -> Option<usize> {
    ours.iter().zip(golden).position(|(a, b)| a != b).or((ours.len() != golden.len()).then(|| ours.len().min(golden.len())))
}

fn top2_margin(logits: ArrayView1<f32>) -> f32 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in logits {
        if v > first {
            second = first;
            first = v;
        } else if v > second {
            second = v;
        }
    }
    first - second
}

/// Every check of one golden set: each checkpoint at each layer and at model level, in both modes
/// (03's decode logits chained only), and the cache-versus-recompute check. `progress` sees each
/// checkpoint as it starts.
pub fn run_all(
    candidate: &mut dyn Candidate,
    set: &GoldenSet,
    tolerances: &Tolerances,
    progress: &mut dyn FnMut(Checkpoint),
) -> Vec<CheckpointReport> {
    let run = ChainedRun::new(candidate, set);
    let n_layer = set.manifest.model.config.n_layer;
    let mut reports = Vec::new();
    for checkpoint in Checkpoint::ALL {
        progress(checkpoint);
        let mut scopes: Vec<Option<usize>> = Vec::new();
        if checkpoint.tensors().iter().any(|t| t.scope == crate::catalog::Scope::Layer && t.role == Role::Output) {
            scopes.extend((0..n_layer).map(Some));
        }
        if checkpoint.tensors().iter().any(|t| t.scope == crate::catalog::Scope::Model && t.role == Role::Output) {
            scopes.push(None);
        }
        for layer in scopes {
            if !(checkpoint == Checkpoint::KvCache && layer.is_none()) {
                reports.push(check_isolated(candidate, set, tolerances, checkpoint, layer));
            }
            reports.push(check_chained(&run, set, tolerances, checkpoint, layer));
        }
        if checkpoint == Checkpoint::KvCache {
            reports.push(check_cache_matches_recompute(candidate, &run, set, tolerances));
        }
    }
    reports
}

/// One line of the checkpoint table: the worst over all layers, tensors and golden sets.
#[derive(Clone, Debug)]
pub struct SummaryRow {
    pub checkpoint: Checkpoint,
    pub mode: Mode,
    pub checks: usize,
    pub failed: usize,
    pub max_abs: f64,
    /// The atol in force where max_abs was measured.
    pub atol: f64,
    /// The largest rtol in force.
    pub rtol: f64,
    pub max_nmse: f64,
    /// The smallest allowed / actual error over the float comparisons (inf when every error is 0).
    pub headroom: f64,
    /// How many id tensors were compared exactly.
    pub exact: usize,
}

/// Aggregates reports by checkpoint and mode, in checkpoint order.
pub fn summarize(reports: &[CheckpointReport]) -> Vec<SummaryRow> {
    let mut rows: Vec<SummaryRow> = Vec::new();
    for report in reports {
        let row = match rows.iter_mut().find(|r| r.checkpoint == report.checkpoint && r.mode == report.mode) {
            Some(row) => row,
            None => {
                rows.push(SummaryRow {
                    checkpoint: report.checkpoint,
                    mode: report.mode,
                    checks: 0,
                    failed: 0,
                    max_abs: 0.0,
                    atol: f64::NAN,
                    rtol: 0.0,
                    max_nmse: 0.0,
                    headroom: f64::INFINITY,
                    exact: 0,
                });
                rows.last_mut().expect("just pushed")
            }
        };
        for check in &report.checks {
            row.checks += 1;
            row.failed += usize::from(!check.passed);
            match &check.comparison {
                Some(c) => {
                    if c.max_abs >= row.max_abs || row.atol.is_nan() {
                        row.max_abs = c.max_abs;
                        row.atol = c.tolerance.atol;
                    }
                    row.max_nmse = row.max_nmse.max(c.nmse);
                    row.rtol = row.rtol.max(c.tolerance.rtol);
                    row.headroom = row.headroom.min(c.headroom);
                }
                None => row.exact += 1,
            }
        }
    }
    rows.sort_by_key(|r| (r.checkpoint, r.mode == Mode::Chained));
    rows
}

/// The summary as a markdown table.
pub fn summary_table(rows: &[SummaryRow]) -> String {
    let mut out =
        String::from("| checkpoint | mode | status | max abs error | tolerance | headroom | max NMSE |\n|---|---|---|---|---|---|---|\n");
    for r in rows {
        let status = if r.failed == 0 { format!("pass ({})", r.checks) } else { format!("FAIL ({}/{})", r.failed, r.checks) };
        let (max_abs, atol, headroom, nmse) = if r.atol.is_nan() {
            ("ids exact".to_string(), "exact".to_string(), "-".to_string(), "-".to_string())
        } else {
            let headroom = if r.headroom.is_infinite() { "exact".to_string() } else { format!("{:.1}x", r.headroom) };
            let tolerance = if r.rtol > 0.0 { format!("{:.0e} + {:.0e}·abs(golden)", r.atol, r.rtol) } else { format!("{:.0e}", r.atol) };
            (format!("{:.2e}", r.max_abs), tolerance, headroom, format!("{:.1e}", r.max_nmse))
        };
        let mode = match r.mode {
            Mode::Isolated => "isolated",
            Mode::Chained => "chained",
        };
        let _ = writeln!(out, "| {} | {mode} | {status} | {max_abs} | {atol} | {headroom} | {nmse} |", r.checkpoint.label());
    }
    out
}
