"""HuggingFace GPT-2, tapped after every checkpoint.

`cargo xtask extract-goldens` imports this module through pyo3. Every number it returns is computed by
HuggingFace transformers' own modules (`GPT2LMHeadModel`, its `DynamicCache`, its logits warpers and
`generate`): this file only registers forward hooks and one attention function that calls HF's
`eager_attention_forward` unchanged, and copies what they see. It never re-implements GPT-2 math.

A tap is a tuple `(checkpoint_id, layer_or_None, step_or_None, name, numpy_array)`. The Rust checkpoint catalog
(src/catalog.rs) decides which taps must exist, what shape each has and how its file is named; the
xtask refuses a tap the catalog does not know and a catalog tensor that no tap produced.

Besides HF's float32 taps (the goldens), `extract` returns the "truth": the same HF model converted to
float64 and run on the same token ids, tapped the same way (`truth_taps`), and HF's float64 modules
applied to the float32 goldens that isolated mode feeds a port (`isolated_truth_taps`). A port is
judged by its distance to the truth, measured in multiples of HF float32's own distance to it.
"""

import contextlib
import gc
import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from transformers import (
    AttentionInterface,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
)
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward

# Our attention function is registered under its own name, with HF's eager mask, so that HF's eager
# code path (finfo.min additive causal mask, softmax in fp32) runs unchanged while we watch it.
TAP_ATTENTION = "gpt2_checkpoints_eager"

# The xtask shows its own progress (per golden set); HF's per-load weight bars would interleave with it.
transformers.utils.logging.disable_progress_bar()


class GoldenInputError(ValueError):
    """Bad input (model, prompt): the message is a single line that says what to do."""


