//! No code: this crate only asks for the union of the features that the workspace's builds turn on
//! in shared dependencies, so that `cargo xtask` and `cargo test` share one build (see Cargo.toml).
