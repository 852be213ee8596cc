//! Runs a Rust [`Port`] on one golden set and records what it produces.
//!
//! - [`chained`]: the port's own forward pass from the prompt's token ids, then 03's decode steps
//!   (with its KV cache, or by running the longer sequence again), then the head (09-12), each
//!   step the port's own where it provides one and derived from its logits where it does not.
//! - [`isolated`]: each component the port provides, fed HF's golden input (the table in
//!   CHECKPOINTS.md); a component it does not provide is recorded as not provided.

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, ArrayD, ArrayView1, Axis, Ix1, Ix2, Ix3, s};

use super::{Missing, Observations, Value};
use crate::catalog::{Checkpoint, Scope, TensorKey, tap};
use crate::error::{Error, Result};
use crate::goldens::GoldenSet;
use crate::port::{KvPair, LnSite, Port};
use crate::sampling;
use crate::taps::TapSink;
use crate::tolerances::Mode;

const CHAINED: Mode = Mode::Chained;
const ISOLATED: Mode = Mode::Isolated;

/// Records taps, giving cache taps the step of the call that made them.
struct StepRecorder {
    step: usize,
    tensors: BTreeMap<TensorKey, ArrayD<f32>>,
}

impl StepRecorder {
    fn new(step: usize) -> Self {
        StepRecorder { step, tensors: BTreeMap::new() }
    }

    /// The logits this call tapped, [rows, V] (a leading batch axis of 1 is dropped).
    fn logits(&self) -> Option<Array2<f32>> {
        let logits = self.tensors.get(&tap::logits())?;
        let logits = if logits.ndim() == 3 && logits.shape()[0] == 1 { logits.index_axis(Axis(0), 0) } else { logits.view() };
        logits.to_owned().into_dimensionality::<Ix2>().ok()
    }
}

impl TapSink for StepRecorder {
    fn tap(&mut self, mut key: TensorKey, tensor: ndarray::ArrayViewD<'_, f32>) {
        if key.checkpoint.spec(key.name).is_some_and(|spec| spec.per_step) {
            key.step = Some(self.step);
        }
        self.tensors.insert(key, tensor.to_owned());
    }
}

fn not_provided(e: &Error) -> bool {
    matches!(e, Error::NotProvided(_))
}

fn missing(e: Error) -> Missing {
    match e {
        Error::NotProvided(what) => Missing::NotProvided(format!("the port does not provide {what}")),
        other => Missing::Failed(other.to_string()),
    }
}

fn key(checkpoint: Checkpoint, layer: Option<usize>, name: &'static str) -> TensorKey {
    TensorKey::new(checkpoint, layer, None, name)
}

/// Every compared tensor of a set, for marking what a failed step left unreached.
fn outputs(set: &GoldenSet) -> Vec<TensorKey> {
    set.manifest.dims().forward_order()
}

/// Both modes: [`chained`], then [`isolated`].
pub fn observe(port: &mut dyn Port, set: &GoldenSet) -> Observations {
    let mut obs = chained(port, set);
    obs.merge(isolated(port, set));
    obs
}

/// Runs the whole port from token ids and records every tensor of chained mode.
pub fn chained(port: &mut dyn Port, set: &GoldenSet) -> Observations {
    let mut obs = Observations::default();
    if let Err(e) = chained_into(port, set, &mut obs) {
        obs.missing_unless_seen(CHAINED, outputs(set), &Missing::Failed(format!("not reached: {e}")));
    }
    obs
}

