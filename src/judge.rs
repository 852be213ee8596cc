//! Judging: a runner's [`Observations`] against one golden set, tensor by tensor.
//!
//! Each compared tensor gets a [`Verdict`]: pass, FAIL or pending.
//! - A float value is compared with the float64 truth, within a multiple of HF float32's own
//!   error there ([`Noise`], [`crate::compare`]); token ids exactly, with HF's.
//! - A tensor the port does not provide (an optional method, a missing file) is *pending*.
//! - A chained tap that the port never reported fails when the port [`Claims`] its checkpoint
//!   ("tap 02_qkv.l01.k was never reported") and is pending otherwise.
//! - A checkpoint the port does not claim never fails: a failing value there is reported as
//!   pending, with what would fail. In chained mode everything after such an unclaimed divergence
//!   is computed from its wrong values: a claimed failure there is pending too ("downstream of").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ndarray::{ArrayD, ArrayView1, Axis, Ix1, Ix2};
use serde::Serialize;

use crate::catalog::{Checkpoint, DType, Role, TensorKey};
use crate::compare::{Comparison, compare, hf_error};
use crate::error::{Error, Result};
use crate::goldens::GoldenSet;
use crate::runner::{Missing, Observations, Observed, Value};
use crate::tolerances::{Mode, Precision, Tolerances};

/// The checkpoints a port claims to pass: what it claims must pass; the rest is pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims(BTreeSet<Checkpoint>);

impl Claims {
    /// Every checkpoint, 00-12.
    pub fn all() -> Claims {
        Claims(Checkpoint::ALL.into_iter().collect())
    }

    /// Nothing: every result is informative only (pending or pass), nothing fails.
    pub fn none() -> Claims {
        Claims(BTreeSet::new())
    }

    /// 00 up to and including `last`: a port that is written "through 05".
    pub fn through(last: Checkpoint) -> Claims {
        Claims(Checkpoint::ALL.into_iter().filter(|c| *c <= last).collect())
    }

    /// Exactly these checkpoints.
    pub fn only(checkpoints: impl IntoIterator<Item = Checkpoint>) -> Claims {
        Claims(checkpoints.into_iter().collect())
    }

    pub fn contains(&self, checkpoint: Checkpoint) -> bool {
        self.0.contains(&checkpoint)
    }

    /// `12` (through 12), `00,01,04` (exactly those), `all` or `none`.
    pub fn parse(text: &str) -> Result<Claims> {
        let bad = || Error::Input(format!("--claims {text:?}: write NN for \"00 through NN\", a list like 00,01,04, `all` or `none`"));
        let id = |s: &str| s.trim().parse::<u8>().ok().and_then(Checkpoint::from_id).ok_or_else(bad);
        match text.trim() {
            "all" => Ok(Claims::all()),
            "none" => Ok(Claims::none()),
            list if list.contains(',') => list.split(',').map(id).collect::<Result<BTreeSet<_>>>().map(Claims),
            one => id(one).map(Claims::through),
        }
    }
}

