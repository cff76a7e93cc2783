#!/usr/bin/python3
"""The same work as abliterate's measure step and greedy decode, in PyTorch on the CPU.

Run by bench/compare.ts (use Debian's /usr/bin/python3 with python3-torch). Reads a Hugging Face
Llama-family model folder with a minimal safetensors reader (no safetensors/transformers packages):
weights in their file dtype are upcast to float32, and a minimal Llama forward (RMSNorm, RoPE with
llama3 scaling, grouped-query attention, SiLU-gated MLP, tied embeddings) runs in float32.

Input (--job, JSON): {"measure": [[ids], ...], "batch": B, "decode": [ids], "new_tokens": N}.
Output: JSON on stdout with timings and the decoded ids; the last-token residual of every measured
prompt at every point (embedding, then the output of each layer) as float32
[prompts, layers + 1, hidden] in --hidden-out.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch


def read_safetensors(path):
    """Tensors of one safetensors file as float32 torch tensors."""
    out = {}
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=base)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            raw = data[start:end]
            dtype = info["dtype"]
            if dtype == "BF16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                values = bits.view(np.float32)
            elif dtype == "F16":
                values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
            elif dtype == "F32":
                values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            else:
                raise SystemExit(f"{path}: unsupported dtype {dtype} for {name}")
            out[name] = torch.from_numpy(values.reshape(info["shape"]).copy())
    return out


def load_weights(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for file in files:
        weights.update(read_safetensors(os.path.join(folder, file)))
    return weights


def rope_inv_freq(cfg, head_dim):
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = torch.where(medium, smoothed, scaled)
    elif kind == "linear":
        inv = inv / scaling["factor"]
    elif kind not in (None, "default"):
        raise SystemExit(f"unsupported rope_scaling {scaling}")
    return inv.to(torch.float32)


class Llama:
    def __init__(self, folder):
        with open(os.path.join(folder, "config.json")) as f:
            self.cfg = cfg = json.load(f)
        self.w = load_weights(folder)
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads", self.heads)
        self.head_dim = cfg.get("head_dim") or self.hidden // self.heads
        self.layers = cfg["num_hidden_layers"]
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.inv_freq = rope_inv_freq(cfg, self.head_dim)
        self.lm_head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        if any(name.endswith("_proj.bias") for name in self.w):
            raise SystemExit("projection biases (Qwen2) are not supported by this comparison")

    def norm(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def rope(self, x, positions):
        # x [B, heads, T, D]; positions [B, T]; "rotate half" as Hugging Face.
        angles = positions.to(torch.float32)[..., None] * self.inv_freq
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]
        half = self.head_dim // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(self, ids, positions, mask, cache=None, keep_hidden=False):
        """ids, positions [B, T]; mask [B, 1, T, S] additive; cache: per layer (k, v) of earlier positions."""
        w = self.w
        x = w["model.embed_tokens.weight"][ids]
        hidden = [x] if keep_hidden else None
        new_cache = []
        B, T = ids.shape
        for l in range(self.layers):
            p = f"model.layers.{l}."
            h = self.norm(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self.rope(q, positions), self.rope(k, positions)
            if cache is not None:
                k = torch.cat((cache[l][0], k), dim=2)
                v = torch.cat((cache[l][1], v), dim=2)
            new_cache.append((k, v))
            rep = self.heads // self.kv_heads
            kk = k.repeat_interleave(rep, dim=1)
            vv = v.repeat_interleave(rep, dim=1)
            scores = (q @ kk.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
            att = torch.softmax(scores, dim=-1) @ vv
            att = att.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)
            x = x + att @ w[p + "self_attn.o_proj.weight"].T
            h = self.norm(x, w[p + "post_attention_layernorm.weight"])
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
            if keep_hidden:
                hidden.append(x)
        return x, hidden, new_cache

    def logits(self, x_last):
        return self.norm(x_last, self.w["model.norm.weight"]) @ self.lm_head.T


def causal_mask(lengths, T, S=None, offset=0):
    """Additive mask [B, 1, T, S]: query t (position offset + t) sees keys <= it within its sequence's length."""
    S = S or T
    q = torch.arange(T)[:, None] + offset
    k = torch.arange(S)[None, :]
    allowed = (k <= q)[None] & (k[None] < torch.tensor(lengths)[:, None, None])
    return torch.where(allowed, 0.0, float("-inf"))[:, None]


def measure(model, prompts, batch):
    """Last-token residual of every prompt at every point, batched with right padding."""
    out = np.zeros((len(prompts), model.layers + 1, model.hidden), dtype=np.float32)
    for first in range(0, len(prompts), batch):
        part = prompts[first : first + batch]
        lengths = [len(p) for p in part]
        T = max(lengths)
        ids = torch.zeros((len(part), T), dtype=torch.long)
        for i, p in enumerate(part):
            ids[i, : len(p)] = torch.tensor(p)
        positions = torch.arange(T)[None].expand(len(part), T)
        _, hidden, _ = model.forward(ids, positions, causal_mask(lengths, T), keep_hidden=True)
        last = torch.tensor(lengths) - 1
        rows = torch.arange(len(part))
        for point, h in enumerate(hidden):
            out[first : first + len(part), point] = h[rows, last].numpy()
    return out


def greedy(model, prompt, new_tokens):
    ids = torch.tensor([prompt])
    T = len(prompt)
    x, _, cache = model.forward(ids, torch.arange(T)[None], causal_mask([T], T))
    tokens = [int(model.logits(x[:, -1]).argmax(-1))]
    for step in range(1, new_tokens):
        position = T + step - 1
        mask = torch.zeros((1, 1, 1, position + 1))
        x, _, cache = model.forward(torch.tensor([[tokens[-1]]]), torch.tensor([[position]]), mask, cache)
        tokens.append(int(model.logits(x[:, -1]).argmax(-1)))
    return tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--hidden-out", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.job) as f:
        job = json.load(f)
    with torch.inference_mode():
        start = time.perf_counter()
        model = Llama(args.model)
        load_s = time.perf_counter() - start
        # Warm-up of both paths on a short input (allocator, thread pool), then the timed runs.
        measure(model, job["measure"][:1], 1)
        greedy(model, job["decode"], 2)
        start = time.perf_counter()
        hidden = measure(model, job["measure"], job["batch"])
        measure_s = time.perf_counter() - start
        start = time.perf_counter()
        tokens = greedy(model, job["decode"], job["new_tokens"])
        decode_s = time.perf_counter() - start
    hidden.tofile(args.hidden_out)
    json.dump(
        {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_s": load_s,
            "measure_s": measure_s,
            "decode_s": decode_s,
            "tokens": tokens,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