fn chained_into(port: &mut dyn Port, set: &GoldenSet, obs: &mut Observations) -> Result<()> {
    let prompt = set.ids(key(Checkpoint::Embeddings, None, "input_ids"))?;
    let decode_ids = set.ids(key(Checkpoint::KvCache, None, "decode_ids"))?;

    let mut recorder = StepRecorder::new(0);
    let forward = port.forward(&prompt, &mut recorder);
    let logits = recorder.logits();
    for (k, v) in std::mem::take(&mut recorder.tensors) {
        obs.value(CHAINED, k, Value::F32(v));
    }
    forward.map_err(|e| Error::Input(format!("the port's forward failed: {e}")))?;

    let cache_keys: Vec<TensorKey> = outputs(set).into_iter().filter(|k| k.step.is_some()).collect();
    let decode_logits = key(Checkpoint::KvCache, None, "decode_logits");
    let Some(logits) = logits else {
        // A port that is only begun: 03's decode steps and the head all start from its logits.
        let why = Missing::NotProvided("needs 08 logits, which the port's forward did not tap".into());
        let head = [Checkpoint::SelectedLogits, Checkpoint::Argmax, Checkpoint::Softmax, Checkpoint::Generation];
        let needs_logits = outputs(set).into_iter().filter(|k| head.contains(&k.checkpoint) || *k == decode_logits || k.step.is_some());
        obs.missing_unless_seen(CHAINED, needs_logits, &why);
        return Ok(());
    };
    match decode(port, &prompt, &decode_ids, obs) {
        Ok((rows, cached)) => {
            let stacked = stack_rows(&rows)?; // [S, V]
            if cached {
                obs.value(CHAINED, decode_logits, Value::F32(stacked.into_dyn()));
            } else {
                obs.derived(CHAINED, decode_logits, Value::F32(stacked.into_dyn()), "by running prompt + decode tokens again: no KV cache");
                let no_cache = Missing::NotProvided(
                    "the port does not provide forward_cached (a KV cache); one that has a cache taps step 0 in forward with tap::cache_keys/cache_values"
                        .into(),
                );
                obs.missing_unless_seen(CHAINED, cache_keys, &no_cache);
            }
        }
        Err(e) => obs.missing(CHAINED, decode_logits, Missing::Failed(e.to_string())),
    }
    head(port, set, &prompt, logits, obs);
    Ok(())
}

/// 03: the decode steps. With the port's cache where it has one (cache taps recorded per step),
/// else by running the longer sequence again. Returns each step's logits [V] and whether the
/// cache produced them.
fn decode(port: &mut dyn Port, prompt: &[u32], decode_ids: &[u32], obs: &mut Observations) -> Result<(Vec<Array1<f32>>, bool)> {
    let mut rows = Vec::with_capacity(decode_ids.len());
    for (i, &id) in decode_ids.iter().enumerate() {
        let mut recorder = StepRecorder::new(i + 1);
        match port.forward_cached(id, &mut recorder) {
            Ok(()) => {
                let logits = recorder.logits().ok_or_else(|| Error::Input("forward_cached did not tap 08_logits.logits".into()))?;
                rows.push(last_row(&logits)?);
                for (k, v) in recorder.tensors.into_iter().filter(|(k, _)| k.checkpoint == Checkpoint::KvCache) {
                    obs.value(CHAINED, k, Value::F32(v));
                }
            }
            Err(e) if not_provided(&e) && i == 0 => return recompute(port, prompt, decode_ids).map(|rows| (rows, false)),
            Err(e) => return Err(Error::Input(format!("forward_cached failed at decode step {}: {e}", i + 1))),
        }
    }
    Ok((rows, true))
}

/// Without a cache: the last logits of prompt + the first s decode tokens, for each s.
fn recompute(port: &mut dyn Port, prompt: &[u32], decode_ids: &[u32]) -> Result<Vec<Array1<f32>>> {
    (1..=decode_ids.len())
        .map(|s| {
            let sequence: Vec<u32> = prompt.iter().chain(&decode_ids[..s]).copied().collect();
            last_logits_of(port, &sequence)
        })
        .collect()
}

fn last_logits_of(port: &mut dyn Port, ids: &[u32]) -> Result<Array1<f32>> {
    let mut recorder = StepRecorder::new(0);
    port.forward(ids, &mut recorder)?;
    let logits = recorder.logits().ok_or_else(|| Error::Input("the port's forward did not tap 08_logits.logits".into()))?;
    last_row(&logits)
}

fn last_row(logits: &Array2<f32>) -> Result<Array1<f32>> {
    let last = logits.nrows().checked_sub(1).ok_or_else(|| Error::Input("08_logits.logits has no rows".into()))?;
    Ok(logits.row(last).to_owned())
}

