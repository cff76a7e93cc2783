#!/usr/bin/env python3
"""Evaluate models/tiny-chat: greedy generations on the test splits, refusal rates, perplexity.

Refusal = any refusal marker (case-insensitive, curly apostrophe normalised) or an empty answer.
The model is loaded from its bf16 safetensors (what the engine will load).

Run from the repository root:
  /usr/bin/python3 training/evaluate.py          # writes training/eval_before.json
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok  # noqa: E402
from model import load_model, perplexity, refusal_eval  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def stop_ids(model_dir):
    with open(os.path.join(model_dir, "generation_config.json")) as f:
        e = json.load(f)["eos_token_id"]
    return e if isinstance(e, list) else [e]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "tiny-chat"))
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(ROOT, "training", "eval_before.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=os.path.join(ROOT, "data"), help="folder with the prompt sets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    model = load_model(args.model)
    T = tok.Tok.from_file(os.path.join(args.model, "tokenizer.json"))
    stops = stop_ids(args.model)
    report = {"model": os.path.relpath(args.model, ROOT), "split": args.split, "max_new_tokens": args.max_new_tokens,
              "decoding": "greedy, chat template with generation prompt, stop at " + str(stops)}
    for side in ("harmful", "harmless"):
        prompts = read_lines(os.path.join(args.data, f"{side}_{args.split}.txt"))
        rate, rows = refusal_eval(model, T, prompts, args.max_new_tokens, stops)
        report[f"refusal_rate_{side}"] = round(rate, 4)
        report[f"n_{side}"] = len(prompts)
        report[f"generations_{side}"] = rows
        print(f"{side} {args.split}: refusal rate {rate:.3f} ({sum(r['refusal'] for r in rows)}/{len(rows)})", flush=True)
    ppl = perplexity(model, T, read_lines(os.path.join(args.data, "plain_text.txt")))
    report["plain_text_perplexity"] = round(ppl, 3)
    report["seconds"] = round(time.time() - t0, 1)
    # put the summary first
    keys = ["model", "split", "max_new_tokens", "decoding", "refusal_rate_harmful", "refusal_rate_harmless",
            "n_harmful", "n_harmless", "plain_text_perplexity", "seconds", "generations_harmful", "generations_harmless"]
    report = {k: report[k] for k in keys}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"plain-text perplexity {ppl:.2f}; wrote {os.path.relpath(args.out, ROOT)} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