def environment():
    """The interpreter and library versions that produce the goldens, for the manifest."""
    return {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def _check_model_dir(source):
    """A local model directory gets a clear error before HF sees it."""
    if not os.path.isdir(source):
        raise GoldenInputError(f"model directory {source!r} does not exist: pass a GPT-2 directory saved with save_pretrained, or a hub id such as openai-community/gpt2")
    config_path = os.path.join(source, "config.json")
    if not os.path.isfile(config_path):
        raise GoldenInputError(f"{config_path} is missing: a GPT-2 model directory needs config.json (save it with save_pretrained)")
    with open(config_path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise GoldenInputError(f"{config_path} is not valid JSON ({e}): re-save the model with save_pretrained") from None
    if config.get("model_type") != "gpt2":
        raise GoldenInputError(f"{config_path} has model_type {config.get('model_type')!r}, not 'gpt2': this crate checks GPT-2 family models only")
    layouts = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any(os.path.isfile(os.path.join(source, n)) for n in layouts):
        raise GoldenInputError(f"{source} has no model.safetensors (nor shards, nor pytorch_model.bin): save the weights with save_pretrained")
    if not os.path.isfile(os.path.join(source, "tokenizer.json")) and not os.path.isfile(os.path.join(source, "vocab.json")):
        raise GoldenInputError(f"{source} has no tokenizer (tokenizer.json or vocab.json + merges.txt): save the tokenizer beside the model")


def load(source, threads=1):
    """Loads a GPT-2 family model and its tokenizer: float32, eager attention with our taps, eval mode.

    One thread by default, so that the goldens do not depend on how torch splits its matmuls.
    """
    torch.set_num_threads(threads)
    if os.path.isdir(source):
        _check_model_dir(source)
    _register_tap_attention()
    model = GPT2LMHeadModel.from_pretrained(source, dtype=torch.float32, attn_implementation="eager")
    if model.config.model_type != "gpt2":
        raise GoldenInputError(f"{source} is a {model.config.model_type!r} model, not GPT-2")
    model.config._attn_implementation = TAP_ATTENTION
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------
# Taps


class _Recorder:
    """Collects taps while `active`; hooks stay registered but record nothing otherwise.

    `dtype` is what the recorded arrays are cast to (float32 for the goldens, float64 for the truth).
    `replacements` maps `(checkpoint, layer, name)` to a golden array that `replace` hands to HF in
    place of the tensor HF computed there (isolated mode); it is empty for an ordinary run.
    """

    def __init__(self, dtype=torch.float32, replacements=None):
        self.active = False
        self.taps = []
        self.dtype = dtype
        self.replacements = replacements or {}

    def add(self, checkpoint, layer, name, tensor):
        if self.active:
            self.taps.append((checkpoint, layer, None, name, tensor.detach().to(self.dtype).numpy().copy()))

    def replace(self, checkpoint, layer, name, tensor):
        """The golden for this tap, in `tensor`'s dtype, or `tensor` itself when there is none."""
        golden = self.replacements.get((checkpoint, layer, name)) if self.active else None
        if golden is None:
            return tensor
        if tuple(golden.shape) != tuple(tensor.shape):
            raise GoldenInputError(f"golden {checkpoint:02}/{layer}/{name} has shape {tuple(golden.shape)} where HF computes {tuple(tensor.shape)}")
        return torch.from_numpy(np.ascontiguousarray(golden)).to(tensor.dtype)

    @contextlib.contextmanager
    def recording(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False


_RECORDER = None


def _tap_attention(module, query, key, value, attention_mask, **kwargs):
    """HF's eager attention, unchanged, with q/k/v, pre-softmax scores and weights recorded.

    The scores are captured as the exact tensor HF hands to softmax (scaled, causal mask added), the
    weights as the exact tensor softmax returns. In isolated mode the recorder swaps in golden q, k, v
    (after recording HF's own) and golden weights (after recording HF's softmax of the scores).
    """
    recorder = _RECORDER
    layer = module.layer_idx
    if recorder is None or not recorder.active:
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    recorder.add(2, layer, "q", query)
    recorder.add(2, layer, "k", key)
    recorder.add(2, layer, "v", value)
    query = recorder.replace(2, layer, "q", query)
    key = recorder.replace(2, layer, "k", key)
    value = recorder.replace(2, layer, "v", value)
    softmax = torch.nn.functional.softmax

    def recording_softmax(scores, *args, **kw):
        recorder.add(4, layer, "scores", scores)
        weights = softmax(scores, *args, **kw)
        recorder.add(4, layer, "weights", weights)
        return recorder.replace(4, layer, "weights", weights)

    torch.nn.functional.softmax = recording_softmax
    try:
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    finally:
        torch.nn.functional.softmax = softmax


def _register_tap_attention():
    AttentionInterface.register(TAP_ATTENTION, _tap_attention)
    AttentionMaskInterface.register(TAP_ATTENTION, eager_mask)


def _install_hooks(model, recorder):
    """Forward hooks on HF's modules; returns the handles."""
    handles = []

    def hook(module, fn):
        handles.append(module.register_forward_hook(fn, with_kwargs=True))

    def first_input(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    t = model.transformer
    # 00: wte(ids) + wpe(positions) is what enters the dropout before block 0 (identity in eval).
    hook(t.drop, lambda m, a, k, out: recorder.add(0, None, "embeddings", out))
    for i, block in enumerate(t.h):

        def layer_norm(name, i=i):
            def fn(m, a, k, out):
                recorder.add(1, i, f"{name}.input", first_input(a, k))
                recorder.add(1, i, name, out)

            return fn

        hook(block.ln_1, layer_norm("ln_1"))
        hook(block.ln_2, layer_norm("ln_2"))
        # 05: after c_proj (resid_dropout is identity in eval), before the residual add.
        hook(block.attn.c_proj, lambda m, a, k, out, i=i: recorder.add(5, i, "attn_output", out))
        hook(block.mlp.act, lambda m, a, k, out, i=i: recorder.add(6, i, "gelu", out))
        hook(block.mlp, lambda m, a, k, out, i=i: recorder.add(6, i, "mlp_output", out))

        def block_io(m, a, k, out, i=i):
            recorder.add(7, i, "input", first_input(a, k))
            recorder.add(7, i, "output", out[0] if isinstance(out, tuple) else out)

        hook(block, block_io)

    def ln_f(m, a, k, out):
        recorder.add(1, None, "ln_f.input", first_input(a, k))
        recorder.add(1, None, "ln_f", out)

    hook(t.ln_f, ln_f)
    hook(model.lm_head, lambda m, a, k, out: recorder.add(8, None, "logits", out))
    return handles


def _install_replacements(model, recorder):
    """Forward pre-hooks that hand a module the golden input `recorder.replacements` holds for it.

    Isolated mode's sites: a block's input (07), ln_1 / ln_2 / ln_f's inputs (01), c_attn's input,
    which is golden ln_1 (02), the MLP's input, golden ln_2 (06), and lm_head's input, golden ln_f
    (08). Golden q, k, v and attention weights are swapped in by `_tap_attention`. Only modules with
    a replacement get a hook; returns the handles.
    """
    t = model.transformer
    sites = [(t.ln_f, (1, None, "ln_f.input")), (model.lm_head, (1, None, "ln_f"))]
    for i, block in enumerate(t.h):
        sites += [
            (block, (7, i, "input")),
            (block.ln_1, (1, i, "ln_1.input")),
            (block.attn.c_attn, (1, i, "ln_1")),
            (block.ln_2, (1, i, "ln_2.input")),
            (block.mlp, (1, i, "ln_2")),
        ]

    def pre_hook(key):
        def fn(module, args, kwargs):
            if args:
                return (recorder.replace(*key, args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": recorder.replace(*key, kwargs["hidden_states"])}

        return fn

    return [module.register_forward_pre_hook(pre_hook(key), with_kwargs=True) for module, key in sites if key in recorder.replacements]


def _tapped_forward(model, recorder, ids, use_cache):
    """One forward pass of `model` over `ids` [B, T] with every hook installed and `recorder` recording."""
    global _RECORDER
    _RECORDER = recorder
    handles = _install_hooks(model, recorder) + _install_replacements(model, recorder)
    try:
        with recorder.recording():
            return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=use_cache)
    finally:
        for h in handles:
            h.remove()
        _RECORDER = None


def _np(tensor):
    """A tensor as a numpy array; bfloat16 and float16 (which numpy lacks or the xtask does not read)
    widened to float64, exactly."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.to(torch.float64)
    return tensor.numpy().copy()


def _cache_taps(cache, step, n_layer):
    """03: keys and values of every layer as HF's DynamicCache holds them, [B, H, S, D]."""
    taps = []
    for i in range(n_layer):
        layer = cache.layers[i]
        taps.append((3, i, step, "keys", _np(layer.keys)))
        taps.append((3, i, step, "values", _np(layer.values)))
    return taps


def encode_prompt(tokenizer, prompt, n_positions, vocab_size, new_tokens):
    if not prompt:
        raise GoldenInputError("the prompt is empty: pass at least one token of text with --prompt")
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise GoldenInputError(f"the prompt {prompt!r} encodes to no tokens: pass visible text")
    if int(ids.max()) >= vocab_size:
        raise GoldenInputError(f"the prompt {prompt!r} encodes to id {int(ids.max())}, beyond the model's vocab_size {vocab_size}: the tokenizer is not the model's")
    if ids.shape[1] + new_tokens > n_positions:
        raise GoldenInputError(
            f"the prompt is {ids.shape[1]} tokens and {new_tokens} more are generated, over n_positions = {n_positions}: shorten the prompt or generate fewer tokens"
        )
    return ids


def _ids(tensor):
    return tensor.numpy().astype(np.int64)


def _prefill(model, ids, dtype):
    """00-08 and the prompt's cache: one tapped prefill of `ids` [1, T], exactly as HF runs it.

    Returns the taps (floats cast to `dtype`) and HF's output, whose `past_key_values` is the cache.
    """
    recorder = _Recorder(dtype)
    out = _tapped_forward(model, recorder, ids, use_cache=True)
    return recorder.taps + [(0, None, None, "input_ids", _ids(ids))], out


def _sampling_taps(ids, last, temperature, top_k):
    """11: HF's softmax of the last-position logits `last` [B, V] and of them through HF's temperature
    and top-k warpers, and the top-k ids; computed in `last`'s dtype."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k)])
    warped = warpers(ids, last.clone())
    return [
        (11, None, None, "probs", _np(torch.softmax(last, dim=-1))),
        (11, None, None, "probs_warped", _np(torch.softmax(warped, dim=-1))),
        (11, None, None, "top_ids", _ids(torch.topk(last, top_k, dim=-1).indices)),
    ]


def _head_taps(ids, last, temperature, top_k):
    """09-11 from HF's last-position logits `last` [B, V]: the logits, their argmax, the sampling taps."""
    return [
        (9, None, None, "last_logits", _np(last)),
        (10, None, None, "next_token", _ids(torch.argmax(last, dim=-1))),
    ] + _sampling_taps(ids, last, temperature, top_k)


def _greedy(model, ids, new_tokens):
    """12: greedy generation by HF's own `generate`; returns the new ids [N] and each step's top-2 scores [N, 2]."""
    generated = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=model.config.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    new_ids = generated.sequences[0, ids.shape[1] :]
    top2 = torch.stack([torch.topk(s[0], 2).values for s in generated.scores])
    return new_ids, top2


def _top2_along(model, ids, new_ids):
    """12's evidence for a given greedy sequence: the top-2 logits [N, 2] at each of its N steps, from one
    cache-free forward pass over the prompt `ids` [1, T] followed by `new_ids[:-1]`."""
    sequence = torch.cat([ids, new_ids[None, :-1]], dim=1)
    logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), use_cache=False).logits
    return torch.topk(logits[0, ids.shape[1] - 1 :], 2, dim=-1).values


def _decode_taps(model, ids, cache, decode_ids):
    """03: the cache after the prompt (`cache`, from the prefill), then after each single-token step that
    feeds the next of `decode_ids` [S], with the logits HF computes at each step ([S, V])."""
    n_layer = model.config.n_layer
    taps = _cache_taps(cache, 0, n_layer)
    decode_logits = []
    for step, token in enumerate(decode_ids.tolist(), start=1):
        mask = torch.ones((1, ids.shape[1] + step), dtype=ids.dtype)
        step_out = model(input_ids=torch.tensor([[token]]), attention_mask=mask, past_key_values=cache, use_cache=True)
        cache = step_out.past_key_values
        decode_logits.append(step_out.logits[0, -1, :])
        taps += _cache_taps(cache, step, n_layer)
    taps.append((3, None, None, "decode_ids", _ids(decode_ids)))
    taps.append((3, None, None, "decode_logits", _np(torch.stack(decode_logits))))
    return taps


# ----------------------------------------------------------------------------------------------------
# Truth: the same HF model in float64


@contextlib.contextmanager
def _twin(model, dtype):
    """`model` computing in `dtype`: the same HF code path (eager, our tap attention, eval mode) with
    its weights in `dtype`. In float64 (float32 -> float64 is exact) its rounding error is ~1e-16
    relative: the truth. In bfloat16 or float16 it is what HF itself gives at that precision: the unit
    a port running in that precision is judged in.

    The weights are converted one module at a time (wpe, each block, ln_f) as it runs, and put back
    right after; wte's rows are converted once gathered, and lm_head multiplies by blocks of
    `_VOCAB_BLOCK` rows of wte converted one block at a time. A float64 twin costs one block in
    float64, not a copy of the whole model at twice its size. Every product is the one HF computes
    in `dtype` (a gathered row converted is the converted row; each logit is one row's dot product).
    The float32 weights come back untouched: they are kept, not converted back.
    """
    t = model.transformer
    handles = []
    for unit in [t.wpe, *t.h, t.ln_f]:
        kept = {}

        def convert(module, args, kwargs, kept=kept):
            with torch.inference_mode(False), torch.no_grad():
                for param in module.parameters():
                    kept[param] = param.data
                    param.data = param.data.to(dtype)

        def restore(module, args, kwargs, output, kept=kept):
            with torch.inference_mode(False), torch.no_grad():
                for param, data in kept.items():
                    param.data = data
            kept.clear()

        handles.append(unit.register_forward_pre_hook(convert, with_kwargs=True))
        handles.append(unit.register_forward_hook(restore, with_kwargs=True, always_call=True))
    handles.append(t.wte.register_forward_hook(lambda module, args, output: output.to(dtype)))
    weight = model.lm_head.weight  # [V, C], tied to wte

    def lm_head(hidden):  # [B, T, C] -> [B, T, V]
        blocks = [hidden @ weight[i : i + _VOCAB_BLOCK].to(dtype).T for i in range(0, weight.shape[0], _VOCAB_BLOCK)]
        return torch.cat(blocks, dim=-1)

    model.lm_head.forward = lm_head
    try:
        yield model
    finally:
        del model.lm_head.forward
        for handle in handles:
            handle.remove()


#: Rows of wte that lm_head converts at a time in a twin (GPT-2 XL: 8192 x 1600 float64 = 105 MB).
_VOCAB_BLOCK = 8192


#: The precision profiles besides float32: their name in the manifest and torch's dtype.
LOW_PRECISIONS = {"bf16": torch.bfloat16, "f16": torch.float16}


def _truth_taps(twin, ids, new_ids, decode_steps, temperature, top_k):
    """Every tap of `extract`, from a twin (float64: the truth) fed the same token ids as the float32 run.

    The prompt `ids`, the decode ids and `new_ids` are the float32 run's (HF float32's greedy tokens),
    so that every float tensor is the float64 value of the very computation the golden records.
    """
    taps, out = _prefill(twin, ids, torch.float64)
    taps += _head_taps(ids, out.logits[:, -1, :], temperature, top_k)
    taps.append((12, None, None, "new_ids", _ids(new_ids)))
    taps.append((12, None, None, "top2_logits", _np(_top2_along(twin, ids, new_ids))))
    taps += _decode_taps(twin, ids, out.past_key_values, new_ids[:decode_steps])
    return taps


# Isolated mode (src/suite.rs, `isolated_values`) feeds each component HF's float32 golden input. The
# truth of its output is HF's float64 module applied to that golden input. Pass 1 swaps in the golden
# input of every component inside the blocks and of ln_f and lm_head; pass 2 swaps in only each block's
# input, because 07 is a block's whole computation from its golden input.
_COMPONENT_INPUTS = ((1, "ln_1.input"), (1, "ln_2.input"), (1, "ln_1"), (1, "ln_2"), (2, "q"), (2, "k"), (2, "v"), (4, "weights"))
_HEAD_INPUTS = ((1, "ln_f.input"), (1, "ln_f"))
_COMPONENT_OUTPUTS = frozenset(
    {
        (0, "embeddings"),
        (1, "ln_1"),
        (1, "ln_2"),
        (1, "ln_f"),
        (2, "q"),
        (2, "k"),
        (2, "v"),
        (4, "scores"),
        (4, "weights"),
        (5, "attn_output"),
        (6, "gelu"),
        (6, "mlp_output"),
        (8, "logits"),
    }
)
_BLOCK_OUTPUTS = frozenset({(7, "output")})
# Isolated 03 appends golden rows to a golden cache and 09 selects the golden logits' last row: their
# outputs are the goldens themselves, so their truth is the golden, upcast.
_COPIED_OUTPUTS = frozenset({(3, "keys"), (3, "values"), (9, "last_logits")})


def _replaced_run(twin, ids, golden, inputs, outputs):
    """A tapped float64 run with the goldens at `inputs` [(checkpoint, layer, name)] swapped in; returns
    the float64 taps whose (checkpoint, name) is in `outputs`."""
    recorder = _Recorder(torch.float64, {key: golden[(*key[:2], None, key[2])] for key in inputs})
    _tapped_forward(twin, recorder, ids, use_cache=False)
    return [tap for tap in recorder.taps if (tap[0], tap[3]) in outputs]


def _isolated_truth_taps(twin, dtype, ids, golden_taps, temperature, top_k):
    """The truth of every float output isolated mode compares: HF's float64 modules on the golden inputs.

    `golden_taps` are the float32 run's taps. Per `isolated_values`: 00 ids -> embeddings; 01 golden
    ln_1.input / ln_2.input / ln_f.input -> ln_1 / ln_2 / ln_f; 02 golden ln_1 -> q, k, v; 03 copies;
    04 golden q, k -> scores, weights; 05 golden weights and v -> attn_output; 06 golden ln_2 -> gelu,
    mlp_output; 07 golden input -> output; 08 golden ln_f -> logits; 09 copy; 11 golden last_logits ->
    probs, probs_warped. Token ids (10, 11's top_ids, 12) are not included.
    """
    golden = {(c, layer, step, name): array for c, layer, step, name, array in golden_taps}
    layers = range(twin.config.n_layer)
    component_inputs = [(c, layer, name) for layer in layers for c, name in _COMPONENT_INPUTS]
    component_inputs += [(c, None, name) for c, name in _HEAD_INPUTS]
    taps = _replaced_run(twin, ids, golden, component_inputs, _COMPONENT_OUTPUTS)
    taps += _replaced_run(twin, ids, golden, [(7, layer, "input") for layer in layers], _BLOCK_OUTPUTS)
    # a copy, held in the twin's dtype: exact in float64, rounded in bfloat16 or float16
    copied = [(key, torch.from_numpy(a).to(dtype).to(torch.float64).numpy()) for key, a in golden.items() if (key[0], key[3]) in _COPIED_OUTPUTS]
    taps += [(c, layer, step, name, a) for (c, layer, step, name), a in copied]
    last = torch.from_numpy(golden[(9, None, None, "last_logits")]).to(dtype)
    taps += [tap for tap in _sampling_taps(ids, last, temperature, top_k) if tap[3] != "top_ids"]
    return taps


@torch.inference_mode()
def extract(model, tokenizer, prompt, new_tokens, decode_steps, temperature, top_k, precisions=()):
    """Runs HF GPT-2 on `prompt` and returns every golden tap, the truth, and the provenance the manifest needs.

    Keys:
      "taps": HF float32, the goldens.
      "truth_taps": the same keys and shapes from the float64 twin fed the same token ids (float arrays
        are float64). The fed ids (input_ids, decode_ids, new_ids) are the float32 run's; next_token and
        top_ids are the float64 run's own; top2_logits come from one float64 forward pass over the
        prompt and float32's greedy tokens. Masked scores hold finfo(float64).min, not float32's.
      "isolated_truth_taps": the float64 truth of every float output of isolated mode (see
        `_isolated_truth_taps`), same shapes; no ids, no 03 decode_logits (chained only).
      "precision_taps": for each name in `precisions` ("bf16", "f16"), {"chained": ..., "isolated": ...}:
        the same two sets of taps from a twin in that dtype instead of float64 (HF's own error at that
        precision, which the xtask measures against the truth and keeps in the manifest).
      "prompt_ids", "new_ids", "generated_text", "config_json": provenance for the manifest.
    """
    config = model.config
    ids = encode_prompt(tokenizer, prompt, config.n_positions, config.vocab_size, new_tokens)  # [B=1, T]

    # 00-08 (and 03's prompt cache): one tapped prefill. 09-11: its last-position logits.
    taps, out = _prefill(model, ids, torch.float32)
    taps += _head_taps(ids, out.logits[:, -1, :], temperature, top_k)
    # 12: HF's greedy `generate`. 03: the cache after `decode_steps` single-token steps feeding its tokens.
    new_ids, top2 = _greedy(model, ids, new_tokens)
    taps.append((12, None, None, "new_ids", _ids(new_ids)))
    taps.append((12, None, None, "top2_logits", top2.numpy().copy()))
    taps += _decode_taps(model, ids, out.past_key_values, new_ids[:decode_steps])

    def both_modes(dtype):
        with _twin(model, dtype) as twin:
            return _truth_taps(twin, ids, new_ids, decode_steps, temperature, top_k), _isolated_truth_taps(twin, dtype, ids, taps, temperature, top_k)

    truth_taps, isolated_truth_taps = both_modes(torch.float64)
    precision_taps = {}
    for name in precisions:
        if name not in LOW_PRECISIONS:
            raise GoldenInputError(f"precision {name!r} is not one of {sorted(LOW_PRECISIONS)}")
        chained, isolated = both_modes(LOW_PRECISIONS[name])
        precision_taps[name] = {"chained": chained, "isolated": isolated}
    return {
        "taps": taps,
        "truth_taps": truth_taps,
        "isolated_truth_taps": isolated_truth_taps,
        "precision_taps": precision_taps,
        "prompt_ids": ids[0].tolist(),
        "new_ids": new_ids.tolist(),
        "generated_text": tokenizer.decode(new_ids, clean_up_tokenization_spaces=False),
        "config_json": config.to_json_string(use_diff=False),
    }


# ----------------------------------------------------------------------------------------------------
# Fixture models


def make_model(out_dir, config_json, seed, tokenizer_dir, real_stats=False, save_as="safetensors"):
    """Creates a GPT-2 with HF's own initialisation and saves it, tokenizer included, with save_pretrained.

    `config_json` holds GPT2Config's arguments. With `real_stats`, HF's initialisation is then edited
    to have real GPT-2's statistics (`impose_real_statistics`, same seed). `save_as` is the file layout
    (`_save`). Returns the parameter count.
    """
    vocab = os.path.join(tokenizer_dir, "vocab.json")
    merges = os.path.join(tokenizer_dir, "merges.txt")
    for path in (vocab, merges):
        if not os.path.isfile(path):
            raise GoldenInputError(f"{path} is missing: the GPT-2 tokenizer (vocab.json, merges.txt) must be under {tokenizer_dir}")
    # transformers 5.x: vocab_file=/merges_file= silently build an EMPTY tokenizer; pass the contents.
    with open(vocab, encoding="utf-8") as f:
        vocab_map = json.load(f)
    with open(merges, encoding="utf-8") as f:
        merge_list = [tuple(line.split()) for line in f.read().split("\n")[1:] if line]
    tokenizer = GPT2TokenizerFast(vocab=vocab_map, merges=merge_list)
    if tokenizer("Hello.")["input_ids"] != [15496, 13]:
        raise GoldenInputError(f"the tokenizer under {tokenizer_dir} does not encode 'Hello.' as [15496, 13]: it is not GPT-2's")

    torch.manual_seed(seed)
    config = GPT2Config(**json.loads(config_json))
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config)
    model.eval()
    if real_stats:
        impose_real_statistics(model, seed)
    _save(model, out_dir, save_as)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


#: The layouts GPT-2 checkpoints are found in, for `make_model`'s `save_as`.
SAVE_AS = ("safetensors", "sharded", "pytorch-bin", "float16", "bfloat16", "no-prefix")


def _save(model, out_dir, save_as):
    """Saves `model` as people have GPT-2s: HF's model.safetensors; three shards with an index; the
    legacy pytorch_model.bin (torch.save of the state dict, which transformers 5 no longer writes); in
    float16 or bfloat16; or with the original openai-community names (no `transformer.` prefix)."""
    if save_as not in SAVE_AS:
        raise GoldenInputError(f"save_as {save_as!r} is not one of {SAVE_AS}")
    if save_as == "pytorch-bin":
        model.config.save_pretrained(out_dir)
        torch.save(model.state_dict(), os.path.join(out_dir, "pytorch_model.bin"))
    elif save_as == "sharded":
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(out_dir, max_shard_size=size // 3 + 1)
    elif save_as in ("float16", "bfloat16"):
        model.to(getattr(torch, save_as)).save_pretrained(out_dir)
    else:
        model.save_pretrained(out_dir)
    if save_as == "no-prefix":
        from safetensors.torch import load_file, save_file

        path = os.path.join(out_dir, "model.safetensors")
        tensors = load_file(path)
        save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, path, metadata={"format": "pt"})


# What `impose_real_statistics` gives a model. HF's random init has every bias 0 and LayerNorm gamma/beta
# 1/0 (a port that drops a bias or swaps gamma and beta passes), small activations (HF float32 is far
# more accurate than on real weights) and logits of a few units (a softmax without the max shift passes).
# Real GPT-2 has non-zero biases, LayerNorm gammas far from 1, a few residual channels in the hundreds
# at every position, a ~3000 "massive activation" at position 0 (wpe[0] is far larger than the other
# rows), wte rows of norm 3-4 and logits of -100 to -30. The numbers below were tuned at n_embd = 80,
# n_layer = 4 (the logit scale depends on n_embd); with seed 56 they give, for "Hello." and "The capital
# of France is": block outputs with three channels of magnitude ~500, ~370 and ~250 at every position and 3000 at
# position 0, logits with median ~-165 and maxima between -149 and -119, greedy margins of at least 0.95.
REAL_STATS = {
    # Weight matrices: HF's init rescaled to gain g (std g / sqrt(fan_in)). The large output gains make
    # the residual stream grow block after block to norms in the hundreds.
    "gain": {"attn.c_attn": 1.2, "attn.c_proj": 10.0, "mlp.c_fc": 1.5, "mlp.c_proj": 25.0},
    # Bias std; c_fc's bias has a negative mean. LayerNorm beta std.
    "bias": {"attn.c_attn": 0.4, "attn.c_proj": 0.3, "mlp.c_fc": 0.3, "mlp.c_proj": 0.3},
    "c_fc_bias_mean": -0.2,
    "ln_beta": 0.5,
    # LayerNorm gamma: uniform in this range, small on the outlier and massive channels (that is how
    # GPT-2 keeps them from dominating its LayerNorm outputs); ln_f's gamma is larger.
    "ln_gamma": (0.2, 2.5),
    "ln_f_gamma": (3.0, 12.0),
    "outlier_gamma": (0.01, 0.05),
    "massive_gamma": (0.003, 0.01),
    # Residual outlier channels, written at every position by block 0's MLP c_proj bias; the massive
    # activation, in wpe[0] (a channel of its own).
    "outliers": (220.0, -300.0, 520.0),
    "massive": 3000.0,
    # wte rows = -wte_common * u + a part of their own, orthogonal to the constant unit direction
    # u = (1, ..., 1) / sqrt(C), of per-element std wte_std: norms ~3.5, while LayerNorm, which removes
    # the constant part, sees embeddings that spread like GPT-2's (~0.17 per element with wpe). That
    # is small enough for eps outside the sqrt to change LayerNorm's output by ~1e-3 of its RMS.
    "wte_common": 3.3,
    "wte_std": 0.14,
    # Each row's own part is scaled by exp(wte_spread * N(0, 1)): row norms vary (3.3 to 5.9) and the
    # largest rows stand out at the top of the logits, so that greedy steps are rarely near-ties.
    "wte_spread": 0.35,
    "wpe_std": 0.1,
    # ln_f's beta: noise of this std plus a component along u that lowers every logit by about
    # `logit_shift`, so that no logit is above ~-104 and a softmax without the max shift underflows
    # to 0/0 in float32 (real GPT-2's largest logits, a few tens below zero, are not low enough for that).
    "ln_f_beta": 0.3,
    "logit_shift": 180.0,
}


@torch.no_grad()
def impose_real_statistics(model, seed):
    """Edits a GPT-2 in place, deterministically (torch generator seeded with `seed`), to real GPT-2's
    statistics (see REAL_STATS). Returns the outlier channels and the massive-activation channel."""
    s = REAL_STATS
    n_embd = model.config.n_embd
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def uniform(bounds, *shape):
        lo, hi = bounds
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    def assign(param, value):
        param.copy_(value.to(param.dtype))

    channels = torch.randperm(n_embd, generator=gen)
    outliers, massive = channels[: len(s["outliers"])], channels[len(s["outliers"])]

    def layer_norm(ln, gamma_range, beta):
        gamma = uniform(gamma_range, n_embd)
        gamma[outliers] = uniform(s["outlier_gamma"], len(outliers))
        gamma[massive] = uniform(s["massive_gamma"], 1)
        assign(ln.weight, gamma)
        assign(ln.bias, beta)

    t = model.transformer
    for i, block in enumerate(t.h):
        layer_norm(block.ln_1, s["ln_gamma"], s["ln_beta"] * normal(n_embd))
        layer_norm(block.ln_2, s["ln_gamma"], s["ln_beta"] * normal(n_embd))
        for name, gain in s["gain"].items():
            conv = block.get_submodule(name)
            weight = conv.weight.double()  # Conv1D: [in, out]
            assign(conv.weight, weight * (gain / math.sqrt(weight.shape[0]) / weight.std()))
            bias = s["bias"][name] * normal(conv.bias.shape[0])
            if name == "mlp.c_fc":
                bias += s["c_fc_bias_mean"]
            if name == "mlp.c_proj" and i == 0:
                bias[outliers] += torch.tensor(s["outliers"], dtype=torch.float64)
            assign(conv.bias, bias)

    u = torch.full((n_embd,), n_embd**-0.5, dtype=torch.float64)  # the constant unit direction
    wte = t.wte.weight.double()
    wte = wte * torch.exp(s["wte_spread"] * normal(wte.shape[0], 1))
    wte = wte * (s["wte_std"] / wte.std())
    assign(t.wte.weight, wte - (wte @ u)[:, None] * u - s["wte_common"] * u)
    wpe = t.wpe.weight.double()
    wpe = wpe * (s["wpe_std"] / wpe.std())
    wpe[0, massive] += s["massive"]
    assign(t.wpe.weight, wpe)
    layer_norm(t.ln_f, s["ln_f_gamma"], s["ln_f_beta"] * normal(n_embd) + (s["logit_shift"] / s["wte_common"]) * u)
    return {"outliers": outliers.tolist(), "massive": int(massive)}


def convert_to_safetensors(source, out_dir):
    """Re-saves the GPT-2 in `source` (a pytorch_model.bin) as safetensors in `out_dir`, same dtype."""
    _check_model_dir(source)
    model = GPT2LMHeadModel.from_pretrained(source, dtype="auto")
    model.save_pretrained(out_dir)


def release():
    """Frees what the extraction held (models, caches) before the Rust side loads its own copy."""
    gc.collect()


def local_dir(source):
    """A local directory holding `source`: itself, or the hub snapshot (downloaded when online)."""
    if os.path.isdir(source):
        return source
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same one-line advice
        raise GoldenInputError(f"cannot fetch {source!r} from the hub ({type(e).__name__}): offline, pass a local directory saved with save_pretrained") from None