impl fmt::Display for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u8> = self.0.iter().map(|c| c.id()).collect();
        match ids.as_slice() {
            [] => f.write_str("none"),
            [first, .., last] if *first == 0 && usize::from(*last) + 1 == ids.len() => write!(f, "00 through {last:02}"),
            [0] => f.write_str("00 through 00"),
            _ => f.write_str(&ids.iter().map(|i| format!("{i:02}")).collect::<Vec<_>>().join(",")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Pending,
    Fail,
}

/// The verdict on one tensor in one mode.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub set: String,
    pub mode: Mode,
    pub key: TensorKey,
    pub status: Status,
    /// One line (plus the worst pairs for a failing float comparison).
    pub detail: String,
    pub comparison: Option<Comparison>,
    /// How the suite derived the value, when the port does not provide that step.
    pub derived: Option<String>,
    /// Out of its limit, or missing where the port must report it, whether or not the
    /// checkpoint is claimed: where the chain first diverged is the first such verdict.
    pub diverged: bool,
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

/// HF float32's own error against the truth, per mode and tensor name: the worst over the
/// tensor's layers and steps in one golden set, on the tensor's scale. The unit of every limit.
#[derive(Clone, Debug, Default)]
pub struct Noise {
    errors: BTreeMap<(Mode, Checkpoint, &'static str), f64>,
}

impl Noise {
    /// Reads every float output's golden and truth in both modes.
    pub fn measure(set: &GoldenSet) -> Result<Noise> {
        let mut noise = Noise::default();
        for (key, _) in set.manifest.dims().all_tensors() {
            if key.spec().role != Role::Output || key.spec().dtype != DType::F32 {
                continue;
            }
            let modes: &[Mode] = if key.is_isolated_output() { &[Mode::Chained, Mode::Isolated] } else { &[Mode::Chained] };
            let golden = set.f32(key)?;
            for &mode in modes {
                noise.record(mode, key, hf_error(golden.view(), set.truth(key, mode)?.view(), Tolerances::scale(key))?);
            }
        }
        Ok(noise)
    }

    /// HF's own error at a lower precision, as extraction measured it (the manifest's
    /// `precision_noise`).
    pub fn from_manifest(set: &GoldenSet, precision: Precision) -> Result<Noise> {
        let path = set.dir.join(crate::goldens::MANIFEST);
        let table = set.manifest.precision_noise.get(precision.name()).ok_or_else(|| {
            Error::golden(&path, format!("has no {} measurements: re-extract it with `--precision {}`", precision.name(), precision.name()))
        })?;
        let mut noise = Noise::default();
        for (key, _) in set.manifest.dims().all_tensors() {
            for mode in [Mode::Chained, Mode::Isolated] {
                if let Some(&error) = table.get(&Noise::name(mode, key)) {
                    noise.errors.insert((mode, key.checkpoint, key.name), error);
                }
            }
        }
        Ok(noise)
    }

    /// HF's own error pooled over several golden sets (the worst of each tensor over all of them):
    /// one prompt's estimate of an extreme is noisy (2.7× apart between two prompts of one model),
    /// and a correct port is judged against the model's noise, not one prompt's luck.
    pub fn pooled<'a>(sets: impl IntoIterator<Item = &'a GoldenSet>, precision: Precision) -> Result<Noise> {
        let mut pooled = Noise::default();
        for set in sets {
            for (mode, checkpoint, name, error) in Noise::for_precision(set, precision)?.iter() {
                let worst = pooled.errors.entry((mode, checkpoint, name)).or_insert(0.0);
                *worst = worst.max(error);
            }
        }
        Ok(pooled)
    }

    /// HF's own error in the judged precision: measured now for float32, from the manifest below.
    pub fn for_precision(set: &GoldenSet, precision: Precision) -> Result<Noise> {
        match precision {
            Precision::F32 => Noise::measure(set),
            low => Noise::from_manifest(set, low),
        }
    }

    /// `chained/07_block.output`: how the manifest names a measurement.
    pub fn name(mode: Mode, key: TensorKey) -> String {
        Noise::name_of(mode, key.checkpoint, key.name)
    }

    fn name_of(mode: Mode, checkpoint: Checkpoint, name: &str) -> String {
        let mode = match mode {
            Mode::Chained => "chained",
            Mode::Isolated => "isolated",
        };
        format!("{mode}/{}.{name}", checkpoint.label())
    }

    /// The measurements as the manifest keeps them.
    pub fn to_table(&self) -> BTreeMap<String, f64> {
        self.iter().map(|(mode, checkpoint, name, error)| (Noise::name_of(mode, checkpoint, name), error)).collect()
    }

    /// Records HF's error for `key` in `mode`, keeping the worst over layers and steps.
    pub fn record(&mut self, mode: Mode, key: TensorKey, error: f64) {
        let worst = self.errors.entry((mode, key.checkpoint, key.name)).or_insert(0.0);
        *worst = worst.max(error);
    }

    /// Every measurement: (mode, checkpoint, tensor name) and HF's error.
    pub fn iter(&self) -> impl Iterator<Item = (Mode, Checkpoint, &'static str, f64)> + '_ {
        self.errors.iter().map(|(&(mode, checkpoint, name), &error)| (mode, checkpoint, name, error))
    }

    /// HF's error for `key`'s tensor in `mode` (0 when it was not measured).
    pub fn of(&self, mode: Mode, key: TensorKey) -> f64 {
        self.errors.get(&(mode, key.checkpoint, key.name)).copied().unwrap_or(0.0)
    }
}

/// What judging one golden set needs besides the observations.
struct Judging<'a> {
    set: &'a GoldenSet,
    tolerances: &'a Tolerances,
    claims: &'a Claims,
    noise: std::result::Result<Noise, String>,
}

impl Judging<'_> {
    /// The top-1/top-2 logit margin below which a token is decided by rounding: what 09's chained
    /// limit allows, in logits (the limit times the RMS of the true last logits).
    fn ambiguity(&self) -> Result<f64> {
        let noise = self.noise.as_ref().map_err(|e| Error::Input(e.clone()))?;
        let key = last_logits_key();
        let truth = self.set.truth(key, Mode::Chained)?;
        let rms = (truth.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / truth.len().max(1) as f64).sqrt();
        Ok(self.tolerances.limit(key, Mode::Chained).allowed(noise.of(Mode::Chained, key)) * rms)
    }
}

