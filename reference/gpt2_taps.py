"""HuggingFace GPT-2, tapped after every checkpoint.

`cargo xtask extract-goldens` imports this module through pyo3. Every number it returns is computed by
HuggingFace transformers' own modules (`GPT2LMHeadModel`, its `DynamicCache`, its logits warpers and
`generate`): this file only registers forward hooks and one attention function that calls HF's
`eager_attention_forward` unchanged, and copies what they see. It never re-implements GPT-2 math.

A tap is a tuple `(checkpoint_id, layer_or_None, step_or_None, name, numpy_array)`. The Rust checkpoint catalog
(src/catalog.rs) decides which taps must exist, what shape each has and how its file is named; the
xtask refuses a tap the catalog does not know and a catalog tensor that no tap produced.
"""

import contextlib
import json
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
    weights = [n for n in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(source, n))]
    if not weights:
        raise GoldenInputError(f"{source} has no model.safetensors (or pytorch_model.bin): save the weights with save_pretrained")
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
    """Collects taps while `active`; hooks stay registered but record nothing otherwise."""

    def __init__(self):
        self.active = False
        self.taps = []

    def add(self, checkpoint, layer, name, tensor):
        if self.active:
            self.taps.append((checkpoint, layer, None, name, tensor.detach().to(torch.float32).numpy().copy()))

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

    The scores are captured as the exact tensor HF hands to softmax (scaled, causal mask added).
    """
    recorder = _RECORDER
    layer = module.layer_idx
    if recorder is None or not recorder.active:
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    recorder.add(2, layer, "q", query)
    recorder.add(2, layer, "k", key)
    recorder.add(2, layer, "v", value)
    softmax = torch.nn.functional.softmax

    def recording_softmax(scores, *args, **kw):
        recorder.add(4, layer, "scores", scores)
        return softmax(scores, *args, **kw)

    torch.nn.functional.softmax = recording_softmax
    try:
        attn_output, attn_weights = eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    finally:
        torch.nn.functional.softmax = softmax
    recorder.add(4, layer, "weights", attn_weights)
    return attn_output, attn_weights


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


def _cache_taps(cache, step, n_layer):
    """03: keys and values of every layer as HF's DynamicCache holds them, [B, H, S, D]."""
    taps = []
    for i in range(n_layer):
        layer = cache.layers[i]
        taps.append((3, i, step, "keys", layer.keys.detach().numpy().copy()))
        taps.append((3, i, step, "values", layer.values.detach().numpy().copy()))
    return taps


def encode_prompt(tokenizer, prompt, n_positions, new_tokens):
    if not prompt:
        raise GoldenInputError("the prompt is empty: pass at least one token of text with --prompt")
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise GoldenInputError(f"the prompt {prompt!r} encodes to no tokens: pass visible text")
    if ids.shape[1] + new_tokens > n_positions:
        raise GoldenInputError(
            f"the prompt is {ids.shape[1]} tokens and {new_tokens} more are generated, over n_positions = {n_positions}: shorten the prompt or generate fewer tokens"
        )
    return ids


@torch.inference_mode()
def extract(model, tokenizer, prompt, new_tokens, decode_steps, temperature, top_k):
    """Runs HF GPT-2 on `prompt` and returns every golden tap plus the provenance the manifest needs."""
    global _RECORDER
    config = model.config
    ids = encode_prompt(tokenizer, prompt, config.n_positions, new_tokens)  # [B=1, T]
    mask = torch.ones_like(ids)

    recorder = _Recorder()
    _RECORDER = recorder
    handles = _install_hooks(model, recorder)
    try:
        # Checkpoints 00-08 (and 03's prompt cache): one tapped prefill, exactly as HF runs it.
        with recorder.recording():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    finally:
        for h in handles:
            h.remove()
        _RECORDER = None
    taps = recorder.taps
    taps.append((0, None, None, "input_ids", ids.numpy().astype(np.int64)))

    # 09-11: HF's last-position logits, its argmax, and its sampling distributions.
    last = out.logits[:, -1, :]  # [B, V]
    taps.append((9, None, None, "last_logits", last.numpy().copy()))
    taps.append((10, None, None, "next_token", torch.argmax(last, dim=-1).numpy().astype(np.int64)))
    taps.append((11, None, None, "probs", torch.softmax(last, dim=-1).numpy().copy()))
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k)])
    warped = warpers(ids, last.clone())
    taps.append((11, None, None, "probs_warped", torch.softmax(warped, dim=-1).numpy().copy()))
    taps.append((11, None, None, "top_ids", torch.topk(last, top_k, dim=-1).indices.numpy().astype(np.int64)))

    # 12: greedy generation by HF's own `generate`, with the top-2 scores of every step.
    generated = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=config.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    new_ids = generated.sequences[0, ids.shape[1] :]  # [N]
    top2 = torch.stack([torch.topk(s[0], 2).values for s in generated.scores])  # [N, 2]
    taps.append((12, None, None, "new_ids", new_ids.numpy().astype(np.int64)))
    taps.append((12, None, None, "top2_logits", top2.numpy().copy()))

    # 03: the cache after the prompt, then after each of `decode_steps` single-token steps that feed
    # the greedy tokens, with the logits HF computes at each step.
    cache = out.past_key_values
    taps += _cache_taps(cache, 0, config.n_layer)
    decode_ids = new_ids[:decode_steps]
    decode_logits = []
    for step, token in enumerate(decode_ids.tolist(), start=1):
        mask = torch.ones((1, ids.shape[1] + step), dtype=ids.dtype)
        step_out = model(input_ids=torch.tensor([[token]]), attention_mask=mask, past_key_values=cache, use_cache=True)
        cache = step_out.past_key_values
        decode_logits.append(step_out.logits[0, -1, :])
        taps += _cache_taps(cache, step, config.n_layer)
    taps.append((3, None, None, "decode_ids", decode_ids.numpy().astype(np.int64)))
    taps.append((3, None, None, "decode_logits", torch.stack(decode_logits).numpy().copy()))

    return {
        "taps": taps,
        "prompt_ids": ids[0].tolist(),
        "new_ids": new_ids.tolist(),
        "generated_text": tokenizer.decode(new_ids, clean_up_tokenization_spaces=False),
        "config_json": config.to_json_string(use_diff=False),
    }


# ----------------------------------------------------------------------------------------------------
# Fixture models


def make_model(out_dir, config_json, seed, tokenizer_dir):
    """Creates a GPT-2 with HF's own initialisation and saves it, tokenizer included, with save_pretrained.

    `config_json` holds GPT2Config's arguments; returns the parameter count.
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
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def local_dir(source):
    """A local directory holding `source`: itself, or the hub snapshot (downloaded when online)."""
    if os.path.isdir(source):
        return source
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same one-line advice
        raise GoldenInputError(f"cannot fetch {source!r} from the hub ({type(e).__name__}): offline, pass a local directory saved with save_pretrained") from None
