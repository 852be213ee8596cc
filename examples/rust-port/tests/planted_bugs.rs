//! Each planted bug must be caught at its own checkpoint: the port runs chained on every golden set
//! gpt2-checkpoints ships, through the same public API the `checkpoint_tests!` macro uses, and the
//! first diverging tensor in forward order must belong to the bug's checkpoint.

use gpt2_checkpoints::Checkpoint;
use gpt2_checkpoints::catalog::tap;
use gpt2_checkpoints::goldens::GoldenSet;
use gpt2_checkpoints::judge::{Claims, Status, Verdict, judge};
use gpt2_checkpoints::report::{first_divergence, verdict_line};
use gpt2_checkpoints::runner::port::chained;
use gpt2_checkpoints::testing::{goldens_dir, model_dir, tolerances_path};
use gpt2_checkpoints::tolerances::{Mode, Tolerances};
use gpt2_rust_port::{Bug, Gpt2};
use rstest::rstest;

/// The port with `bug` planted, run chained on every shipped golden set and judged under `claims`.
fn run(bug: Bug, claims: &Claims) -> Vec<(GoldenSet, Gpt2, Vec<Verdict>)> {
    let sets = GoldenSet::discover(&goldens_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!sets.is_empty(), "no golden sets under {}", goldens_dir().display());
    let tolerances = Tolerances::load(&tolerances_path()).unwrap_or_else(|e| panic!("{e}"));
    sets.into_iter()
        .map(|set| {
            let mut port = Gpt2::load(&model_dir(&set)).unwrap_or_else(|e| panic!("{e}"));
            port.bug = Some(bug);
            let observations = chained(&mut port, &set);
            let verdicts = judge(&set, &observations, &tolerances, claims);
            (set, port, verdicts)
        })
        .collect()
}

#[rstest]
#[case::positions_from_1(Bug::PositionsFrom1, Checkpoint::Embeddings)]
#[case::unbiased_variance(Bug::UnbiasedVariance, Checkpoint::LayerNorm)]
#[case::hard_coded_head_dim_64(Bug::HardCodedHeadDim64, Checkpoint::AttnScores)]
#[case::no_causal_mask(Bug::NoCausalMask, Checkpoint::AttnScores)]
#[case::merge_heads_no_transpose(Bug::MergeHeadsNoTranspose, Checkpoint::AttnOutput)]
#[case::gelu_erf(Bug::GeluErf, Checkpoint::Ffn)]
fn first_divergence_is_the_bugs_checkpoint(#[case] bug: Bug, #[case] checkpoint: Checkpoint) {
    for (set, _, verdicts) in run(bug, &Claims::all()) {
        let first = first_divergence(&verdicts).unwrap_or_else(|| panic!("{bug:?} on {}: nothing failed", set.name()));
        assert_eq!(first.key.checkpoint, checkpoint, "{bug:?} on {}: {}", set.name(), verdict_line(first));
        println!("{bug:?}: {}", verdict_line(first).lines().next().unwrap_or_default());
    }
}

/// Dropping c_fc's bias is caught at 06, but only by a model whose c_fc has a bias: where every
/// c_fc bias is 0 (HF's random initialisation, as in the tiny fixture) the bug changes nothing.
#[test]
fn a_dropped_fc_bias_is_caught_at_06_where_there_is_a_bias() {
    for (set, port, verdicts) in run(Bug::DropFcBias, &Claims::all()) {
        let has_bias = port.h.iter().any(|block| block.mlp.c_fc.bias.iter().any(|&b| b != 0.0));
        match first_divergence(&verdicts) {
            Some(first) => {
                assert!(has_bias, "DropFcBias on {}, whose c_fc biases are all 0: {}", set.name(), verdict_line(first));
                assert_eq!(first.key.checkpoint, Checkpoint::Ffn, "DropFcBias on {}: {}", set.name(), verdict_line(first));
                println!("DropFcBias: {}", verdict_line(first).lines().next().unwrap_or_default());
            }
            None => {
                assert!(!has_bias, "DropFcBias on {}: nothing failed", set.name());
                println!("DropFcBias on {}: not observable, every c_fc bias of {} is 0", set.name(), model_dir(&set).display());
            }
        }
    }
}

/// A port that claims only 00-05 is not failed by its bug at 06: 06_ffn.l00.gelu, where the chain
/// diverges first, is pending with what would fail, and everything before it passes.
#[test]
fn through_05_the_gelu_bug_is_pending_not_failed() {
    for (set, _, verdicts) in run(Bug::GeluErf, &Claims::through(Checkpoint::AttnOutput)) {
        let chained: Vec<&Verdict> = verdicts.iter().filter(|v| v.mode == Mode::Chained).collect();
        let at = chained.iter().position(|v| v.key == tap::gelu(0)).expect("a verdict on 06_ffn.l00.gelu");
        let gelu = chained[at];
        assert_eq!(gelu.status, Status::Pending, "{}", verdict_line(gelu));
        assert!(gelu.detail.starts_with("not claimed; error"), "{}", verdict_line(gelu));
        let upstream: Vec<String> = chained[..at].iter().filter(|v| v.status == Status::Fail).map(|v| verdict_line(v)).collect();
        assert!(upstream.is_empty(), "{}:\n{}", set.name(), upstream.join("\n"));
    }
}

/// The same port with nothing failed at all: the claimed 01-05 tensors of layers 1 and 2 (and
/// 03's decode logits) are computed from layer 0's wrong GELU output, downstream of a divergence
/// the port does not claim, so they are pending too; the first divergence names 06.
#[test]
fn a_port_claiming_through_05_passes_with_a_bug_at_06() {
    for (set, _, verdicts) in run(Bug::GeluErf, &Claims::through(Checkpoint::AttnOutput)) {
        let failing: Vec<String> = verdicts.iter().filter(|v| v.status == Status::Fail).map(verdict_line).collect();
        assert!(failing.is_empty(), "{}:\n{}", set.name(), failing.join("\n"));
        let first = first_divergence(&verdicts).expect("the GELU bug diverges");
        assert_eq!(first.key, tap::gelu(0), "{}", verdict_line(first));
    }
}
