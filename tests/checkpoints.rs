//! The checkpoint suite on the reference model, through the same public entry a port uses.
//!
//! `cargo test checkpoint_07` runs the block checkpoint over every golden set and layer, in
//! isolated mode (HF's golden input into the one component) and chained mode (the whole reference
//! from token ids; a failure names the first tensor, in forward order, that diverged).

use std::path::Path;

use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::testing::{goldens_dir, model_dir};
use gpt2_checkpoints::tokenizer::Tokenizer;
use gpt2_checkpoints::{Port, Reference};

gpt2_checkpoints::checkpoint_tests! {
    port: Reference::load,
}

/// Beyond the gate's token ids: our tokenizer decodes them to HF's text, and the text is
/// snapshotted (insta), so a change of the committed generation is seen in review.
#[test]
fn hello_gate_text_is_hfs() {
    let set = GoldenSet::open(&goldens_dir().join("tiny-gpt2").join("hello")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.manifest.prompt.text, "Hello.");
    let dir = model_dir(&set);
    let tokenizer = Tokenizer::from_model_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tokenizer.encode("Hello.").unwrap_or_else(|e| panic!("{e}")), set.manifest.prompt.ids, "the tokenizer is GPT-2's");
    let mut reference = Reference::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let ids = reference.generate_greedy(&set.manifest.prompt.ids, set.manifest.generation.new_tokens).unwrap_or_else(|e| panic!("{e}"));
    let text = tokenizer.decode(&ids).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, set.manifest.generation.text, "decoded text differs from HF's");
    insta::assert_snapshot!("hello_gate", format!("{}{text}", set.manifest.prompt.text));
}

#[test]
fn the_shipped_goldens_are_found_from_any_directory() {
    assert!(goldens_dir().is_absolute() && goldens_dir().join("tiny-gpt2").is_dir(), "{}", goldens_dir().display());
    assert!(Path::new(&model_dir(&GoldenSet::discover(&goldens_dir()).unwrap_or_else(|e| panic!("{e}"))[0])).is_dir());
}
