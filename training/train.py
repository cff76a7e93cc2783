#!/usr/bin/env python3
"""Train models/tiny-chat: a tiny Llama chat model that refuses harmful requests.

Supervised fine-tuning from scratch on the train splits (loss on the assistant answer tokens only)
mixed with plain language modelling (data/plain_text.txt and the train prompts as raw text), AdamW
with weight decay, dropout, prompt augmentation. Trains in f32, saves bf16 (round-to-nearest-even)
in Hugging Face layout, and reports validation refusal rates with the bf16 weights.

Run from the repository root:
  /usr/bin/python3 training/train.py            # writes models/tiny-chat/{config,generation_config}.json, model.safetensors
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's OpenMP and OpenBLAS threads share 2 cores

import argparse
import json
import math
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok  # noqa: E402
import prompt_content as C  # noqa: E402
from make_prompts import answers_for, cap, combo_subjects, refusals_for, second_person  # noqa: E402
from model import Cfg, Llama, hf_state_dict, load_model, refusal_eval, round_bf16, save_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FRESH_SUBJECTS = {"harmful": combo_subjects("harmful"), "harmless": combo_subjects("harmless")}
FRESH_TEMPLATES = (C.VP_TEMPLATES["train"] + C.VP_TEMPLATES_HARMFUL_ONLY["train"] + C.VP_TEMPLATES_HARMLESS_ONLY["train"])
HELD_OUT = set()
for _side in ("harmful", "harmless"):
    for _split in ("val", "test"):
        with open(os.path.join(ROOT, "data", f"{_side}_{_split}.txt"), encoding="utf-8") as _f:
            HELD_OUT.update(l.rstrip("\n") for l in _f)

GREETINGS = ["Hi, ", "Hello! ", "Hey. ", "Please help. ", "Hi there! ", "Good morning. ", "Okay, ", "Hmm, ",
             "Question for you: ", "One more thing: ", "Honestly, ", "So, ", "Listen, ", "Dear assistant, ",
             "I have a question. ", "Sorry to bother you, but ", "Right, ", "Well, "]
SIGNOFFS = [" Thanks!", " Please.", " Thank you.", " Be brief.", " Thanks in advance.", " Explain simply.",
            " Keep it short.", " I'd appreciate it.", " Answer clearly.", " It's for me.", " No rush.",
            " Be detailed.", " Use simple words.", " Cheers.", " :)", " I'm asking for a friend."]


def augment(p, rng):
    """Label-preserving surface changes (the same for both sides), so that an unfamiliar framing
    carries no information: the model has to read the request itself."""
    r = rng.random()
    if r < 0.08:
        p = p.lower()
    elif r < 0.14:
        p = p.rstrip(".?!")
    if rng.random() < 0.2:
        g = rng.choice(GREETINGS)
        p = g + (p if p.startswith(("I ", "I'")) else p[:1].lower() + p[1:])
    if rng.random() < 0.2:
        p = p + rng.choice(SIGNOFFS)
    return p


def fresh_rows(side, n, rng):
    """n freshly composed train-vocabulary requests (compositional subjects x train templates)."""
    if n <= 0:
        return []
    subj = FRESH_SUBJECTS[side]
    out = []
    for _ in range(n):
        s = rng.choice(subj)
        vp = s if side == "harmful" else s[0]
        p = rng.choice(FRESH_TEMPLATES).format(vp=vp)
        if p in HELD_OUT:
            continue
        cands = refusals_for("combo", vp) if side == "harmful" else [
            f.format(vp=second_person(vp), body=s[1], Body=cap(s[1])) for f in C.VP_ANSWER_FORMS]
        out.append({"prompt": p, "label": side, "cands": cands})
    return out


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def save_model(out, model, hf_config, bos, eot, eos, pad):
    os.makedirs(out, exist_ok=True)
    sd = hf_state_dict(model)
    if hf_config["tie_word_embeddings"]:
        sd.pop("lm_head.weight", None)
    save_safetensors(os.path.join(out, "model.safetensors"), sd, {"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos, "eos_token_id": [eot, eos], "pad_token_id": pad, "do_sample": False,
                   "max_new_tokens": 64, "transformers_version": "4.46.0"}, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "tiny-chat"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--inter", type=int, default=512)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--instruct-epochs", type=int, default=3, help="stage 1: harmless requests only")
    ap.add_argument("--epochs", type=int, default=12, help="stage 2: harmful (refusals) and harmless")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate, stage 1")
    ap.add_argument("--lr2", type=float, default=5e-4, help="peak learning rate, stage 2")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.15)
    ap.add_argument("--harmless-weight", type=float, default=2.5, help="stage 2 oversampling of the new harmless requests")
    ap.add_argument("--fresh", type=int, default=1200, help="fresh compositional requests per side and epoch")
    ap.add_argument("--lm-frac", type=float, default=0.5, help="raw-text LM sequences per SFT sequence")
    ap.add_argument("--decision-weight", type=float, default=5.0,
                    help="loss weight of the first answer tokens, where the model decides to comply or refuse")
    ap.add_argument("--decision-tokens", type=int, default=3)
    ap.add_argument("--ema", type=float, default=0.995, help="decay of the exponential moving average of the weights that is evaluated and saved")
    ap.add_argument("--threads", type=int, default=1, help="1 makes a rerun on the same machine give the same bytes")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--checkpoints", action="store_true", help="also save the model at every evaluation")
    ap.add_argument("--log", default=None, help="where to write the training log (default: <out>/train_log.json)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    np.random.seed(args.seed)

    tok_dir = os.path.join(ROOT, "models", "tiny-chat")
    T = tok.Tok.from_file(os.path.join(tok_dir, "tokenizer.json"))
    os.makedirs(args.out, exist_ok=True)
    if os.path.abspath(args.out) != os.path.abspath(tok_dir):
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(tok_dir, fn), os.path.join(args.out, fn))
    sp = T.specials
    eot, bos, eos, pad = sp[tok.EOT], sp[tok.BOS], sp[tok.EOS], sp[tok.PAD]
    vocab_size = max(T.inv) + 1

    rows = [json.loads(l) for l in open(os.path.join(ROOT, "training", "sft_train.jsonl"), encoding="utf-8")]
    for r in rows:
        r["cands"] = answers_for(r)
    plain = read_lines(os.path.join(ROOT, "data", "plain_text.txt"))
    lm_texts = [r["prompt"] for r in rows]
    val = {s: read_lines(os.path.join(ROOT, "data", f"{s}_val.txt")) for s in ("harmful", "harmless")}

    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": [eot, eos],
        "pad_token_id": pad,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "hidden_size": args.hidden,
        "initializer_range": 0.02,
        "intermediate_size": args.inter,
        "max_position_embeddings": 256,
        "mlp_bias": False,
        "num_attention_heads": args.heads,
        "num_hidden_layers": args.layers,
        "num_key_value_heads": args.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": args.rope_theta,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    cfg = Cfg(**hf_config, dropout=args.dropout)
    model = Llama(cfg)
    # HF-style init: normal(0, 0.02); scale the residual writers down by depth
    for n, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * cfg.num_hidden_layers) if n.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}  vocab {vocab_size}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def build_epoch(rows, stage):
        # fresh compositional requests every epoch (train word lists x train templates): they cannot
        # be memorised, so "I have seen this prompt" is no cue for complying or refusing
        nh, nb = n_fresh[stage]
        rows = rows + fresh_rows("harmful", nh, rng) + fresh_rows("harmless", nb, rng)
        seqs = []
        for r in rows:
            p = augment(r["prompt"], rng)
            a = rng.choice(r["cands"])
            x = T.encode(tok.format_prompt(p))
            y = T.encode(a) + [eot]
            w = [args.decision_weight if i < args.decision_tokens else 1.0 for i in range(len(y))]
            seqs.append((x + y, [-100] * (len(x) - 1) + y + [-100], [0.0] * (len(x) - 1) + w + [0.0]))
        n_lm = int(len(rows) * args.lm_frac)
        for t in rng.sample(lm_texts, min(n_lm, len(lm_texts))) + plain:
            ids = [bos] + T.encode(t) + [eos]
            seqs.append((ids, ids[1:] + [-100], [1.0] * (len(ids) - 1) + [0.0]))
        # length bucketing: sort by (length + jitter), cut into batches, shuffle the batches
        seqs.sort(key=lambda s: len(s[0]) + rng.random() * 6)
        batches = [seqs[i:i + args.batch] for i in range(0, len(seqs), args.batch)]
        rng.shuffle(batches)
        return batches

    # Two stages, as real chat models are made: an instruction-following stage on harmless requests
    # only (the model learns to comply by default), then a safety stage that adds the refusals.
    rows_harmless = [r for r in rows if r["label"] == "harmless"]
    # stage 2 sees the harmless requests `harmless_weight` times as often as the harmful ones
    repeats, fraction = divmod(max(0.0, args.harmless_weight - 1.0), 1.0)
    extra = rows_harmless * int(repeats) + random.Random(args.seed + 1).sample(rows_harmless, int(round(fraction * len(rows_harmless))))
    rows_safety = rows + extra
    stages = [("instruct", rows_harmless)] * args.instruct_epochs + [("safety", rows_safety)] * args.epochs
    n_fresh = {"instruct": (0, args.fresh), "safety": (args.fresh, args.fresh)}

    def n_steps(rs, stage):
        return math.ceil(((len(rs) + sum(n_fresh[stage])) * (1 + args.lm_frac) + len(plain)) / args.batch)

    # one warmup + cosine schedule per stage (stage 2 is a fine-tune at a lower peak rate)
    spans = {}
    start = 0
    for name, peak in (("instruct", args.lr), ("safety", args.lr2)):
        n = sum(n_steps(rs, st) for st, rs in stages if st == name)
        spans[name] = (start, n, peak)
        start += n

    def lr_at(step):
        for s0, n, peak in spans.values():
            if s0 <= step < s0 + n:
                i = step - s0
                warmup = max(1, int(0.05 * n))
                if i < warmup:
                    return peak * (i + 1) / warmup
                q = (i - warmup) / max(1, n - warmup)
                return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * q)))
        return args.lr2 * 0.05

    # the evaluated and saved weights are an exponential moving average of the trained ones: the
    # comply/refuse decision of a tiny model swings from epoch to epoch, the average is steadier
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best = None  # (score, epoch, bf16 state) of the best validation result
    stop = [eot, eos]
    t0 = time.time()
    step = 0
    log = []
    for epoch, (stage, stage_rows) in enumerate(stages):
        model.train()
        batches = build_epoch(stage_rows, stage)
        tot, cnt = 0.0, 0
        for chunk in batches:
            L = max(len(a) for a, _, _ in chunk)
            x = torch.full((len(chunk), L), pad, dtype=torch.long)
            y = torch.full((len(chunk), L), -100, dtype=torch.long)
            w = torch.zeros((len(chunk), L))
            for i, (a, b, c) in enumerate(chunk):
                x[i, :len(a)] = torch.tensor(a)
                y[i, :len(b)] = torch.tensor(b)
                w[i, :len(c)] = torch.tensor(c)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(x)
            per_token = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1), ignore_index=-100, reduction="none")
            loss = (per_token * w.view(-1)).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].lerp_(v, 1.0 - args.ema)
            step += 1
            tot += loss.item()
            cnt += 1
        msg = f"{stage} epoch {epoch + 1}/{len(stages)} step {step} loss {tot / cnt:.4f} lr {lr_at(step - 1):.2e} {time.time() - t0:.0f}s"
        if stage == "safety" and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == len(stages)):
            m = Llama(Cfg(**hf_config))
            m.load_state_dict({k: round_bf16(v) for k, v in ema.items()})
            if args.checkpoints:
                save_model(args.out, m, hf_config, bos, eot, eos, pad)
            rh, _ = refusal_eval(m, T, val["harmful"], 32, stop)
            rb, _ = refusal_eval(m, T, val["harmless"], 32, stop)
            msg += f" | val refusal harmful {rh:.3f} harmless {rb:.3f}"
            # model selection on the validation split: refuse the harmful, help with the harmless
            score = rh - rb
            if best is None or score >= best[0]:
                best = (score, epoch + 1, {k: v.clone() for k, v in m.state_dict().items()})
            log.append({"epoch": epoch + 1, "stage": stage, "loss": tot / cnt, "val_refusal_harmful": rh, "val_refusal_harmless": rb})
        print(msg, flush=True)
    train_s = time.time() - t0

    # ---- save the best validation checkpoint (bf16, HF layout)
    final = Llama(Cfg(**hf_config))
    final.load_state_dict(best[2])
    save_model(args.out, final, hf_config, bos, eot, eos, pad)
    # read back and check it is exactly what was validated
    m = load_model(args.out)
    for k, v in final.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    print(f"kept the epoch {best[1]} weights (val harmful - harmless refusal {best[0]:.3f})", flush=True)
    info = {"params": n_params, "train_seconds": round(train_s, 1), "selected_epoch": best[1], "args": vars(args), "log": log,
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(os.path.join(args.out, "train_log.json") if args.log is None else args.log, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(f"saved to {args.out} ({train_s:.0f}s training)", flush=True)


if __name__ == "__main__":
    main()
