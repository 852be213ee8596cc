//! Every common layout of a GPT-2 model directory loads into the same model: one
//! model.safetensors, shards with an index, names with or without `transformer.`, float16 and
//! bfloat16 (upcast at load); a pickle or a missing shard is refused with the file named.

use std::collections::BTreeMap;
use std::path::Path;

use gpt2_checkpoints::model::Gpt2;
use gpt2_checkpoints::weights::{Layout, ModelFiles};
use safetensors::Dtype;

mod common;
use common::{copy_dir, error_of, tiny_model_dir};

/// The tiny fixture's tensors: name -> (shape, float32 values).
fn fixture_tensors() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(tiny_model_dir().join("model.safetensors")).expect("fixture");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("valid fixture");
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// A copy of the tiny model whose weights are `tensors` stored as `dtype`, split over `files`
/// (one file: model.safetensors; several: shards and their index).
fn saved(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, dtype: Dtype, files: usize) -> tempfile::TempDir {
    let dir = copy_dir(&tiny_model_dir());
    std::fs::remove_file(dir.path().join("model.safetensors")).expect("remove");
    let encode = |values: &[f32]| -> Vec<u8> {
        match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            Dtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            other => panic!("no encoding for {other:?}"),
        }
    };
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors.iter().map(|(n, (s, v))| (n.clone(), s.clone(), encode(v))).collect();
    let mut weight_map = BTreeMap::new();
    for (i, part) in encoded.chunks(encoded.len().div_ceil(files)).enumerate() {
        let name = if files == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{files:05}.safetensors", i + 1) };
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            part.iter().map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), d).expect("view"))).collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(&name)).expect("write");
        weight_map.extend(part.iter().map(|(n, _, _)| (n.clone(), name.clone())));
    }
    if files > 1 {
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).expect("index");
    }
    dir
}

fn load(dir: &Path) -> Gpt2 {
    Gpt2::load(dir).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn sharded_and_unprefixed_weights_load_bit_for_bit() {
    let tensors = fixture_tensors();
    let reference = load(&tiny_model_dir());
    let sharded = saved(&tensors, Dtype::F32, 3);
    assert_eq!(ModelFiles::find(sharded.path()).expect("layout").layout, Layout::Sharded);
    let unprefixed: BTreeMap<_, _> =
        tensors.iter().map(|(n, t)| (n.strip_prefix("transformer.").unwrap_or(n).to_string(), t.clone())).collect();
    assert!(unprefixed.contains_key("wte.weight"));
    for dir in [sharded, saved(&unprefixed, Dtype::F32, 1)] {
        let model = load(dir.path());
        assert_eq!(model.wte, reference.wte);
        assert_eq!(model.h[2].mlp.c_proj.weight, reference.h[2].mlp.c_proj.weight);
        assert_eq!(model.ln_f.bias, reference.ln_f.bias);
        assert_eq!(model.source_dtype, "float32");
    }
}

#[test]
fn half_precision_weights_are_upcast_exactly() {
    let tensors = fixture_tensors();
    let reference = load(&tiny_model_dir());
    for (dtype, name, round) in [
        (Dtype::F16, "float16", (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32),
        (Dtype::BF16, "bfloat16", |v: f32| half::bf16::from_f32(v).to_f32()),
    ] {
        let model = load(saved(&tensors, dtype, 1).path());
        assert_eq!(model.source_dtype, name);
        assert_eq!(model.wte, reference.wte.mapv(round), "{name}: wte is the float32 value of each stored number");
        assert_eq!(model.h[0].attn.c_attn.weight, reference.h[0].attn.c_attn.weight.mapv(round));
        assert_ne!(model.wte, reference.wte, "{name} rounds the fixture's weights: this test would not see a missing upcast");
    }
}

#[test]
fn a_pickle_is_named_with_what_to_do() {
    let dir = copy_dir(&tiny_model_dir());
    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join("pytorch_model.bin")).expect("rename");
    assert_eq!(ModelFiles::find(dir.path()).expect("layout").layout, Layout::PytorchBin);
    let message = error_of(Gpt2::load(dir.path()));
    assert!(message.contains("pytorch_model.bin") && message.contains("cargo xtask validate"), "{message}");
}

#[test]
fn a_missing_shard_is_named() {
    let dir = saved(&fixture_tensors(), Dtype::F32, 2);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).expect("remove");
    let message = error_of(Gpt2::load(dir.path()));
    assert!(message.contains("model.safetensors.index.json") && message.contains("model-00002-of-00002.safetensors"), "{message}");
}

#[test]
fn a_directory_without_weights_says_what_it_needs() {
    let dir = copy_dir(&tiny_model_dir());
    std::fs::remove_file(dir.path().join("model.safetensors")).expect("remove");
    let message = error_of(Gpt2::load(dir.path()));
    assert!(message.contains("no model.safetensors") && message.contains("save_pretrained"), "{message}");
}
