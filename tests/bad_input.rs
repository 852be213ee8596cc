//! Bad input fails with a message that names the file, tensor or checkpoint, never with a panic
//! from inside a dependency: broken goldens, broken weights, a non-GPT-2 config, NaN in our output.

use std::path::{Path, PathBuf};

use gpt2_checkpoints::catalog::{TensorKey, tap};
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Status, judge};
use gpt2_checkpoints::model::{Gpt2, Reference};
use gpt2_checkpoints::report::first_divergence;
use gpt2_checkpoints::runner;
use gpt2_checkpoints::tolerances::{Mode, Tolerances};
use ndarray::Array2;
use ndarray_npy::WriteNpyExt;

mod common;
use common::{copy_dir, error_of, repo, tiny_model_dir};

fn hello_dir() -> PathBuf {
    repo().join("fixtures/goldens/tiny-gpt2/hello")
}

const BLOCK_OUTPUT: TensorKey = tap::block_output(0);

#[test]
fn a_missing_golden_file_is_named() {
    let scratch = copy_dir(&hello_dir());
    std::fs::remove_file(scratch.path().join("07_block.l00.output.npy")).expect("remove");
    let set = GoldenSet::open(scratch.path()).expect("the manifest is intact");
    let message = error_of(set.f32(BLOCK_OUTPUT));
    assert!(message.contains("07_block.l00.output.npy") && message.contains("extract-goldens"), "{message}");
    // and the checkpoint check fails with that message instead of panicking
    let tolerances = Tolerances::load(&repo().join("fixtures/tolerances.yaml")).expect("tolerances");
    let mut reference = Reference::load(&tiny_model_dir()).expect("model");
    let verdicts = judge(&set, &runner::port::isolated(&mut reference, &set), &tolerances, &Claims::all());
    let block = verdicts.iter().find(|v| v.key == tap::block_output(0) && v.mode == Mode::Isolated).expect("a verdict on 07 layer 0");
    assert_eq!(block.status, Status::Fail);
    assert!(block.detail.contains("07_block.l00.output.npy"), "{}", block.detail);
}

/// Reads 07_block.l00.output from a scratch copy of the "Hello." set after `spoil` rewrote that
/// file, and returns the error (the manifest is left intact).
fn error_reading_spoiled_block_output(spoil: impl FnOnce(&Path)) -> (tempfile::TempDir, String) {
    let scratch = copy_dir(&hello_dir());
    spoil(&scratch.path().join("07_block.l00.output.npy"));
    let set = GoldenSet::open(scratch.path()).expect("the manifest is intact");
    let message = error_of(set.f32(BLOCK_OUTPUT));
    assert!(message.contains("07_block.l00.output.npy"), "the error names the file: {message}");
    (scratch, message)
}

