"""Independent check of the committed goldens, with no hooks and none of gpt2_taps.py.

For every golden set under fixtures/goldens, loads the model with a plain
`GPT2LMHeadModel.from_pretrained` (default attention, nothing registered) and checks that
  - the tokenizer gives the manifest's prompt ids,
  - `model(ids).logits` is as close to the float64 truth (truth/08_logits.logits.npy) as 08's limit
    in fixtures/tolerances.yaml allows a port to be: factor x HF float32's own error + floor, errors
    relative to each row's RMS (CHECKPOINTS.md),
  - `model.generate(do_sample=False)` gives 12_generation.new_ids exactly.
So the goldens are HF's own numbers, not artefacts of the tapping. Exits non-zero on any mismatch.
Run from the repository root: .venv/bin/python reference/independent_check.py
"""

import glob
import json
import os
import sys

import numpy as np
import torch
import yaml
from transformers import AutoTokenizer, GPT2LMHeadModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    torch.set_num_threads(1)
    with open(os.path.join(ROOT, "fixtures", "tolerances.yaml"), encoding="utf-8") as f:
        limit = yaml.safe_load(f)["08_logits"]
    factor, floor = float(limit["factor"]), float(limit["floor"])
    manifests = sorted(glob.glob(os.path.join(ROOT, "fixtures", "goldens", "*", "*", "manifest.json")))
    if not manifests:
        print("no golden sets under fixtures/goldens: run `cargo xtask extract-goldens`")
        return 1
    passed = failed = 0
    models = {}
    for path in manifests:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        set_dir = os.path.dirname(path)
        name = os.path.relpath(set_dir, os.path.join(ROOT, "fixtures", "goldens"))
        source = manifest["model"]["source"]
        local = os.path.join(ROOT, source)
        source = local if os.path.isdir(local) else source
        if source not in models:
            model = GPT2LMHeadModel.from_pretrained(source, dtype=torch.float32)
            model.eval()
            models[source] = (model, AutoTokenizer.from_pretrained(source))
        model, tokenizer = models[source]
        ids = torch.tensor([manifest["prompt"]["ids"]])
        problems = []
        if tokenizer(manifest["prompt"]["text"])["input_ids"] != manifest["prompt"]["ids"]:
            problems.append("tokenizer ids differ from the manifest's")
        with torch.inference_mode():
            logits = model(ids).logits.numpy()
            generated = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=manifest["generation"]["new_tokens"],
                min_new_tokens=manifest["generation"]["new_tokens"],
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )[0, ids.shape[1] :].tolist()
        golden = np.load(os.path.join(set_dir, "08_logits.logits.npy")).astype(np.float64)
        truth = np.load(os.path.join(set_dir, "truth", "08_logits.logits.npy")).astype(np.float64)
        rms = np.sqrt(np.mean(truth**2, axis=-1, keepdims=True))
        hf_error = float(np.max(np.abs(golden - truth) / rms))
        error = float(np.max(np.abs(logits.astype(np.float64) - truth) / rms))
        allowed = factor * hf_error + floor
        diff = error / hf_error if hf_error > 0 else 0.0
        if not error <= allowed:
            problems.append(f"08 logits are {error:.2e} of a row's RMS from the truth, over {allowed:.2e} ({factor}x the golden's {hf_error:.2e} + {floor:.0e})")
        golden_ids = np.load(os.path.join(set_dir, "12_generation.new_ids.npy")).tolist()
        if generated != golden_ids:
            problems.append(f"generate() gives {generated}, the golden has {golden_ids}")
        if problems:
            failed += 1
            print(f"FAIL {name}: " + "; ".join(problems))
        else:
            passed += 1
            print(f"ok   {name}: logits {diff:.2f}x the golden's own error from the truth (limit {factor}x), {len(golden_ids)} generated ids equal")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
