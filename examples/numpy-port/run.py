"""Runs the NumPy GPT-2 (gpt2.py) on a golden set's prompt and writes its checkpoint taps.

    python run.py --goldens fixtures/goldens/tiny-gpt2/hello --out target/numpy-port/hello --isolated

Chained taps go to OUT/, isolated ones (each component fed HF's golden input) to OUT/isolated/.
This port has no KV cache, so it writes no 03 cache keys/values; it does write
03_kv_cache.decode_logits, by recomputing the prompt plus the first s decode ids.

``--plant BUG`` swaps one function of the port for a known bug, to show that the checkpoint suite
catches it at its own checkpoint (see PLANTS). The exit status is 1 if a tap was refused.
"""

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "python"))

import gpt2  # noqa: E402
from gpt2_checkpoints import CHECKPOINTS, GoldenSet, TapWriter  # noqa: E402


class Recorder:
    """A tap callback that writes through a TapWriter; a refused tap is reported and the run goes on."""

    def __init__(self, writer):
        self.writer = writer
        self.refused = []

    def __call__(self, name, array):
        try:
            self.writer.write(name, array)
        except ValueError as e:
            self.refused.append(str(e))
            print(f"refused: {e}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------
# Chained: the whole model from the prompt's ids


def run_chained(gs, params, hparams, tap):
    """Checkpoints 00-12 from token ids, as a user of the port would run it."""
    logits = gpt2.gpt2(gs.prompt_ids, params, hparams, tap=tap)  # 00-08, [T, V]
    last = gpt2.select_last(logits)  # [V]
    tap("09_selected_logits.last_logits", last)
    tap("10_argmax.next_token", gpt2.next_token(last))
    probs, probs_warped, top_ids = gpt2.sampling(last, gs.temperature, gs.top_k)
    tap("11_softmax.probs", probs)
    tap("11_softmax.probs_warped", probs_warped)
    tap("11_softmax.top_ids", top_ids)
    # 03 without a cache: a cached decode step must give the logits of recomputing the sequence.
    rows = [gpt2.select_last(gpt2.gpt2(gs.prompt_ids + gs.decode_ids[:s], params, hparams)) for s in range(1, gs.decode_steps + 1)]
    tap("03_kv_cache.decode_logits", np.stack(rows))  # [S, V]
    tap("12_generation.new_ids", gpt2.generate(gs.prompt_ids, params, hparams, gs.new_tokens))


# ----------------------------------------------------------------------------------------------------
# Isolated: one component at a time, fed HF's golden input (gpt2_checkpoints.ISOLATED_INPUTS)


def isolated_layer_norm(job, a, params, hparams):
    site = job.outputs[0].rsplit(".", 1)[1]  # ln_1, ln_2 or ln_f
    ln = params["ln_f"] if site == "ln_f" else params["blocks"][job.layer][site]
    return (gpt2.layer_norm(a["x"], **ln, eps=hparams["layer_norm_epsilon"]),)


def isolated_ffn(job, a, params, hparams):
    taps = {}
    gpt2.ffn(a["x"], **params["blocks"][job.layer]["mlp"], tap=taps.__setitem__, layer=job.layer)
    return tuple(taps[name] for name in job.outputs)


def isolated_block(job, a, params, hparams):
    return (gpt2.transformer_block(a["x"], **params["blocks"][job.layer], hparams=hparams, layer=job.layer),)


def isolated_generation(job, a, params, hparams):
    return (gpt2.generate(a["ids"].tolist(), params, hparams, a["new_tokens"]),)


#: checkpoint -> f(job, golden inputs, params, hparams) -> outputs in the order of job.outputs.
ISOLATED = {
    0: lambda job, a, p, hp: (gpt2.embeddings(a["ids"], p["wte"], p["wpe"]),),
    1: isolated_layer_norm,
    2: lambda job, a, p, hp: gpt2.qkv(a["x"], p["blocks"][job.layer]["attn"]["c_attn"], hp["n_head"]),
    # 03: this port has no KV cache, so there is no append to test.
    4: lambda job, a, p, hp: gpt2.attention(a["q"], a["k"], gpt2.attention_scale(hp, job.layer)),
    5: lambda job, a, p, hp: (gpt2.attention_output(a["weights"], a["v"], p["blocks"][job.layer]["attn"]["c_proj"]),),
    6: isolated_ffn,
    7: isolated_block,
    8: lambda job, a, p, hp: (gpt2.lm_head(a["x"], p["wte"]),),
    9: lambda job, a, p, hp: (gpt2.select_last(a["logits"]),),
    10: lambda job, a, p, hp: (gpt2.next_token(a["logits"]),),
    11: lambda job, a, p, hp: gpt2.sampling(a["logits"], a["temperature"], a["top_k"]),
    12: isolated_generation,
}


def run_isolated(gs, params, hparams, tap):
    """Every isolated job of the set that this port has a component for."""
    for job in gs.isolated_jobs():
        if job.checkpoint in ISOLATED:
            outputs = ISOLATED[job.checkpoint](job, gs.isolated_inputs(job), params, hparams)
            for name, array in zip(job.outputs, outputs, strict=True):
                tap(name, array)


# ----------------------------------------------------------------------------------------------------
# Planted bugs: each replaces one function of gpt2.py


def _layer_norm_unbiased(x, g, b, eps=1e-5):
    return g * (x - np.mean(x, axis=-1, keepdims=True)) / np.sqrt(np.var(x, axis=-1, keepdims=True, ddof=1) + eps) + b


def _gelu_erf(x):
    erf = np.vectorize(math.erf, otypes=[x.dtype])
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _softmax_no_max_shift(x):
    exp_x = np.exp(x)
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


#: name -> (checkpoint where it should be caught, what it does, function name in gpt2.py, replacement)
PLANTS = {
    "positions-from-1": ("00", "position embeddings start at 1", "embeddings",
                         lambda ids, wte, wpe: wte[ids] + wpe[np.arange(1, len(ids) + 1)]),
    "unbiased-var": ("01", "LayerNorm divides the variance by C - 1", "layer_norm", _layer_norm_unbiased),
    "no-causal-mask": ("04", "every position sees the future", "causal_mask",
                       lambda t, dtype=np.float32: np.zeros((t, t), dtype)),
    "no-scale": ("04", "q·kᵀ is not divided by sqrt(D)", "attention_scale", lambda hparams, layer: 1.0),
    "merge-heads-no-transpose": ("05", "heads merged by reshaping [H, T, D] without the transpose", "merge_heads",
                                 lambda x: x.reshape(x.shape[1], -1)),
    "gelu-erf": ("06", "torch's default erf GELU instead of gelu_new", "gelu", _gelu_erf),
    "first-row-logits": ("09", "the next token is predicted from position 0", "select_last", lambda logits: logits[0]),
    "softmax-no-max-shift": ("11 (only when exp overflows: logits above ~88)", "softmax without subtracting the max",
                             "softmax", _softmax_no_max_shift),
}


def plant(name):
    checkpoint, what, function, replacement = PLANTS[name]
    setattr(gpt2, function, replacement)
    print(f"planted {name}: {what} (gpt2.{function}); expected to be caught at {checkpoint}")


# ----------------------------------------------------------------------------------------------------


def summary(writer, title):
    """Per checkpoint: how many compared tensors were written, and which are missing."""
    expected, missing = writer.expected(), set(writer.missing())
    print(f"{title}: wrote {len(expected) - len(missing)} of {len(expected)} compared tensors to {writer.dir}")
    for label in CHECKPOINTS:
        names = [n for n in expected if n.startswith(label + ".")]
        if not names:
            continue
        gone = Counter(n.rsplit(".", 1)[1] for n in names if n in missing)
        note = f"   missing {', '.join(f'{t} x{c}' for t, c in gone.items())}" if gone else ""
        print(f"  {label:20} {len(names) - sum(gone.values()):3}/{len(names):<3}{note}")


def check_model(gs, hparams, model_dir):
    for key in ("n_layer", "n_embd", "n_head", "vocab_size"):
        if hparams[key] != gs.config[key]:
            sys.exit(f"{model_dir} has {key} = {hparams[key]}, the goldens' model has {gs.config[key]}: pass --model")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--goldens", required=True, help="a golden set directory (with manifest.json)")
    parser.add_argument("--out", required=True, help="where to write the taps")
    parser.add_argument("--model", help="the model directory (default: the manifest's model.source)")
    parser.add_argument("--isolated", action="store_true", help="also write the isolated outputs under OUT/isolated/")
    parser.add_argument("--plant", choices=sorted(PLANTS), help="replace one function by a known bug")
    args = parser.parse_args()

    try:
        gs = GoldenSet(args.goldens)
        model_dir = args.model or gs.model_dir(REPO)
    except ValueError as e:
        sys.exit(str(e))
    try:
        params, hparams = gpt2.load(model_dir)
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"{model_dir}: cannot load a GPT-2 (config.json + model.safetensors): {type(e).__name__} {e}")
    check_model(gs, hparams, model_dir)
    if args.plant:
        plant(args.plant)

    writer = TapWriter(args.out, gs)
    chained = Recorder(writer)
    run_chained(gs, params, hparams, chained)
    refused = chained.refused
    summary(writer, f"{gs.name} chained")
    if args.isolated:
        isolated = Recorder(writer.isolated)
        run_isolated(gs, params, hparams, isolated)
        refused += isolated.refused
        summary(writer.isolated, f"{gs.name} isolated")
    print("03_kv_cache keys/values: this port has no KV cache (decode_logits are recomputed)")
    if refused:
        print(f"{len(refused)} taps refused (see above)")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