/// Every verdict of one golden set: chained in forward order, then isolated in checkpoint order.
/// HF's own error is this set's alone; [`judge_with`] takes one pooled over several prompts.
pub fn judge(set: &GoldenSet, obs: &Observations, tolerances: &Tolerances, claims: &Claims) -> Vec<Verdict> {
    judge_with(set, obs, tolerances, claims, Noise::for_precision(set, tolerances.precision()))
}

/// [`judge`] with HF's own error given, e.g. [`Noise::pooled`] over every golden set of the model.
pub fn judge_with(set: &GoldenSet, obs: &Observations, tolerances: &Tolerances, claims: &Claims, noise: Result<Noise>) -> Vec<Verdict> {
    let judging = Judging { set, tolerances, claims, noise: noise.map_err(|e| e.to_string()) };
    let chained = set.manifest.dims().forward_order().into_iter().map(|k| (Mode::Chained, k));
    let isolated = set.manifest.dims().all_tensors().into_iter().map(|(k, _)| k).filter(TensorKey::is_isolated_output);
    let isolated = isolated.map(|k| (Mode::Isolated, k));
    let mut verdicts: Vec<Verdict> = chained.chain(isolated).map(|(mode, key)| verdict(&judging, mode, key, obs.get(mode, key))).collect();
    excuse_downstream_of_unclaimed(&mut verdicts);
    verdicts
}

/// In chained mode, every failure after an unclaimed divergence (in forward order) is that
/// divergence's consequence: pending, and saying so.
fn excuse_downstream_of_unclaimed(verdicts: &mut [Verdict]) {
    let Some(first) = verdicts.iter().position(|v| v.mode == Mode::Chained && v.diverged) else { return };
    if verdicts[first].status == Status::Fail {
        return;
    }
    let cause = verdicts[first].key;
    for v in verdicts[first + 1..].iter_mut().filter(|v| v.mode == Mode::Chained && v.status == Status::Fail) {
        v.status = Status::Pending;
        v.detail = format!("downstream of {cause}, which is not claimed; {}", v.detail);
    }
}

fn verdict(j: &Judging<'_>, mode: Mode, key: TensorKey, seen: Option<&Observed>) -> Verdict {
    let claimed = j.claims.contains(key.checkpoint);
    let failed_unless_claimed = |detail: String| {
        if claimed { (Status::Fail, detail) } else { (Status::Pending, format!("not claimed; {detail}")) }
    };
    let mut out = Verdict {
        set: j.set.name(),
        mode,
        key,
        status: Status::Pending,
        detail: String::new(),
        comparison: None,
        derived: None,
        diverged: false,
    };
    (out.status, out.detail) = match seen {
        // A tap that was never reported is the port's gap, not a divergence: it fails only where claimed.
        None if mode == Mode::Chained => failed_unless_claimed(format!("tap {key} was never reported")),
        None => (Status::Pending, "not provided".into()),
        Some(Observed::Missing(Missing::NotProvided(why))) => (Status::Pending, why.clone()),
        Some(Observed::Missing(Missing::Failed(e))) => {
            out.diverged = true;
            failed_unless_claimed(e.clone())
        }
        Some(Observed::Value { value, derived }) => {
            out.derived = derived.clone();
            let (passed, detail, comparison) = match check_value(j, key, mode, value) {
                Ok(result) => result,
                Err(e) => (false, e.to_string(), None),
            };
            out.comparison = comparison;
            let detail = match derived {
                Some(how) => format!("{detail} (derived: {how})"),
                None => detail,
            };
            out.diverged = !passed;
            if passed { (Status::Pass, detail) } else { failed_unless_claimed(detail) }
        }
    };
    out
}

/// Compares one value with the truth (floats) or HF's ids: (passed, detail, float statistics).
fn check_value(j: &Judging<'_>, key: TensorKey, mode: Mode, value: &Value) -> Result<(bool, String, Option<Comparison>)> {
    match value {
        Value::F32(ours) => {
            let noise = j.noise.as_ref().map_err(|e| Error::Input(e.clone()))?;
            let (golden, truth) = (j.set.f32(key)?, j.set.truth(key, mode)?);
            let ours = with_batch_axis(ours, &golden);
            let (limit, scale) = (j.tolerances.limit(key, mode), Tolerances::scale(key));
            let c = compare(&key.stem(), ours.view(), truth.view(), golden.view(), noise.of(mode, key), limit, scale)?;
            Ok((c.passed(), c.report(), Some(c)))
        }
        Value::Ids(ours) => {
            let golden = j.set.ids(key)?;
            let margin = j.ambiguity()?;
            let (passed, detail) = match key.checkpoint {
                Checkpoint::Softmax => check_ranking(j.set, ours, &golden, margin)?,
                _ => check_decisions(j.set, key, ours, &golden, margin, j.tolerances.precision())?,
            };
            Ok((passed, detail, None))
        }
    }
}