fn stack_rows(rows: &[Array1<f32>]) -> Result<Array2<f32>> {
    let views: Vec<ArrayView1<f32>> = rows.iter().map(|r| r.view()).collect();
    if views.is_empty() {
        return Ok(Array2::zeros((0, 0)));
    }
    ndarray::stack(Axis(0), &views).map_err(|e| Error::Input(format!("decode logits of different lengths: {e}")))
}

/// 09-12 in chained mode, from the port's own logits.
fn head(port: &mut dyn Port, set: &GoldenSet, prompt: &[u32], logits: Array2<f32>, obs: &mut Observations) {
    let g = &set.manifest.generation;
    let last_key = key(Checkpoint::SelectedLogits, None, "last_logits");
    let last = match port.select_last(logits.view()) {
        Ok(last) => {
            obs.value(CHAINED, last_key, Value::F32(last.clone().into_dyn()));
            last
        }
        Err(e) if not_provided(&e) => match last_row(&logits) {
            Ok(last) => {
                obs.derived(CHAINED, last_key, Value::F32(last.clone().into_dyn()), "the last row of the port's logits");
                last
            }
            Err(e) => return obs.missing(CHAINED, last_key, Missing::Failed(e.to_string())),
        },
        Err(e) => return obs.missing(CHAINED, last_key, Missing::Failed(e.to_string())),
    };

    let next_key = key(Checkpoint::Argmax, None, "next_token");
    match port.argmax(last.view()) {
        Ok(id) => obs.value(CHAINED, next_key, Value::Ids(vec![id])),
        Err(e) if not_provided(&e) => match sampling::argmax(last.view()) {
            Ok(id) => obs.derived(CHAINED, next_key, Value::Ids(vec![id]), "the standard argmax of the port's last logits"),
            Err(e) => obs.missing(CHAINED, next_key, Missing::Failed(e.to_string())),
        },
        Err(e) => obs.missing(CHAINED, next_key, missing(e)),
    }

    let softmax_keys = ["probs", "probs_warped", "top_ids"].map(|n| key(Checkpoint::Softmax, None, n));
    match port.sampling(last.view(), g.temperature, g.top_k) {
        Ok(s) => record_sampling(obs, CHAINED, s, None),
        Err(e) if not_provided(&e) => match sampling::distributions(last.view(), g.temperature, g.top_k) {
            Ok(s) => record_sampling(obs, CHAINED, s, Some("the standard softmax, temperature and top-k of the port's last logits")),
            Err(e) => obs.missing_unless_seen(CHAINED, softmax_keys, &Missing::Failed(e.to_string())),
        },
        Err(e) => obs.missing_unless_seen(CHAINED, softmax_keys, &missing(e)),
    }

    let new_ids_key = key(Checkpoint::Generation, None, "new_ids");
    match port.generate_greedy(prompt, g.new_tokens) {
        Ok(ids) => obs.value(CHAINED, new_ids_key, Value::Ids(ids)),
        Err(e) if not_provided(&e) => match greedy(port, prompt, g.new_tokens) {
            Ok(ids) => obs.derived(CHAINED, new_ids_key, Value::Ids(ids), "greedy decoding with the port's forward and argmax"),
            Err(e) => obs.missing(CHAINED, new_ids_key, Missing::Failed(e.to_string())),
        },
        Err(e) => obs.missing(CHAINED, new_ids_key, missing(e)),
    }
}

/// 11's three tensors.
fn sampling_values(s: crate::port::Sampling) -> Vec<(TensorKey, Value)> {
    vec![
        (key(Checkpoint::Softmax, None, "probs"), Value::F32(s.probs.into_dyn())),
        (key(Checkpoint::Softmax, None, "probs_warped"), Value::F32(s.probs_warped.into_dyn())),
        (key(Checkpoint::Softmax, None, "top_ids"), Value::Ids(s.top_ids)),
    ]
}

fn record_sampling(obs: &mut Observations, mode: Mode, s: crate::port::Sampling, derived: Option<&str>) {
    for (k, value) in sampling_values(s) {
        match derived {
            None => obs.value(mode, k, value),
            Some(how) => obs.derived(mode, k, value, how),
        }
    }
}

