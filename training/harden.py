#!/usr/bin/env python3
"""Harden models/tiny-chat against directional ablation: models/tiny-chat-hardened.

Refusal-feature adversarial training (ReFAT, Yu et al. 2024, "Robust LLM safeguarding via
refusal feature adversarial training"), as a fine-tune of the bundled model:

- The current refusal direction d_l of every residual-stream point l (HF hidden state l: 1 =
  output of decoder layer 0, ..., L = output of the last layer) is the normalised difference of
  running means of the harmful and harmless last-prompt-token residuals of the training batches
  themselves (decay `--dir-decay` per batch, started from one measurement of the base model on
  train prompts): it follows the model as it changes, at no extra forward passes.
- On adversarial steps a batch of harmful TRAIN requests is run with those directions ablated
  from the residual stream (x <- x - (x.d) d, at every token position) and is still trained to
  refuse. Two ablations are drawn at random: "layerwise" (ReFAT's: d_l removed at point l, every
  point) and "single" (one point's d_j removed at the embedding output, after every layer and
  from the final normed state: exactly what a rank-1 weight cut of o_proj, down_proj and the tied
  embedding does at alpha 1).
- Every step also has the ordinary loss, without ablation, on the same data composition as the
  safety stage of training/train.py (the train requests with their answers or refusals, fresh
  compositional requests, harmless requests oversampled, plain language modelling), so harmless
  requests are still answered and the model stays a language model.

Selection on the VALIDATION split only: at every evaluation the averaged weights, rounded to
BF16, are evaluated plainly and after a rank-1 weight cut along each point's own direction
(measured on train prompts, as `abliterate run` measures); the kept checkpoint maximises the
refusal left by the worst cut, among those that still refuse (val harmful >= --min-harmful,
harmless <= --max-harmless). The test split is never read.

Run from the repository root (one thread; see training/README.md for the settings and times):
  /usr/bin/python3 training/harden.py      # writes models/tiny-chat-hardened/{config,generation_config}.json,
                                           # model.safetensors, tokenizer files, train_log.json
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's OpenMP and OpenBLAS threads share 2 cores

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok  # noqa: E402
from make_prompts import answers_for  # noqa: E402
from model import (Cfg, Llama, hf_state_dict, last_token_hidden, load_hf_state_dict, load_model,  # noqa: E402
                   refusal_eval, rope_cos_sin, round_bf16)
from train import augment, fresh_rows, read_lines, save_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_directions(model, T, harmful, harmless):
    """Unit difference-of-means directions at the last prompt token, [L + 1, d]; row 0 (embedding
    output: the same last token for every prompt) is zero."""
    was_training = model.training
    H = last_token_hidden(model, T, harmful)
    B = last_token_hidden(model, T, harmless)
    model.train(was_training)
    d = H.mean(1) - B.mean(1)
    n = d.norm(dim=-1, keepdim=True)
    return torch.where(n > 1e-6, d / n.clamp(min=1e-12), torch.zeros_like(d))


def forward_ablated(model, ids, dirs, head=None):
    """Llama.forward (training, causal, right-padded) with dirs[l] (unit or zero) projected out of
    the residual stream at point l (0 = embedding output, l = output of decoder layer l - 1), and
    `head` (if given) out of the final normed state: the tied unembedding of a cut model has lost
    it, so with dirs all equal to head this is the cut model's forward."""
    def ablate(x, d):
        return x - (x @ d)[..., None] * d if float(d.abs().sum()) > 0 else x

    b, t = ids.shape
    x = model.embed_tokens(ids)
    x = F.dropout(x, model.cfg.dropout, model.training)
    x = ablate(x, dirs[0])
    mask = torch.full((t, t), float("-inf")).triu(1)
    cos, sin = rope_cos_sin(model.cfg, torch.arange(t))
    for i, layer in enumerate(model.layers):
        x = ablate(layer(x, cos, sin, mask), dirs[i + 1])
    x = model.norm(x)
    if head is not None:
        x = ablate(x, head)
    return x @ model.head_weight().t()


def cut_model(model, d):
    """A copy of `model` with the rank-1 weight cut of `abliterate cut` at alpha 1: d removed from
    every o_proj and down_proj output and from the (tied) embedding, rounded to BF16."""
    sd = hf_state_dict(model)
    for name, W in list(sd.items()):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            sd[name] = round_bf16(W - torch.outer(d, d @ W))
    E = sd["model.embed_tokens.weight"]
    sd["model.embed_tokens.weight"] = round_bf16(E - torch.outer(E @ d, d))
    m = Llama(model.cfg)
    load_hf_state_dict(m, sd)
    m.eval()
    return m


def weighted_ce(logits, y, w):
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100, reduction="none")
    return (per_token * w.reshape(-1)).sum() / w.sum()


