//! Harmless variants: other correct ways to compute GPT-2, which a port may choose (summation
//! order, LayerNorm statistics in float64, an online softmax, other mask values, its own sampling),
//! must pass every check, claimed all, on every golden set gpt2-checkpoints ships: chained, and
//! isolated wherever the port provides a component (here only sampling). The limits are there for
//! the rounding of a correct port; a variant that fails is a false alarm of the checker.
//!
//! `cargo test -p gpt2-rust-port --test variants -- --nocapture` prints each variant's worst error
//! per checkpoint, in units of HF float32's own, per model, with the headroom to its limit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Status, Verdict, judge};
use gpt2_checkpoints::report::{SummaryRow, summarize, verdict_line};
use gpt2_checkpoints::runner::port::observe;
use gpt2_checkpoints::testing::{goldens_dir, model_dir, tolerances_path};
use gpt2_checkpoints::tolerances::Tolerances;
use gpt2_rust_port::{Gpt2, Variant};
use rstest::rstest;

/// How the port is set up for one run: a variant of its forward pass, and whether it provides its
/// own sampling (11).
#[derive(Clone, Copy, Debug, Default)]
struct Setup {
    variant: Option<Variant>,
    sampling: bool,
}

impl Setup {
    fn variant(variant: Variant) -> Setup {
        Setup { variant: Some(variant), sampling: false }
    }
}

#[rstest]
#[case::plain(Setup::default())]
#[case::reversed_sums(Setup::variant(Variant::ReversedSums))]
#[case::reversed_sums_in_own_sampling(Setup { variant: Some(Variant::ReversedSums), sampling: true })]
#[case::f64_layer_norm(Setup::variant(Variant::F64LayerNorm))]
#[case::online_softmax(Setup::variant(Variant::OnlineSoftmax))]
#[case::mask_neg_1e4(Setup::variant(Variant::MaskNeg1e4))]
#[case::mask_neg_inf(Setup::variant(Variant::MaskNegInf))]
#[case::sampling_with_max_shift(Setup { variant: None, sampling: true })]
fn a_harmless_variant_fails_nothing(#[case] setup: Setup) {
    let sets = GoldenSet::discover(&goldens_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!sets.is_empty(), "no golden sets under {}", goldens_dir().display());
    let tolerances = Tolerances::load(&tolerances_path()).unwrap_or_else(|e| panic!("{e}"));
    let mut by_model: BTreeMap<String, Vec<Verdict>> = BTreeMap::new();
    for set in &sets {
        let mut port = Gpt2::load(&model_dir(set)).unwrap_or_else(|e| panic!("{e}"));
        port.variant = setup.variant;
        port.sampling = setup.sampling;
        let verdicts = judge(set, &observe(&mut port, set), &tolerances, &Claims::all());
        by_model.entry(set.manifest.model.name.clone()).or_default().extend(verdicts);
    }
    print!("{}", worst_errors(setup, &by_model));
    let failing: Vec<String> = by_model.values().flatten().filter(|v| v.status == Status::Fail).map(verdict_line).collect();
    assert!(failing.is_empty(), "{setup:?} is harmless, yet:\n{}", failing.join("\n"));
}

/// The worst error per checkpoint and mode as a markdown table, one column per model:
/// `2.31× (2.2x)` is 2.31 times HF float32's own error, 2.2 times below the limit.
fn worst_errors(setup: Setup, by_model: &BTreeMap<String, Vec<Verdict>>) -> String {
    let summaries: Vec<Vec<SummaryRow>> = by_model.values().map(|verdicts| summarize(verdicts)).collect();
    let mut out = format!("\n{setup:?}\n| checkpoint | mode | {} |\n|---|---|", by_model.keys().cloned().collect::<Vec<_>>().join(" | "));
    out.push_str(&"---|".repeat(by_model.len()));
    for (i, row) in summaries[0].iter().enumerate() {
        let cells: Vec<String> = summaries.iter().map(|rows| cell(&rows[i])).collect();
        if cells.iter().all(|c| c == "-") {
            continue; // pending everywhere: a component the port does not provide
        }
        let _ = write!(out, "\n| {} | {} | {} |", row.checkpoint, row.mode, cells.join(" | "));
    }
    out.push('\n');
    out
}

fn cell(row: &SummaryRow) -> String {
    match (row.max_ratio, row.headroom) {
        (Some(ratio), Some(headroom)) => format!("{ratio:.2}× ({headroom:.1}x){}", if headroom < 2.0 { " CLOSE" } else { "" }),
        (Some(_), None) => "0 (exact)".into(),
        _ if row.ids_compared => "ids equal".into(),
        _ => "-".into(),
    }
}