/// Greedy decoding from the port's forward (with its cache when it has one) and its argmax (the
/// standard one when it has none).
fn greedy(port: &mut dyn Port, prompt: &[u32], new_tokens: usize) -> Result<Vec<u32>> {
    let mut sequence = prompt.to_vec();
    let mut last = last_logits_of(port, &sequence)?; // [V]
    let mut cached = true;
    let mut generated = Vec::with_capacity(new_tokens);
    while generated.len() < new_tokens {
        let next = match port.argmax(last.view()) {
            Err(e) if not_provided(&e) => sampling::argmax(last.view())?,
            other => other?,
        };
        generated.push(next);
        sequence.push(next);
        if generated.len() == new_tokens {
            break;
        }
        if cached {
            let mut recorder = StepRecorder::new(0);
            match port.forward_cached(next, &mut recorder) {
                Ok(()) => {
                    let logits = recorder.logits().ok_or_else(|| Error::Input("forward_cached did not tap 08_logits.logits".into()))?;
                    last = last_row(&logits)?;
                    continue;
                }
                Err(e) if not_provided(&e) => cached = false,
                Err(e) => return Err(e),
            }
        }
        last = last_logits_of(port, &sequence)?;
    }
    Ok(generated)
}

/// Runs every component the port provides on HF's golden inputs and records its outputs.
pub fn isolated(port: &mut dyn Port, set: &GoldenSet) -> Observations {
    let mut obs = Observations::default();
    let n_layer = set.manifest.model.config.n_layer;
    for checkpoint in Checkpoint::ALL {
        let mut scopes: Vec<Option<usize>> = Vec::new();
        if checkpoint.has_output(Scope::Layer) {
            scopes.extend((0..n_layer).map(Some));
        }
        if checkpoint.has_output(Scope::Model) {
            scopes.push(None);
        }
        for layer in scopes {
            let keys = isolated_outputs(set, checkpoint, layer);
            if keys.is_empty() {
                continue;
            }
            match isolated_component(port, set, checkpoint, layer) {
                Ok(values) => {
                    for (k, v) in values {
                        obs.value(ISOLATED, k, v);
                    }
                    obs.missing_unless_seen(ISOLATED, keys, &Missing::Failed("the component produced no such output".into()));
                }
                Err(e) => obs.missing_unless_seen(ISOLATED, keys, &missing(e)),
            }
        }
    }
    obs
}

/// The tensors isolated mode compares for `checkpoint` at `layer`.
pub fn isolated_outputs(set: &GoldenSet, checkpoint: Checkpoint, layer: Option<usize>) -> Vec<TensorKey> {
    crate::judge::outputs_of(set, checkpoint, layer).into_iter().filter(TensorKey::is_isolated_output).collect()
}