#[test]
fn a_truncated_npy_is_named() {
    let (_, message) = error_reading_spoiled_block_output(|path| {
        let bytes = std::fs::read(path).expect("read");
        std::fs::write(path, &bytes[..bytes.len() / 2]).expect("truncate");
    });
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn a_shape_that_disagrees_with_the_manifest_is_named() {
    let (_, message) = error_reading_spoiled_block_output(|path| {
        Array2::<f32>::zeros((3, 4)).write_npy(std::fs::File::create(path).expect("create")).expect("write");
    });
    assert!(message.contains("disagrees with the manifest"), "{message}");
}

#[test]
fn a_dtype_that_disagrees_with_the_manifest_is_named() {
    let (scratch, message) = error_reading_spoiled_block_output(|path| {
        Array2::<i64>::zeros((2, 48)).write_npy(std::fs::File::create(path).expect("create")).expect("write");
    });
    assert!(message.contains("F32"), "{message}");

    // a manifest that changes a tensor's dtype is refused when the set is opened
    let manifest = scratch.path().join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("read");
    std::fs::write(&manifest, text.replacen("\"dtype\": \"f32\"", "\"dtype\": \"i64\"", 1)).expect("write");
    let message = error_of(GoldenSet::open(scratch.path()));
    assert!(message.contains("manifest.json") && message.contains("00_embeddings.embeddings"), "{message}");
}

#[test]
fn nan_in_our_output_fails_and_the_chain_names_where_it_started() {
    let set = GoldenSet::open(&hello_dir()).expect("golden set");
    let tolerances = Tolerances::load(&repo().join("fixtures/tolerances.yaml")).expect("tolerances");
    let mut model = Gpt2::load(&tiny_model_dir()).expect("model");
    model.h[1].mlp.c_fc.weight[[0, 0]] = f32::NAN; // every output from block 1's MLP on is NaN
    let verdicts = judge(&set, &runner::port::chained(&mut Reference::new(model), &set), &tolerances, &Claims::all());
    assert!(verdicts.iter().any(|v| v.key == tap::logits() && v.status == Status::Fail));
    let first = first_divergence(&verdicts).expect("a first divergence");
    assert_eq!(first.key.stem(), "06_ffn.l01.gelu", "{}", first.detail);
    assert!(first.detail.contains("NaN"), "{}", first.detail);
}

/// Writes the tiny model's weights with one tensor changed by `edit` (None drops it).
fn tiny_model_with(edit: impl Fn(&str, &[usize], Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>) -> tempfile::TempDir {
    let scratch = copy_dir(&tiny_model_dir());
    let path = scratch.path().join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("fixture is valid");
    let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in tensors.tensors() {
        if let Some((shape, data)) = edit(&name, view.shape(), view.data().to_vec()) {
            kept.push((name, shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = kept
        .iter()
        .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).expect("view")))
        .collect();
    safetensors::serialize_to_file(views, None, &path).expect("write");
    scratch
}

#[test]
fn a_missing_weight_tensor_is_named() {
    let scratch = tiny_model_with(|name, shape, data| (name != "transformer.h.1.ln_2.bias").then(|| (shape.to_vec(), data)));
    let message = error_of(Gpt2::load(scratch.path()));
    assert!(
        message.contains("model.safetensors") && message.contains("transformer.h.1.ln_2.bias") && message.contains("missing"),
        "{message}"
    );
}

#[test]
fn a_misshaped_weight_tensor_is_named() {
    let scratch = tiny_model_with(|name, shape, data| {
        if name == "transformer.h.0.attn.c_proj.weight" {
            Some((vec![shape[0] * shape[1]], data)) // flattened
        } else {
            Some((shape.to_vec(), data))
        }
    });
    let message = error_of(Gpt2::load(scratch.path()));
    assert!(message.contains("transformer.h.0.attn.c_proj.weight") && message.contains("shape"), "{message}");
}

#[test]
fn a_config_that_is_not_gpt2_or_asks_for_the_unimplemented_is_refused() {
    let scratch = copy_dir(&tiny_model_dir());
    let config = scratch.path().join("config.json");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace("\"gelu_new\"", "\"relu\"")).expect("write");
    let message = error_of(Gpt2::load(scratch.path()));
    assert!(message.contains("config.json") && message.contains("activation_function"), "{message}");
    std::fs::write(&config, text.replace("\"model_type\": \"gpt2\"", "\"model_type\": \"llama\"")).expect("write");
    let message = error_of(Gpt2::load(scratch.path()));
    assert!(message.contains("config.json") && message.contains("llama"), "{message}");
    std::fs::remove_file(&config).expect("remove");
    let message = error_of(Gpt2::load(scratch.path()));
    assert!(message.contains("config.json") && message.contains("save_pretrained"), "{message}");
}

#[test]
fn a_missing_golden_set_directory_says_what_to_run() {
    let message = error_of(GoldenSet::open(&repo().join("fixtures/goldens/no-such-model/hello")));
    assert!(message.contains("manifest.json") && message.contains("cargo xtask extract-goldens"), "{message}");
}