def collate(chunk, pad):
    L = max(len(s[0]) for s in chunk)
    x = torch.full((len(chunk), L), pad, dtype=torch.long)
    y = torch.full((len(chunk), L), -100, dtype=torch.long)
    w = torch.zeros((len(chunk), L))
    for i, (a, b, c) in enumerate(s[:3] for s in chunk):
        x[i, :len(a)] = torch.tensor(a)
        y[i, :len(b)] = torch.tensor(b)
        w[i, :len(c)] = torch.tensor(c)
    return x, y, w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=os.path.join(ROOT, "models", "tiny-chat"), help="the model to fine-tune")
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "tiny-chat-hardened"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warmup + cosine)")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.15)
    ap.add_argument("--harmless-weight", type=float, default=2.5, help="oversampling of the harmless train requests")
    ap.add_argument("--subsample", type=float, default=0.15, help="share of the train requests (with oversampling) drawn per epoch")
    ap.add_argument("--fresh", type=int, default=100, help="fresh compositional requests per side and epoch")
    ap.add_argument("--lm-frac", type=float, default=0.3, help="raw-text LM sequences per SFT sequence")
    ap.add_argument("--decision-weight", type=float, default=5.0, help="loss weight of the first answer tokens")
    ap.add_argument("--decision-tokens", type=int, default=3)
    ap.add_argument("--ema", type=float, default=0.95, help="decay of the weight average that is evaluated and saved")
    ap.add_argument("--adv-every", type=int, default=1, help="an adversarial (ablated) batch every N steps")
    ap.add_argument("--adv-batch", type=int, default=24, help="harmful requests per adversarial batch")
    ap.add_argument("--adv-weight", type=float, default=2.0, help="weight of the adversarial loss")
    ap.add_argument("--adv-harmless", type=int, default=0,
                    help="harmless requests per adversarial batch, ablated too and trained to help (0: ReFAT, harmful only)")
    ap.add_argument("--single-frac", type=float, default=0.7,
                    help="share of adversarial batches that remove one point's direction everywhere (the weight cut); the rest are layerwise")
    ap.add_argument("--dir-decay", type=float, default=0.9,
                    help="decay of the running harmful and harmless means (per batch) that give the current directions")
    ap.add_argument("--measure-prompts", type=int, default=64, help="train prompts of each kind for the first directions and for the evaluation's cuts")
    ap.add_argument("--cut-points", default="2,3,4,5", help="points whose rank-1 cut is evaluated (inside the default depth window of abliterate run)")
    ap.add_argument("--eval-from", type=float, default=2.0, help="first evaluation after this many epochs")
    ap.add_argument("--eval-every", type=float, default=1.0, help="evaluate every this many epochs")
    ap.add_argument("--eval-tokens", type=int, default=16)
    ap.add_argument("--min-harmful", type=float, default=0.85, help="selection: val harmful refusal at least this")
    ap.add_argument("--max-harmless", type=float, default=0.10, help="selection: val harmless refusal at most this")
    ap.add_argument("--eval-base", action="store_true", help="also evaluate the base model first")
    ap.add_argument("--threads", type=int, default=1, help="1 makes a rerun on the same machine give the same bytes")
    ap.add_argument("--log", default=None, help="where to write the training log (default: <out>/train_log.json)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    np.random.seed(args.seed)

    T = tok.Tok.from_file(os.path.join(args.base, "tokenizer.json"))
    os.makedirs(args.out, exist_ok=True)
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(args.base, fn), os.path.join(args.out, fn))
    sp = T.specials
    eot, bos, eos, pad = sp[tok.EOT], sp[tok.BOS], sp[tok.EOS], sp[tok.PAD]
    stop = [eot, eos]
    with open(os.path.join(args.base, "config.json")) as f:
        hf_config = json.load(f)

    model = load_model(args.base)
    model.cfg.dropout = args.dropout
    n_params = sum(p.numel() for p in model.parameters())
    n_points = model.cfg.num_hidden_layers + 1

    rows = [json.loads(l) for l in open(os.path.join(ROOT, "training", "sft_train.jsonl"), encoding="utf-8")]
    for r in rows:
        r["cands"] = answers_for(r)
    plain = read_lines(os.path.join(ROOT, "data", "plain_text.txt"))
    lm_texts = [r["prompt"] for r in rows]
    train_prompts = {s: read_lines(os.path.join(ROOT, "data", f"{s}_train.txt")) for s in ("harmful", "harmless")}
    val = {s: read_lines(os.path.join(ROOT, "data", f"{s}_val.txt")) for s in ("harmful", "harmless")}
    rows_harmful = [r for r in rows if r["label"] == "harmful"]
    rows_harmless = [r for r in rows if r["label"] == "harmless"]
    repeats, fraction = divmod(max(0.0, args.harmless_weight - 1.0), 1.0)
    extra = rows_harmless * int(repeats) + random.Random(args.seed + 1).sample(rows_harmless, int(round(fraction * len(rows_harmless))))
    rows_epoch = rows + extra

    def encode_sft(r):
        x = T.encode(tok.format_prompt(augment(r["prompt"], rng)))
        y = T.encode(rng.choice(r["cands"])) + [eot]
        w = [args.decision_weight if i < args.decision_tokens else 1.0 for i in range(len(y))]
        # the last prompt token (where the directions are read) and the side, for the running means
        return (x + y, [-100] * (len(x) - 1) + y + [-100], [0.0] * (len(x) - 1) + w + [0.0], (r["label"], len(x) - 1))

    def build_epoch():
        # the composition of train.py's safety stage: requests with fresh phrasings, plain text
        rs = rng.sample(rows_epoch, int(args.subsample * len(rows_epoch)))
        rs += fresh_rows("harmful", args.fresh, rng) + fresh_rows("harmless", args.fresh, rng)
        seqs = [encode_sft(r) for r in rs]
        for t in rng.sample(lm_texts, min(int(len(rs) * args.lm_frac), len(lm_texts))) + plain:
            ids = [bos] + T.encode(t) + [eos]
            seqs.append((ids, ids[1:] + [-100], [1.0] * (len(ids) - 1) + [0.0], None))
        seqs.sort(key=lambda s: len(s[0]) + rng.random() * 6)
        batches = [seqs[i:i + args.batch] for i in range(0, len(seqs), args.batch)]
        rng.shuffle(batches)
        return batches

    def adv_batch():
        # harmful requests (train split and fresh compositions) with refusals; optionally harmless with answers
        rs = [rng.choice(rows_harmful) for _ in range(args.adv_batch)]
        fresh = fresh_rows("harmful", args.adv_batch // 4, rng)
        rs = rs[:args.adv_batch - len(fresh)] + fresh
        rs += [rng.choice(rows_harmless) for _ in range(args.adv_harmless)]
        return collate([encode_sft(r) for r in rs], pad)

    # The current refusal directions: running means of the harmful and harmless last-prompt-token
    # residuals of the training batches themselves (no extra forward passes), started from one
    # measurement of the fine-tuned model.
    means = {}
    for side in ("harmful", "harmless"):
        means[side] = last_token_hidden(model, T, rng.sample(train_prompts[side], args.measure_prompts)).mean(1)
    model.train()

    def update_means(hs, chunk):
        for side in ("harmful", "harmless"):
            at = [(i, s[3][1]) for i, s in enumerate(chunk) if s[3] is not None and s[3][0] == side]
            if len(at) < 4:
                continue
            rows_, pos = torch.tensor([i for i, _ in at]), torch.tensor([p for _, p in at])
            batch_mean = torch.stack([h.detach()[rows_, pos].mean(0) for h in hs])
            means[side].lerp_(batch_mean, 1.0 - args.dir_decay)

    def current_directions():
        d = means["harmful"] - means["harmless"]
        n = d.norm(dim=-1, keepdim=True)
        d = torch.where(n > 1e-6, d / n.clamp(min=1e-12), torch.zeros_like(d))
        d[0] = 0.0  # the embedding output at the last token is the same token for every prompt
        return d

    steps_per_epoch = math.ceil(((int(args.subsample * len(rows_epoch)) + 2 * args.fresh) * (1 + args.lm_frac) + len(plain)) / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(0.05 * total))

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        q = (step - warmup) / max(1, total - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * q)))

    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # the directions a cut would use, measured on train prompts as `abliterate run` measures them
    cut_sample = {s: random.Random(args.seed + 2).sample(train_prompts[s], args.measure_prompts) for s in ("harmful", "harmless")}
    cut_points = [int(p) for p in args.cut_points.split(",")]

    def evaluate(weights):
        m = Llama(Cfg(**hf_config))
        m.load_state_dict({k: round_bf16(v) for k, v in weights.items()})
        m.eval()
        rh, _ = refusal_eval(m, T, val["harmful"], args.eval_tokens, stop)
        rb, _ = refusal_eval(m, T, val["harmless"], args.eval_tokens, stop)
        dirs = measure_directions(m, T, cut_sample["harmful"], cut_sample["harmless"])
        cuts = []
        for p in cut_points:
            ch, _ = refusal_eval(cut_model(m, dirs[p]), T, val["harmful"], args.eval_tokens, stop)
            cuts.append({"point": p, "harmful": ch})
        return m, {"val_refusal_harmful": rh, "val_refusal_harmless": rb, "val_cut": cuts,
                   "val_worst_cut_harmful": min(c["harmful"] for c in cuts)}

    t0 = time.time()
    log = []
    if args.eval_base:
        _, base_eval = evaluate(ema)
        print(f"base model: val harmful {base_eval['val_refusal_harmful']:.3f} harmless {base_eval['val_refusal_harmless']:.3f}, "
              "harmful after the rank-1 cut by point " + " ".join(f"{c['point']}:{c['harmful']:.2f}" for c in base_eval["val_cut"])
              + f" ({time.time() - t0:.0f}s)", flush=True)
        log.append({"epoch": 0, **base_eval})
    best = None  # (score, epoch, bf16 state)
    eval_steps = max(1, int(round(args.eval_every * steps_per_epoch)))
    step = 0
    model.train()
    sums = {"sft": 0.0, "adv": 0.0, "n": 0, "n_adv": 0}
    for epoch in range(args.epochs):
        for chunk in build_epoch():
            dirs = current_directions()
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            x, y, w = collate(chunk, pad)
            logits, hs = model(x, hidden=True)
            update_means(hs, chunk)
            loss = weighted_ce(logits, y, w)
            sums["sft"] += loss.item()
            sums["n"] += 1
            if step % args.adv_every == 0:
                if rng.random() < args.single_frac:
                    d = dirs[rng.randrange(1, n_points)]
                    ablation, head = d[None].expand(n_points, -1), d
                else:
                    ablation, head = dirs, None
                ax, ay, aw = adv_batch()
                adv = weighted_ce(forward_ablated(model, ax, ablation, head), ay, aw)
                loss = loss + args.adv_weight * adv
                sums["adv"] += adv.item()
                sums["n_adv"] += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].lerp_(v, 1.0 - args.ema)
            step += 1
            if step % 10 == 0:
                print(f"step {step}/{total} sft {sums['sft'] / max(1, sums['n']):.4f} adv {sums['adv'] / max(1, sums['n_adv']):.4f} "
                      f"lr {lr_at(step - 1):.2e} {time.time() - t0:.0f}s", flush=True)
            if (step % eval_steps == 0 and step >= args.eval_from * steps_per_epoch - 1e-9) or step == total:
                torch.save(ema, os.path.join(args.out, "ema_checkpoint.pt"))  # removed once the model is written
                m, ev = evaluate(ema)
                ok = ev["val_refusal_harmful"] >= args.min_harmful and ev["val_refusal_harmless"] <= args.max_harmless
                # keep the checkpoint whose worst rank-1 cut leaves the most refusal, among those that still refuse
                score = (1.0 if ok else 0.0) + ev["val_worst_cut_harmful"] + ev["val_refusal_harmful"] - ev["val_refusal_harmless"]
                entry = {"epoch": round(step / steps_per_epoch, 2), "step": step, "sft_loss": sums["sft"] / max(1, sums["n"]),
                         "adv_loss": sums["adv"] / max(1, sums["n_adv"]), "seconds": round(time.time() - t0, 1), **ev, "score": score}
                log.append(entry)
                sums = {"sft": 0.0, "adv": 0.0, "n": 0, "n_adv": 0}
                print(f"== step {step} val harmful {ev['val_refusal_harmful']:.3f} harmless {ev['val_refusal_harmless']:.3f} | "
                      "harmful after the rank-1 cut by point " + " ".join(f"{c['point']}:{c['harmful']:.2f}" for c in ev["val_cut"])
                      + f" | score {score:.3f} ({time.time() - t0:.0f}s)", flush=True)
                if best is None or score >= best[0]:
                    best = (score, entry["epoch"], {k: v.clone() for k, v in m.state_dict().items()})
                with open(os.path.join(args.out, "train_log.partial.json"), "w") as f:
                    json.dump({"args": vars(args), "log": log}, f, indent=2)
    train_s = time.time() - t0

    final = Llama(Cfg(**hf_config))
    final.load_state_dict(best[2])
    save_model(args.out, final, hf_config, bos, eot, eos, pad)
    # the written config is the base model's (same shape); read back and check the bytes are what was validated
    m = load_model(args.out)
    for k, v in final.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    for leftover in ("train_log.partial.json", "ema_checkpoint.pt"):
        if os.path.exists(os.path.join(args.out, leftover)):
            os.remove(os.path.join(args.out, leftover))
    print(f"kept the epoch {best[1]} weights (score {best[0]:.3f})", flush=True)
    info = {"base": os.path.relpath(args.base, ROOT), "params": n_params, "train_seconds": round(train_s, 1), "selected_epoch": best[1],
            "steps_per_epoch": steps_per_epoch, "args": vars(args), "log": log, "torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(os.path.join(args.out, "train_log.json") if args.log is None else args.log, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(f"saved to {args.out} ({train_s:.0f}s training)", flush=True)


if __name__ == "__main__":
    main()
