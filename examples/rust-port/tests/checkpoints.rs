//! The checkpoint suite on this port: `cargo test -p gpt2-rust-port checkpoint_` runs
//! `checkpoint_00_embeddings::{isolated,chained}` ... `checkpoint_12_generation::{..}` and
//! `checkpoint_12_hello_gate` over every golden set gpt2-checkpoints ships.

gpt2_checkpoints::checkpoint_tests! {
    port: gpt2_rust_port::Gpt2::load,
    claims: gpt2_checkpoints::judge::Claims::all(),
}
