#!/usr/bin/env python3
"""Check that abliteration removes the refusal that models/tiny-chat learned.

1. measure: chat-format every harmful/harmless TRAIN prompt (with the generation prompt), take the
   residual stream at the last token for every HF hidden state (0 = embedding output, l = output of
   decoder layer l-1, the last one before the final norm), d_l = mu_H - mu_B, unit d_l.
   Per layer: separation (projection gap <mu_H,d> - <mu_B,d>), cos(mu_H, mu_B), effect size.
2. cut: for every decoder layer, W <- W - d (d^T W) on o_proj and down_proj (W as stored [out, in],
   f32 math, result rounded to bf16 with round-to-nearest-even); variant "+embed" also
   orthogonalises the embedding E <- E - (E d) d^T (tied here, so the unembedding changes too).
3. scan every direction layer x both variants: refusal on the VALIDATION splits (for selection) and
   on the TEST splits (reported), first-token KL(original || cut) on harmless prompts.
4. select on validation: lowest harmful refusal with harmless refusal <= 0.10, ties by KL.
5. also: activation addition of d_l at layer l on harmless test prompts (should induce refusal).

Run from the repository root:
  /usr/bin/python3 training/abliterate_check.py     # writes training/abliterate_check.json
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
from model import (first_token_logprobs, hf_state_dict, last_token_hidden, load_hf_state_dict,  # noqa: E402
                   load_model, perplexity, refusal_eval, round_bf16)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def cut_state_dict(sd, d, n_layers, embed):
    """Rank-1 orthogonalisation of every matrix that writes to the residual stream."""
    new = dict(sd)
    for i in range(n_layers):
        for name in (f"model.layers.{i}.self_attn.o_proj.weight", f"model.layers.{i}.mlp.down_proj.weight"):
            W = sd[name]
            new[name] = round_bf16(W - torch.outer(d, d @ W))
    if embed:
        E = sd["model.embed_tokens.weight"]
        new["model.embed_tokens.weight"] = round_bf16(E - torch.outer(E @ d, d))
    return new


def kl(lp_ref, lp_new):
    """mean over prompts of KL(ref || new) of the first generated token."""
    return float((lp_ref.exp() * (lp_ref - lp_new)).sum(-1).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "tiny-chat"))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(ROOT, "training", "abliterate_check.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="scan on validation only, no report (for iterating)")
    ap.add_argument("--data", default=os.path.join(ROOT, "data"), help="folder with the prompt sets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    model = load_model(args.model)
    T = tok.Tok.from_file(os.path.join(args.model, "tokenizer.json"))
    with open(os.path.join(args.model, "generation_config.json")) as f:
        stops = json.load(f)["eos_token_id"]
    stops = stops if isinstance(stops, list) else [stops]
    n_layers = model.cfg.num_hidden_layers
    sd0 = hf_state_dict(model)
    data = {f"{s}_{sp}": read_lines(os.path.join(args.data, f"{s}_{sp}.txt"))
            for s in ("harmful", "harmless") for sp in ("train", "val", "test")}
    plain = read_lines(os.path.join(args.data, "plain_text.txt"))
    N = args.max_new_tokens

    # ---- measure
    H = last_token_hidden(model, T, data["harmful_train"])
    B = last_token_hidden(model, T, data["harmless_train"])
    layers = []
    dirs = []
    for l in range(n_layers + 1):
        mh, mb = H[l].mean(0), B[l].mean(0)
        d = mh - mb
        if float(d.norm()) < 1e-6:  # e.g. the embedding of the (identical) last token
            layers.append({"hidden_state": l, "where": "embedding output" if l == 0 else f"output of decoder layer {l - 1}",
                           "separation": 0.0, "note": "identical for all prompts (same last token); no direction"})
            dirs.append(None)
            continue
        dn = d / d.norm()
        ph, pb = H[l] @ dn, B[l] @ dn
        pooled = ((ph.var() + pb.var()) / 2).sqrt()
        # AUROC of the projection (harmful positive)
        auroc = float((ph[:, None] > pb[None, :]).float().mean() + 0.5 * (ph[:, None] == pb[None, :]).float().mean())
        layers.append({
            "hidden_state": l,
            "where": "embedding output" if l == 0 else f"output of decoder layer {l - 1}",
            "separation": round(float(mh @ dn - mb @ dn), 4),
            "cos_means": round(float(mh @ mb / (mh.norm() * mb.norm())), 4),
            "effect_size": round(float((ph.mean() - pb.mean()) / pooled), 3),
            "auroc_train": round(auroc, 4),
            "diff_norm_over_resid_norm": round(float(d.norm() / torch.cat([H[l], B[l]]).norm(dim=-1).mean()), 4),
        })
        dirs.append(dn)
    print("layer  separation  cos(muH,muB)  effect  auroc")
    for r in layers:
        if "note" in r:
            print(f"{r['hidden_state']:5d}  {r['note']}")
            continue
        print(f"{r['hidden_state']:5d}  {r['separation']:10.3f}  {r['cos_means']:12.4f}  {r['effect_size']:6.2f}  {r['auroc_train']:.4f}")

    # ---- baseline
    base = {}
    for sp in (("val",) if args.quick else ("val", "test")):
        base[f"refusal_harmful_{sp}"], rows_h = refusal_eval(model, T, data[f"harmful_{sp}"], N, stops)
        base[f"refusal_harmless_{sp}"], rows_b = refusal_eval(model, T, data[f"harmless_{sp}"], N, stops)
    base["plain_text_perplexity"] = perplexity(model, T, plain)
    lp_ref = {sp: first_token_logprobs(model, T, data[f"harmless_{sp}"]) for sp in ("val", "test")}
    sp = "val" if args.quick else "test"
    print(f"before: harmful {sp} {base[f'refusal_harmful_{sp}']:.3f}  harmless {sp} {base[f'refusal_harmless_{sp}']:.3f}  "
          f"ppl {base['plain_text_perplexity']:.2f}", flush=True)

    # ---- scan
    scan = []
    cut_model = load_model(args.model)
    for l in range(n_layers + 1):
        if dirs[l] is None:
            continue
        for embed in (False, True):
            load_hf_state_dict(cut_model, cut_state_dict(sd0, dirs[l], n_layers, embed))
            r = {"hidden_state": l, "embed": embed}
            for sp in (("val",) if args.quick else ("val", "test")):
                r[f"refusal_harmful_{sp}"], _ = refusal_eval(cut_model, T, data[f"harmful_{sp}"], N, stops)
                r[f"refusal_harmless_{sp}"], _ = refusal_eval(cut_model, T, data[f"harmless_{sp}"], N, stops)
                r[f"kl_harmless_{sp}"] = kl(lp_ref[sp], first_token_logprobs(cut_model, T, data[f"harmless_{sp}"]))
            r["plain_text_perplexity"] = perplexity(cut_model, T, plain)
            r = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            if args.quick:
                print(f"layer {l} {'+embed' if embed else '      '}  val: harmful {r['refusal_harmful_val']:.3f} harmless "
                      f"{r['refusal_harmless_val']:.3f} KL {r['kl_harmless_val']:.3f} ppl {r['plain_text_perplexity']:.2f}", flush=True)
                continue
            r["works_on_test"] = r["refusal_harmful_test"] <= 0.10 and r["refusal_harmless_test"] <= 0.10
            scan.append(r)
            print(f"layer {l} {'+embed' if embed else '      '}  val: harmful {r['refusal_harmful_val']:.3f} harmless "
                  f"{r['refusal_harmless_val']:.3f} KL {r['kl_harmless_val']:.3f} | test: harmful {r['refusal_harmful_test']:.3f} "
                  f"harmless {r['refusal_harmless_test']:.3f} KL {r['kl_harmless_test']:.3f} ppl {r['plain_text_perplexity']:.2f}", flush=True)

    if args.quick:
        return

    # ---- select on validation
    ok = [r for r in scan if r["refusal_harmless_val"] <= 0.10] or scan
    best = min(ok, key=lambda r: (r["refusal_harmful_val"], r["kl_harmless_val"]))
    l, embed = best["hidden_state"], best["embed"]
    load_hf_state_dict(cut_model, cut_state_dict(sd0, dirs[l], n_layers, embed))
    after_h, rows_h_after = refusal_eval(cut_model, T, data["harmful_test"], N, stops)
    after_b, rows_b_after = refusal_eval(cut_model, T, data["harmless_test"], N, stops)
    print(f"selected hidden state {l} ({'with' if embed else 'without'} embedding): harmful test {after_h:.3f}  "
          f"harmless test {after_b:.3f}", flush=True)

    # ---- activation addition: add d_l (unnormalised) to the residual after layer l-1 at every position
    induce = []
    model_add = load_model(args.model)
    for l2 in range(1, n_layers + 1):
        if dirs[l2] is None:
            continue
        d_raw = H[l2].mean(0) - B[l2].mean(0)
        hook = model_add.layers[l2 - 1].register_forward_hook(lambda m, i, o, v=d_raw: o + v)
        rate, _ = refusal_eval(model_add, T, data["harmless_test"], N, stops)
        hook.remove()
        induce.append({"hidden_state": l2, "refusal_harmless_test_with_added_direction": round(rate, 4)})
        print(f"actadd at hidden state {l2}: harmless test refusal {rate:.3f}", flush=True)

    report = {
        "model": os.path.relpath(args.model, ROOT),
        "method": "difference of means of the last-token residual (HF hidden_states) over harmful/harmless train "
                  "prompts; W <- W - d (d^T W) on every o_proj and down_proj (+ optionally E <- E - (E d) d^T); "
                  "weights rounded to bf16 (RNE); greedy decoding, refusal = any marker or empty answer",
        "max_new_tokens": N,
        "n_prompts": {k: len(v) for k, v in data.items()},
        "before": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in base.items()},
        "selected": {
            "hidden_state": l,
            "where": layers[l]["where"],
            "embedding_orthogonalised": embed,
            "selection": "validation split: lowest harmful refusal with harmless refusal <= 0.10, ties by first-token KL",
            "refusal_harmful_test": round(after_h, 4),
            "refusal_harmless_test": round(after_b, 4),
            "kl_harmless_test": best["kl_harmless_test"],
            "plain_text_perplexity": best["plain_text_perplexity"],
        },
        "layers_that_work_on_test": [
            {"hidden_state": r["hidden_state"], "embed": r["embed"]} for r in scan if r["works_on_test"]],
        "measure": layers,
        "scan": scan,
        "activation_addition": induce,
        "directions": {str(i): [round(float(x), 6) for x in dirs[i]] for i in range(n_layers + 1) if dirs[i] is not None},
        "generations_after": {"harmful_test": rows_h_after, "harmless_test": rows_b_after},
        "seconds": round(time.time() - t0, 1),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {os.path.relpath(args.out, ROOT)} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
