"""HF side of `cargo xtask bench`: times GPT2LMHeadModel exactly as the Rust side is timed.

Prompt ids i -> (i * 7919 + 13) % vocab_size. prefill T (8, 128, 512): a fresh forward of T tokens with the cache
on, logits of the last position only. decode: after an 8-token prefill, 64 greedy steps with the KV
cache; ms per step. Median of --runs runs after one warm-up. Peak RSS is this process's VmHWM.
Prints one JSON object.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import GPT2LMHeadModel


def prompt_ids(n, vocab):
    return torch.tensor([[(i * 7919 + 13) % vocab for i in range(n)]])


def peak_rss_mb():
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def median_ms(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        times.append(fn())
    return statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--attn", choices=["eager", "sdpa"], required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = GPT2LMHeadModel.from_pretrained(args.model, dtype=torch.float32, attn_implementation=args.attn)
    model.eval()
    vocab = model.config.vocab_size

    def prefill(n):
        ids = prompt_ids(n, vocab)

        def run():
            start = time.perf_counter()
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
            return time.perf_counter() - start

        return run

    def decode():
        ids = prompt_ids(8, vocab)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(args.new_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        return (time.perf_counter() - start) / args.new_tokens

    with torch.inference_mode():
        result = {
            "prefill_8_ms": median_ms(prefill(8), args.runs),
            "prefill_128_ms": median_ms(prefill(128), args.runs),
            "prefill_512_ms": median_ms(prefill(512), args.runs),
            "decode_ms_per_token": median_ms(decode, args.runs),
        }
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
