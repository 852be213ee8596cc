//! Empty: Cargo builds `[build-dependencies]` only for a crate with a build script, and this crate's
//! build-dependencies exist to unify the features of the proc-macros' `syn` (see Cargo.toml).
fn main() {}
