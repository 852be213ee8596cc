//! Precision profiles: a port that computes in bfloat16 is judged in units of HF bfloat16's own
//! error (measured at extraction, kept in the manifest), not HF float32's.

use gpt2_checkpoints::catalog::{Checkpoint, TensorKey};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Status, Verdict, judge};
use gpt2_checkpoints::report::first_divergence;
use gpt2_checkpoints::runner;
use gpt2_checkpoints::taps::TapSink;
use gpt2_checkpoints::testing::{goldens_dir, model_dir, tolerances_path};
use gpt2_checkpoints::tolerances::{Mode, Precision, Tolerances};
use gpt2_checkpoints::{Port, Reference};
use ndarray::ArrayViewD;

/// The nearest bfloat16 (ties to even), as f32.
fn bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    if x.is_finite() { f32::from_bits(rounded) } else { x }
}

/// Hands on every tap rounded to bfloat16.
struct Bf16Sink<'a>(&'a mut dyn TapSink);

impl TapSink for Bf16Sink<'_> {
    fn tap(&mut self, key: TensorKey, tensor: ArrayViewD<'_, f32>) {
        self.0.tap(key, tensor.mapv(bf16).view());
    }
}

/// The reference whose every output is bfloat16: an error of bfloat16's size at every checkpoint.
struct Bf16Outputs(Reference);

impl Port for Bf16Outputs {
    fn forward(&mut self, ids: &[u32], taps: &mut dyn TapSink) -> gpt2_checkpoints::Result<()> {
        self.0.forward(ids, &mut Bf16Sink(taps))
    }

    fn forward_cached(&mut self, id: u32, taps: &mut dyn TapSink) -> gpt2_checkpoints::Result<()> {
        self.0.forward_cached(id, &mut Bf16Sink(taps))
    }
}

fn judged(set: &GoldenSet, precision: Precision) -> Vec<Verdict> {
    let mut port = Bf16Outputs(Reference::load(&model_dir(set)).expect("the reference"));
    let tolerances = Tolerances::load(&tolerances_path()).expect("tolerances").with_precision(precision);
    judge(set, &runner::port::chained(&mut port, set), &tolerances, &Claims::all())
}

#[test]
fn rounding_to_bf16_is_caught_in_f32_and_passes_in_bf16() {
    for set in GoldenSet::discover(&goldens_dir()).expect("golden sets") {
        let f32_verdicts = judged(&set, Precision::F32);
        let first = first_divergence(&f32_verdicts).expect("bf16 rounding is far outside float32's limits");
        assert_eq!(first.key.checkpoint, Checkpoint::Embeddings, "{}: {}", set.name(), first.detail);

        let bf16_verdicts = judged(&set, Precision::Bf16);
        let failing: Vec<String> =
            bf16_verdicts.iter().filter(|v| v.status == Status::Fail).map(|v| format!("{}: {}", v.key, v.detail)).collect();
        assert!(failing.is_empty(), "{}:\n{}", set.name(), failing.join("\n"));
        let passed = bf16_verdicts.iter().filter(|v| v.mode == Mode::Chained && v.status == Status::Pass).count();
        assert!(passed > 50, "{}: only {passed} chained passes", set.name());
    }
}

#[test]
fn a_set_without_the_precisions_measurements_says_how_to_get_them() {
    let mut set = GoldenSet::open(&goldens_dir().join("tiny-gpt2").join("hello")).expect("the hello set");
    set.manifest.precision_noise.clear();
    let verdicts = judged(&set, Precision::Bf16);
    let first = verdicts.iter().find(|v| v.status == Status::Fail).expect("nothing can be judged");
    assert!(first.detail.contains("no bf16 measurements") && first.detail.contains("--precision bf16"), "{}", first.detail);
}
