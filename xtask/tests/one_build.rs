//! `cargo xtask ...`, `cargo test` and the example port's tests share one build of their
//! dependencies: every crate they have in common resolves to the same features in each
//! (xtask/workspace-hack says why and how to fix a failure here).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Each package's build as its command selects it: (package, dependency kinds).
const BUILDS: &[(&str, &str)] =
    [("xtask", "normal,build"), ("gpt2-checkpoints", "normal,build,dev"), ("gpt2-rust-port", "normal,build,dev")].as_slice();

/// `name vX.Y.Z` -> every feature set it is built with (host and target builds can differ).
fn features(package: &str, kinds: &str) -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["tree", "--offline", "--locked", "--prefix", "none", "--format", "{p}|{f}", "-p", package, "-e", kinds])
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo tree: {e}"));
    assert!(output.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&output.stderr));
    let mut crates: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((id, features)) = line.split_once('|') else { continue };
        // "name v1.2.3 (proc-macro)" or "name v0.1.0 (/path)": workspace members carry a path.
        if id.contains("(/") {
            continue;
        }
        // " (*)" marks a crate cargo tree has printed before.
        let id = id.trim_end_matches(" (*)").trim_end_matches(" (proc-macro)").to_string();
        crates.entry(id).or_default().insert(features.trim_end_matches(" (*)").to_string());
    }
    crates
}

#[test]
fn shared_dependencies_have_the_same_features_in_every_build() {
    let builds: Vec<_> = BUILDS.iter().map(|(package, kinds)| (*package, features(package, kinds))).collect();
    let mut differences = Vec::new();
    for (i, (a, a_crates)) in builds.iter().enumerate() {
        for (b, b_crates) in &builds[i + 1..] {
            for (id, a_features) in a_crates {
                if let Some(b_features) = b_crates.get(id).filter(|b_features| *b_features != a_features) {
                    differences.push(format!("{id}: {a_features:?} for {a}, {b_features:?} for {b}"));
                }
            }
        }
    }
    assert!(
        differences.is_empty(),
        "these crates would be compiled twice; add them to xtask/workspace-hack/Cargo.toml with the union of their features:\n{}",
        differences.join("\n")
    );
}
