//! The `cargo test` entry for a port: [`checkpoint_tests!`](crate::checkpoint_tests).
//!
//! In the port's own crate, which depends on this one (its library implements [`Port`], so a
//! normal dependency, optional behind a feature if the port would rather not ship it):
//!
//! ```text
//! // tests/checkpoints.rs
//! gpt2_checkpoints::checkpoint_tests! {
//!     port: my_gpt2::Model::load,   // fn(&Path) -> Result<impl Port, impl Display>: a model directory in
//!     claims: gpt2_checkpoints::judge::Claims::through(gpt2_checkpoints::Checkpoint::AttnOutput),
//! }
//! ```
//!
//! generates `checkpoint_00_embeddings::{isolated,chained}` ... `checkpoint_12_generation::{..}` and
//! `checkpoint_12_hello_gate`, so `cargo test checkpoint_07` runs the block checkpoint over every
//! golden set and layer in both modes. The golden sets are the ones this crate ships
//! (`fixtures/goldens`), or the directory named by `GPT2_CHECKPOINTS_GOLDENS`; the tolerances are
//! `fixtures/tolerances.yaml`, or `GPT2_CHECKPOINTS_TOLERANCES`. Relative paths in those variables
//! resolve from the port's crate root (cargo runs test binaries there), not from a subdirectory.
//! HF's own error, the unit of every limit, is pooled over all golden sets of the same model.
//!
//! A test fails only for what the port claims; pending and derived results are printed
//! (`cargo test checkpoint_ -- --nocapture` shows the whole table).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::catalog::Checkpoint;
use crate::error::{Error, Result};
use crate::goldens::GoldenSet;
use crate::judge::{Claims, Noise, Status, Verdict, judge_with};
use crate::port::Port;
use crate::report::{failure_message, mode_name, summarize, summary_table};
use crate::runner;
use crate::tolerances::{Mode, Precision, Tolerances};

/// This crate's own directory: where the shipped fixtures are.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `GPT2_CHECKPOINTS_GOLDENS`, else the golden sets this crate ships.
pub fn goldens_dir() -> PathBuf {
    env_path("GPT2_CHECKPOINTS_GOLDENS").unwrap_or_else(|| crate_dir().join("fixtures").join("goldens"))
}