/// A single-sequence value gets the golden's leading batch axis of 1; anything else is left for the
/// comparison to report as a shape mismatch.
fn with_batch_axis<'a>(ours: &'a ArrayD<f32>, golden: &ArrayD<f32>) -> ndarray::CowArray<'a, f32, ndarray::IxDyn> {
    if ours.ndim() + 1 == golden.ndim() && golden.shape()[0] == 1 { ours.view().insert_axis(Axis(0)).into() } else { ours.view().into() }
}

fn last_logits_key() -> TensorKey {
    TensorKey::new(Checkpoint::SelectedLogits, None, None, "last_logits")
}

/// 10 and 12: exact ids, and no step decided by an HF top-1/top-2 margin below `tol` (logits):
/// there the token is decided by rounding, and a match would be luck. In float32 such a step fails
/// (the golden set cannot judge it); at a lower precision, where HF's own margins are routinely
/// within the noise, the ids are compared up to that step and may differ after it.
fn check_decisions(
    set: &GoldenSet,
    key: TensorKey,
    ours: &[u32],
    golden: &[u32],
    tol: f64,
    precision: Precision,
) -> Result<(bool, String)> {
    let margins: Vec<f32> = match key.checkpoint {
        Checkpoint::Argmax => vec![top2_margin(set.single::<Ix1>(last_logits_key())?.view())],
        Checkpoint::Generation => {
            let top2 = set.single::<Ix2>(TensorKey::new(Checkpoint::Generation, None, None, "top2_logits"))?;
            top2.rows().into_iter().map(|r| r[0] - r[1]).collect()
        }
        _ => Vec::new(),
    };
    let min_margin = margins.iter().copied().fold(f32::INFINITY, f32::min);
    let note = format!("smallest HF top-1/top-2 margin {min_margin:.3e} (ambiguous below {tol:.1e})");
    let ambiguous = margins.iter().copied().enumerate().find(|&(_, m)| f64::from(m) < tol);
    if let (Some((step, margin)), true) = (ambiguous, precision != Precision::F32) {
        let (ours, golden) = (&ours[..step.min(ours.len())], &golden[..step.min(golden.len())]);
        return Ok(match first_mismatch(ours, golden) {
            None => (
                true,
                format!(
                    "{step} ids equal up to step {step}, whose HF margin {margin:.3e} is within {} noise ({tol:.1e}): beyond it the ids may differ",
                    precision.name()
                ),
            ),
            Some(at) => (false, format!("ids differ first at step {at}, before any ambiguous step: ours {ours:?}, HF {golden:?}")),
        });
    }
    if let Some((step, margin)) = ambiguous {
        return Ok((
            false,
            format!(
                "AMBIGUOUS at step {step}: HF's top-1/top-2 margin {margin:.3e} is below {tol:.1e}, what 09's limit allows, so that token is decided by rounding; ours {ours:?}, HF {golden:?}"
            ),
        ));
    }
    Ok(match first_mismatch(ours, golden) {
        None => (true, format!("{} ids equal; {note}", golden.len())),
        Some(at) => (
            false,
            format!(
                "ids differ first at step {at}: ours {}, HF {}; ours {ours:?}, HF {golden:?}; {note}",
                id_at(ours, at),
                id_at(golden, at)
            ),
        ),
    })
}

/// 11's top-k ids: exact, except that two ids may trade places where HF's logits for them are
/// within `tol` (a tie, not an error).
fn check_ranking(set: &GoldenSet, ours: &[u32], golden: &[u32], tol: f64) -> Result<(bool, String)> {
    let logits = set.single::<Ix1>(last_logits_key())?;
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
            return Ok((false, format!("rank {rank}: ours {a}, HF {b}, whose HF logits differ by {gap:.3e} > {tol:.1e}")));
        }
        ties += 1;
    }
    let swaps = if ties > 0 { format!(" up to {ties} swaps of ids whose HF logits tie within {tol:.1e}") } else { String::new() };
    Ok((true, format!("{} ids equal{swaps}", golden.len())))
}

/// The id at `at`, or "none" past the end.
fn id_at(ids: &[u32], at: usize) -> String {
    ids.get(at).map_or("none".to_string(), u32::to_string)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse_and_print() {
        assert_eq!(Claims::parse("05").unwrap(), Claims::through(Checkpoint::AttnOutput));
        assert_eq!(Claims::parse("12").unwrap(), Claims::all());
        assert_eq!(Claims::parse("00,04").unwrap(), Claims::only([Checkpoint::Embeddings, Checkpoint::AttnScores]));
        assert_eq!(Claims::through(Checkpoint::AttnOutput).to_string(), "00 through 05");
        assert_eq!(Claims::only([Checkpoint::Embeddings, Checkpoint::AttnScores]).to_string(), "00,04");
        assert!(Claims::parse("13").is_err());
        assert!(Claims::parse("five").is_err());
    }
}
