//! The checkpoint suite on the reference model, against every committed golden set.
//!
//! Each test name contains `checkpoint_NN`, so `cargo test checkpoint_07` runs exactly the block
//! tests: one per golden set (rstest `#[files]`), layer and mode. Isolated mode feeds HF's golden
//! input to one component; chained mode runs the whole reference from token ids and, on failure,
//! says which tensor diverged first. To validate another implementation, copy this file and
//! replace `candidate()` with your own `Candidate`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use gpt2_checkpoints::catalog::Checkpoint;
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::model::Gpt2;
use gpt2_checkpoints::suite::{self, ChainedRun, CheckpointReport};
use gpt2_checkpoints::tokenizer::Tokenizer;
use gpt2_checkpoints::tolerances::{Mode, Tolerances};
use rstest::rstest;

/// The layers every committed golden set has (the tiny fixture has 3);
/// `every_golden_set_has_the_layers_the_suite_runs` keeps this honest.
const LAYERS: usize = 3;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn golden_set(manifest: &Path) -> GoldenSet {
    let dir = manifest.parent().expect("a manifest lives in its set's directory");
    GoldenSet::open(dir).unwrap_or_else(|e| panic!("{e}"))
}

fn tolerances() -> Tolerances {
    Tolerances::load(&repo().join("fixtures/tolerances.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// The implementation under test: the reference GPT-2, loaded from the set's model directory.
fn candidate(set: &GoldenSet) -> Gpt2 {
    let dir = repo().join(&set.manifest.model.source);
    Gpt2::load(&dir).unwrap_or_else(|e| panic!("{e}"))
}

/// One chained run per golden set, shared by all tests of this binary.
fn chained_run(set: &GoldenSet) -> Arc<ChainedRun> {
    static RUNS: OnceLock<Mutex<HashMap<PathBuf, Arc<ChainedRun>>>> = OnceLock::new();
    let runs = RUNS.get_or_init(Default::default);
    let mut runs = runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    runs.entry(set.dir.clone()).or_insert_with(|| Arc::new(ChainedRun::new(&mut candidate(set), set))).clone()
}

fn check(manifest: &Path, checkpoint: Checkpoint, layer: Option<usize>, mode: Mode) -> CheckpointReport {
    let set = golden_set(manifest);
    let tolerances = tolerances();
    if let Some(l) = layer {
        assert!(l < set.manifest.model.config.n_layer, "{}: layer {l} does not exist", set.name());
    }
    match mode {
        Mode::Isolated => suite::check_isolated(&mut candidate(&set), &set, &tolerances, checkpoint, layer),
        Mode::Chained => suite::check_chained(&chained_run(&set), &set, &tolerances, checkpoint, layer),
    }
}

fn assert_passes(report: CheckpointReport) {
    assert!(report.passed(), "{}", report.message());
}

/// A test per golden set, layer and mode: `$name::manifest_N_..::layer_..::mode_..`.
macro_rules! per_layer {
    ($($name:ident => $checkpoint:expr;)*) => {$(
        #[rstest]
        fn $name(
            #[files("fixtures/goldens/*/*/manifest.yaml")] manifest: PathBuf,
            #[values(0, 1, 2)] layer: usize,
            #[values(Mode::Isolated, Mode::Chained)] mode: Mode,
        ) {
            assert_passes(check(&manifest, $checkpoint, Some(layer), mode));
        }
    )*};
}

/// A test per golden set and mode for a checkpoint's model-level tensors.
macro_rules! model_level {
    ($($name:ident => $checkpoint:expr;)*) => {$(
        #[rstest]
        fn $name(#[files("fixtures/goldens/*/*/manifest.yaml")] manifest: PathBuf, #[values(Mode::Isolated, Mode::Chained)] mode: Mode) {
            assert_passes(check(&manifest, $checkpoint, None, mode));
        }
    )*};
}

per_layer! {
    checkpoint_01_layernorm => Checkpoint::LayerNorm;
    checkpoint_02_qkv => Checkpoint::Qkv;
    checkpoint_03_kv_cache => Checkpoint::KvCache;
    checkpoint_04_attn_scores => Checkpoint::AttnScores;
    checkpoint_05_attn_output => Checkpoint::AttnOutput;
    checkpoint_06_ffn => Checkpoint::Ffn;
    checkpoint_07_block => Checkpoint::Block;
}

model_level! {
    checkpoint_00_embeddings => Checkpoint::Embeddings;
    checkpoint_01_layernorm_ln_f => Checkpoint::LayerNorm;
    checkpoint_08_logits => Checkpoint::Logits;
    checkpoint_09_selected_logits => Checkpoint::SelectedLogits;
    checkpoint_10_argmax => Checkpoint::Argmax;
    checkpoint_11_softmax => Checkpoint::Softmax;
}

/// HF's logits at each cached decode step (needs the whole model: chained only).
#[rstest]
fn checkpoint_03_kv_cache_decode_logits(#[files("fixtures/goldens/*/*/manifest.yaml")] manifest: PathBuf) {
    assert_passes(check(&manifest, Checkpoint::KvCache, None, Mode::Chained));
}

#[rstest]
fn checkpoint_03_kv_cache_matches_recompute(#[files("fixtures/goldens/*/*/manifest.yaml")] manifest: PathBuf) {
    let set = golden_set(&manifest);
    let run = chained_run(&set);
    assert_passes(suite::check_cache_matches_recompute(&mut candidate(&set), &run, &set, &tolerances()));
}

#[rstest]
fn checkpoint_12_generation(#[files("fixtures/goldens/*/*/manifest.yaml")] manifest: PathBuf) {
    assert_passes(check(&manifest, Checkpoint::Generation, None, Mode::Chained));
}

/// The end-to-end gate: greedy tokens from "Hello." equal HF's, token for token, with no step
/// decided by a margin below the logits tolerance; the decoded text equals HF's and is snapshotted.
#[test]
fn checkpoint_12_hello_gate() {
    let set = golden_set(&repo().join("fixtures/goldens/tiny-gpt2/hello/manifest.yaml"));
    assert_eq!(set.manifest.prompt.text, "Hello.");
    let report = check(&set.dir.join("manifest.yaml"), Checkpoint::Generation, None, Mode::Chained);
    assert_passes(report.clone());
    let model_dir = repo().join(&set.manifest.model.source);
    let tokenizer = Tokenizer::from_model_dir(&model_dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tokenizer.encode("Hello.").unwrap_or_else(|e| panic!("{e}")), set.manifest.prompt.ids, "the tokenizer is GPT-2's");
    let ids =
        candidate(&set).generate_greedy(&set.manifest.prompt.ids, set.manifest.generation.new_tokens).unwrap_or_else(|e| panic!("{e}"));
    let text = tokenizer.decode(&ids).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, set.manifest.generation.text, "decoded text differs from HF's");
    println!(
        "e2e gate: {:?} -> {text:?} ({} greedy tokens equal to HF's; {})",
        set.manifest.prompt.text,
        ids.len(),
        report.checks[0].detail
    );
    insta::assert_snapshot!("hello_gate", format!("{}{text}", set.manifest.prompt.text));
}

/// The suite parameterizes layers 0..LAYERS; a golden set with other layers would go unchecked.
#[test]
fn every_golden_set_has_the_layers_the_suite_runs() {
    let sets = GoldenSet::discover(&repo().join("fixtures/goldens")).unwrap_or_else(|e| panic!("{e}"));
    assert!(sets.len() >= 3, "expected the three committed golden sets, found {}", sets.len());
    for set in sets {
        assert_eq!(set.manifest.model.config.n_layer, LAYERS, "{}: update LAYERS and the #[values] lists in this file", set.name());
    }
}
