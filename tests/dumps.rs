//! The dump protocol end to end: a directory of `.npy` files judged against a golden set, as
//! `cargo xtask compare` does it, with partial dumps, pipeline stages and bad input.

use std::path::{Path, PathBuf};

use gpt2_checkpoints::catalog::{Checkpoint, tap};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Status, Verdict, judge};
use gpt2_checkpoints::model::Reference;
use gpt2_checkpoints::report::first_divergence;
use gpt2_checkpoints::runner::{self, dumps};
use gpt2_checkpoints::testing::{goldens_dir, model_dir, tolerances_path};
use gpt2_checkpoints::tolerances::{Mode, Tolerances};
use ndarray::ArrayD;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

fn set() -> GoldenSet {
    GoldenSet::open(&goldens_dir().join("tiny-gpt2").join("hello")).expect("the hello golden set")
}

/// A candidate directory holding a copy of every golden .npy file (a "port" that is HF itself).
fn golden_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for entry in std::fs::read_dir(set().dir).expect("the golden set") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|x| x == "npy") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("a name"))).expect("copy");
        }
    }
    dir
}

fn judged(stages: &[PathBuf], claims: &Claims) -> Vec<Verdict> {
    let set = set();
    let tolerances = Tolerances::load(&tolerances_path()).expect("tolerances");
    judge(&set, &dumps::read(stages, &set).expect("readable dumps"), &tolerances, claims)
}

fn failures(verdicts: &[Verdict]) -> Vec<&Verdict> {
    verdicts.iter().filter(|v| v.status == Status::Fail).collect()
}

#[test]
fn a_copy_of_the_goldens_passes_every_chained_check() {
    let dir = golden_copy();
    let verdicts = judged(&[dir.path().to_path_buf()], &Claims::all());
    assert!(failures(&verdicts).is_empty(), "{:?}", failures(&verdicts));
    assert!(verdicts.iter().filter(|v| v.mode == Mode::Chained).all(|v| v.status == Status::Pass));
    assert!(verdicts.iter().filter(|v| v.mode == Mode::Isolated).all(|v| v.status == Status::Pending), "no isolated/ dumps");
}

#[test]
fn one_element_off_by_1e_2_is_named_with_its_layer_and_index() {
    let dir = golden_copy();
    let path = dir.path().join("07_block.l01.output.npy");
    let mut block = ArrayD::<f32>::read_npy(std::fs::File::open(&path).expect("open")).expect("read");
    block[[0, 1, 5]] += 1e-2;
    block.write_npy(std::fs::File::create(&path).expect("create")).expect("write");
    let verdicts = judged(&[dir.path().to_path_buf()], &Claims::none());
    assert!(failures(&verdicts).is_empty(), "nothing is claimed: nothing fails");
    assert_eq!(first_divergence(&verdicts).map(|v| v.key), Some(tap::block_output(1)), "but the divergence is still named");
    let verdicts = judged(&[dir.path().to_path_buf()], &Claims::all());
    let first = first_divergence(&verdicts).expect("a failure");
    assert_eq!(first.key, tap::block_output(1));
    assert!(first.detail.contains("[0, 1, 5]"), "{}", first.detail);
    assert_eq!(failures(&verdicts).len(), 1, "only that tensor: the later dumps are HF's own");
}

#[test]
fn missing_checkpoints_are_pending_unless_claimed() {
    let dir = golden_copy();
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        if name[..2].parse::<u8>().is_ok_and(|id| id >= 5) {
            std::fs::remove_file(path).expect("remove");
        }
    }
    let verdicts = judged(&[dir.path().to_path_buf()], &Claims::through(Checkpoint::AttnScores));
    assert!(failures(&verdicts).is_empty(), "{:?}", failures(&verdicts));
    assert!(verdicts.iter().filter(|v| v.key.checkpoint >= Checkpoint::AttnOutput).all(|v| v.status == Status::Pending));
    let verdicts = judged(&[dir.path().to_path_buf()], &Claims::all());
    let first = first_divergence(&verdicts).expect("claimed and missing");
    assert_eq!(first.detail, "tap 05_attn_output.l00.attn_output was never reported");
}

#[test]
fn pipeline_stages_merge_into_one_candidate() {
    let (stage_1, stage_2) = (golden_copy(), golden_copy());
    // stage 1 ran embeddings and block 0; stage 2 the rest (its boundary tensor included)
    for entry in std::fs::read_dir(stage_1.path()).expect("list") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        let in_stage_1 = name.starts_with("00_") || name.contains(".l00.");
        std::fs::remove_file(if in_stage_1 { stage_2.path().join(&name) } else { path }).expect("remove");
    }
    let stages = [stage_1.path().to_path_buf(), stage_2.path().to_path_buf()];
    let verdicts = judged(&stages, &Claims::all());
    assert!(failures(&verdicts).is_empty(), "{:?}", failures(&verdicts));
    assert!(judged(&stages[..1], &Claims::all()).iter().any(|v| v.status == Status::Fail), "one stage alone is incomplete");
}

fn read_error(dir: &Path) -> String {
    match dumps::read(&[dir.to_path_buf()], &set()) {
        Ok(_) => panic!("expected bad input"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_dumps_are_named_in_one_line() {
    let missing = read_error(Path::new("/no/such/dumps"));
    assert!(missing.contains("/no/such/dumps") && missing.contains("no such candidate directory"), "{missing}");

    let dir = golden_copy();
    std::fs::copy(dir.path().join("07_block.l01.output.npy"), dir.path().join("07_block.l1.output.npy")).expect("copy");
    let unknown = read_error(dir.path());
    assert!(unknown.contains("07_block.l1.output.npy") && unknown.contains("07_block.l01.output.npy"), "{unknown}");
    std::fs::remove_file(dir.path().join("07_block.l1.output.npy")).expect("remove");

    let path = dir.path().join("06_ffn.l00.gelu.npy");
    ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 7])).write_npy(std::fs::File::create(&path).expect("create")).expect("write");
    let shape = read_error(dir.path());
    assert!(shape.contains("06_ffn.l00.gelu.npy") && shape.contains("shape [2, 7]"), "{shape}");

    ArrayD::<f32>::from_elem(ndarray::IxDyn(&[1, 2, 192]), f32::NAN)
        .write_npy(std::fs::File::create(&path).expect("create"))
        .expect("write");
    let nan = read_error(dir.path());
    assert!(nan.contains("06_ffn.l00.gelu.npy") && nan.contains("NaN"), "{nan}");
    assert!(!nan.contains('\n') && !shape.contains('\n') && !unknown.contains('\n'));
}

/// The reference's own dumps, written by the protocol's writer and read back, pass in both modes:
/// the writer and the reader agree, and the protocol carries isolated runs too.
#[test]
fn the_reference_dumps_round_trip() {
    let set = set();
    let mut reference = Reference::load(&model_dir(&set)).expect("the reference");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = dumps::write(&runner::port::observe(&mut reference, &set), &set, dir.path()).expect("written");
    assert!(dir.path().join("isolated").join("07_block.l00.output.npy").is_file());
    let verdicts = judged(&[dir.path().to_path_buf()], &Claims::all());
    assert!(failures(&verdicts).is_empty(), "{:?}", failures(&verdicts));
    assert_eq!(verdicts.iter().filter(|v| v.status == Status::Pass).count(), files);
}