/// One component on its golden inputs.
fn isolated_component(
    port: &mut dyn Port,
    set: &GoldenSet,
    checkpoint: Checkpoint,
    layer: Option<usize>,
) -> Result<Vec<(TensorKey, Value)>> {
    use Checkpoint as C;
    let f32 = |k: TensorKey, a: ArrayD<f32>| (k, Value::F32(a));
    Ok(match (checkpoint, layer) {
        (C::Embeddings, None) => {
            let ids = set.ids(key(C::Embeddings, None, "input_ids"))?;
            vec![f32(tap::embeddings(), port.embeddings(&ids)?.into_dyn())]
        }
        (C::LayerNorm, Some(l)) => {
            let ln_1 = port.layer_norm(LnSite::Ln1(l), set.single::<Ix2>(key(C::LayerNorm, layer, "ln_1.input"))?.view())?;
            let ln_2 = port.layer_norm(LnSite::Ln2(l), set.single::<Ix2>(key(C::LayerNorm, layer, "ln_2.input"))?.view())?;
            vec![f32(tap::ln_1(l), ln_1.into_dyn()), f32(tap::ln_2(l), ln_2.into_dyn())]
        }
        (C::LayerNorm, None) => {
            let ln_f = port.layer_norm(LnSite::LnF, set.single::<Ix2>(key(C::LayerNorm, None, "ln_f.input"))?.view())?;
            vec![f32(tap::ln_f(), ln_f.into_dyn())]
        }
        (C::Qkv, Some(l)) => {
            let qkv = port.qkv(l, set.single::<Ix2>(tap::ln_1(l))?.view())?;
            vec![f32(tap::q(l), qkv.q.into_dyn()), f32(tap::k(l), qkv.k.into_dyn()), f32(tap::v(l), qkv.v.into_dyn())]
        }
        (C::KvCache, Some(l)) => {
            // Step s: HF's cache of step s - 1, plus the last position of HF's step s.
            let state = |s: usize| -> Result<KvPair> {
                let at = |name| set.single::<Ix3>(TensorKey::new(C::KvCache, layer, Some(s), name));
                Ok(KvPair { keys: at("keys")?, values: at("values")? })
            };
            let mut out = Vec::new();
            for step in 1..=set.manifest.generation.decode_steps {
                let (past, now) = (state(step - 1)?, state(step)?);
                let last = now.keys.shape()[1] - 1;
                let new =
                    KvPair { keys: now.keys.slice(s![.., last.., ..]).to_owned(), values: now.values.slice(s![.., last.., ..]).to_owned() };
                let appended = port.kv_append(l, &past, &new)?;
                out.push(f32(TensorKey::new(C::KvCache, layer, Some(step), "keys"), appended.keys.into_dyn()));
                out.push(f32(TensorKey::new(C::KvCache, layer, Some(step), "values"), appended.values.into_dyn()));
            }
            out
        }
        (C::AttnScores, Some(l)) => {
            let (q, k) = (set.single::<Ix3>(tap::q(l))?, set.single::<Ix3>(tap::k(l))?);
            let scores = port.attention_scores(l, q.view(), k.view())?;
            vec![f32(tap::scores(l), scores.scores.into_dyn()), f32(tap::weights(l), scores.weights.into_dyn())]
        }
        (C::AttnOutput, Some(l)) => {
            let (weights, v) = (set.single::<Ix3>(tap::weights(l))?, set.single::<Ix3>(tap::v(l))?);
            vec![f32(tap::attn_output(l), port.attention_output(l, weights.view(), v.view())?.into_dyn())]
        }
        (C::Ffn, Some(l)) => {
            let mlp = port.mlp(l, set.single::<Ix2>(tap::ln_2(l))?.view())?;
            vec![f32(tap::gelu(l), mlp.gelu.into_dyn()), f32(tap::mlp_output(l), mlp.output.into_dyn())]
        }
        (C::Block, Some(l)) => {
            let output = port.block(l, set.single::<Ix2>(key(C::Block, layer, "input"))?.view())?;
            vec![f32(tap::block_output(l), output.into_dyn())]
        }
        (C::Logits, None) => vec![f32(tap::logits(), port.logits(set.single::<Ix2>(tap::ln_f())?.view())?.into_dyn())],
        (C::SelectedLogits, None) => {
            let last = port.select_last(set.single::<Ix2>(tap::logits())?.view())?;
            vec![f32(key(C::SelectedLogits, None, "last_logits"), last.into_dyn())]
        }
        (C::Argmax, None) => {
            let next = port.argmax(set.single::<Ix1>(key(C::SelectedLogits, None, "last_logits"))?.view())?;
            vec![(key(C::Argmax, None, "next_token"), Value::Ids(vec![next]))]
        }
        (C::Softmax, None) => {
            let g = &set.manifest.generation;
            let last = set.single::<Ix1>(key(C::SelectedLogits, None, "last_logits"))?;
            sampling_values(port.sampling(last.view(), g.temperature, g.top_k)?)
        }
        (C::Generation, None) => {
            let prompt = set.ids(key(C::Embeddings, None, "input_ids"))?;
            vec![(key(C::Generation, None, "new_ids"), Value::Ids(port.generate_greedy(&prompt, set.manifest.generation.new_tokens)?))]
        }
        (checkpoint, layer) => return Err(Error::Input(format!("{checkpoint} has nothing to run in isolation at layer {layer:?}"))),
    })
}