/// `GPT2_CHECKPOINTS_TOLERANCES`, else the tolerances this crate ships.
pub fn tolerances_path() -> PathBuf {
    env_path("GPT2_CHECKPOINTS_TOLERANCES").unwrap_or_else(|| crate_dir().join("fixtures").join("tolerances.yaml"))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The model directory a golden set was extracted from: its manifest's source, relative to this
/// crate when it is not absolute.
pub fn model_dir(set: &GoldenSet) -> PathBuf {
    let source = Path::new(&set.manifest.model.source);
    if source.is_absolute() { source.to_path_buf() } else { crate_dir().join(source) }
}

/// Makes the port for one model directory.
pub type MakePort = fn(&Path) -> std::result::Result<Box<dyn Port>, String>;

/// The suite of one port: golden sets, tolerances, claims, and each set's verdicts, computed once
/// per mode and shared by every test of the binary.
pub struct Suite {
    sets: Vec<GoldenSet>,
    tolerances: Tolerances,
    claims: Claims,
    make: MakePort,
    /// [set][0: isolated, 1: chained]
    verdicts: Vec<[OnceLock<Vec<Verdict>>; 2]>,
}

impl Suite {
    pub fn new(goldens: &Path, tolerances: &Path, claims: Claims, make: MakePort) -> Result<Suite> {
        let sets = GoldenSet::discover(goldens)?;
        if sets.is_empty() {
            return Err(Error::golden(goldens, "no golden sets (<model>/<prompt>/manifest.json) here: run `cargo xtask extract-goldens`"));
        }
        let tolerances = Tolerances::load(tolerances)?;
        let verdicts = sets.iter().map(|_| [OnceLock::new(), OnceLock::new()]).collect();
        Ok(Suite { sets, tolerances, claims, make, verdicts })
    }

    /// The goldens and tolerances of [`goldens_dir`] and [`tolerances_path`], judged in the
    /// precision `GPT2_CHECKPOINTS_PRECISION` names (f32 by default; bf16 or f16 for a port that
    /// computes in it).
    pub fn from_env(claims: Claims, make: MakePort) -> Result<Suite> {
        let mut suite = Suite::new(&goldens_dir(), &tolerances_path(), claims, make)?;
        if let Some(precision) = std::env::var("GPT2_CHECKPOINTS_PRECISION").ok().filter(|p| !p.is_empty()) {
            suite.tolerances = suite.tolerances.with_precision(Precision::parse(&precision)?);
        }
        Ok(suite)
    }

    pub fn sets(&self) -> &[GoldenSet] {
        &self.sets
    }

    /// Every verdict of set `i` in `mode`, running the port the first time.
    pub fn verdicts(&self, i: usize, mode: Mode) -> &[Verdict] {
        let slot = &self.verdicts[i][usize::from(mode == Mode::Chained)];
        slot.get_or_init(|| {
            let set = &self.sets[i];
            let observations = match (self.make)(&model_dir(set)) {
                Ok(mut port) => match mode {
                    Mode::Chained => runner::port::chained(port.as_mut(), set),
                    Mode::Isolated => runner::port::isolated(port.as_mut(), set),
                },
                Err(e) => {
                    let mut obs = runner::Observations::default();
                    let failed = runner::Missing::Failed(format!("cannot make the port for {}: {e}", model_dir(set).display()));
                    obs.missing_unless_seen(mode, set.manifest.dims().forward_order(), &failed);
                    obs
                }
            };
            // HF's own error pooled over every set of the same model (CHECKPOINTS.md, "How a port is judged").
            let same_model = self.sets.iter().filter(|s| s.manifest.model.name == set.manifest.model.name);
            let noise = Noise::pooled(same_model, self.tolerances.precision());
            judge_with(set, &observations, &self.tolerances, &self.claims, noise).into_iter().filter(|v| v.mode == mode).collect()
        })
    }

    /// The test of one checkpoint in one mode over every golden set and layer: panics with every
    /// failing tensor and the first divergence; prints the checkpoint's row otherwise.
    pub fn check(&self, checkpoint: Checkpoint, mode: Mode) {
        let mut all: Vec<Verdict> = Vec::new();
        let mut message = String::new();
        for i in 0..self.sets.len() {
            let verdicts = self.verdicts(i, mode);
            let failing: Vec<&Verdict> = verdicts.iter().filter(|v| v.key.checkpoint == checkpoint && v.status == Status::Fail).collect();
            if !failing.is_empty() {
                message.push_str(&failure_message(&failing, verdicts));
            }
            all.extend(verdicts.iter().filter(|v| v.key.checkpoint == checkpoint).cloned());
        }
        print!("claims: {}, precision {}\n{}", self.claims, self.tolerances.precision().name(), summary_table(&summarize(&all)));
        for v in all.iter().filter(|v| v.status == Status::Pending).take(3) {
            println!("pending {} [{}]: {}", v.key, v.set, v.detail);
        }
        assert!(message.is_empty(), "{} {} FAILED\n{message}", checkpoint, mode_name(mode));
    }

    /// The end-to-end gate: chained 12 on every "Hello." set must pass (when the port claims 12);
    /// prints `e2e gate: ...`.
    pub fn hello_gate(&self) {
        if !self.claims.contains(Checkpoint::Generation) {
            println!("e2e gate: pending (the port claims {}, not 12)", self.claims);
            return self.check(Checkpoint::Generation, Mode::Chained);
        }
        let hello: Vec<usize> = (0..self.sets.len()).filter(|&i| self.sets[i].manifest.prompt.text == "Hello.").collect();
        assert!(!hello.is_empty(), "no golden set has the prompt \"Hello.\"");
        for i in hello {
            let set = &self.sets[i];
            let verdicts = self.verdicts(i, Mode::Chained);
            let gate: Vec<&Verdict> = verdicts.iter().filter(|v| v.key.checkpoint == Checkpoint::Generation).collect();
            let failing: Vec<&Verdict> = gate.iter().copied().filter(|v| v.status != Status::Pass).collect();
            assert!(failing.is_empty(), "the \"Hello.\" gate FAILED for {}\n{}", set.name(), failure_message(&failing, verdicts));
            let g = &set.manifest.generation;
            println!(
                "e2e gate: {} {:?} -> {:?} ({} greedy tokens equal to HF's; {})",
                set.name(),
                set.manifest.prompt.text,
                g.text,
                g.new_ids.len(),
                gate[0].detail
            );
        }
    }
}

/// The suite's tests in a port's crate: one per checkpoint and mode, plus the "Hello." gate.
/// `port:` is a function from a model directory to `Result<impl Port, impl Display>`; `claims:`
/// (default: all) what must pass. See [`crate::testing`].
#[macro_export]
macro_rules! checkpoint_tests {
    (port: $make:expr $(,)?) => {
        $crate::checkpoint_tests!(port: $make, claims: $crate::judge::Claims::all());
    };
    (port: $make:expr, claims: $claims:expr $(,)?) => {
        fn __gpt2_checkpoints_suite() -> &'static $crate::testing::Suite {
            static SUITE: ::std::sync::OnceLock<::std::result::Result<$crate::testing::Suite, ::std::string::String>> =
                ::std::sync::OnceLock::new();
            let suite = SUITE.get_or_init(|| {
                $crate::testing::Suite::from_env($claims, |dir| {
                    ($make)(dir).map(|port| ::std::boxed::Box::new(port) as ::std::boxed::Box<dyn $crate::port::Port>).map_err(|e| e.to_string())
                })
                .map_err(|e| e.to_string())
            });
            match suite {
                Ok(suite) => suite,
                Err(e) => panic!("{e}"),
            }
        }
        $crate::__checkpoint_tests_each! {
            checkpoint_00_embeddings: Embeddings,
            checkpoint_01_layernorm: LayerNorm,
            checkpoint_02_qkv: Qkv,
            checkpoint_03_kv_cache: KvCache,
            checkpoint_04_attn_scores: AttnScores,
            checkpoint_05_attn_output: AttnOutput,
            checkpoint_06_ffn: Ffn,
            checkpoint_07_block: Block,
            checkpoint_08_logits: Logits,
            checkpoint_09_selected_logits: SelectedLogits,
            checkpoint_10_argmax: Argmax,
            checkpoint_11_softmax: Softmax,
            checkpoint_12_generation: Generation,
        }
        #[test]
        fn checkpoint_12_hello_gate() {
            __gpt2_checkpoints_suite().hello_gate();
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __checkpoint_tests_each {
    ($($name:ident: $checkpoint:ident,)*) => {$(
        #[allow(non_snake_case)]
        mod $name {
            #[test]
            fn isolated() {
                super::__gpt2_checkpoints_suite().check($crate::catalog::Checkpoint::$checkpoint, $crate::tolerances::Mode::Isolated);
            }
            #[test]
            fn chained() {
                super::__gpt2_checkpoints_suite().check($crate::catalog::Checkpoint::$checkpoint, $crate::tolerances::Mode::Chained);
            }
        }
    )*};
}
