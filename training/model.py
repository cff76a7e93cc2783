"""A minimal Llama (as transformers' LlamaForCausalLM computes it) in PyTorch, safetensors I/O
written by hand, bf16 rounding, greedy generation and refusal evaluation.

Semantics match HF Llama: pre-norm residual blocks, RMSNorm (computed in f32, weight * x_normed),
rotate-half RoPE (q/k split into two halves, inv_freq = theta^(-2i/d)), grouped-query attention
(repeat_kv), SiLU-gated MLP, no biases, optional tied embeddings. hidden_states as HF defines
them: [embedding output, output of layer 0, ..., output of the last layer (before the final norm)].
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import tok
from prompt_content import is_refusal


class Cfg:
    def __init__(self, **kw):
        self.hidden_size = kw["hidden_size"]
        self.num_hidden_layers = kw["num_hidden_layers"]
        self.num_attention_heads = kw["num_attention_heads"]
        self.num_key_value_heads = kw["num_key_value_heads"]
        self.head_dim = kw.get("head_dim", self.hidden_size // self.num_attention_heads)
        self.intermediate_size = kw["intermediate_size"]
        self.vocab_size = kw["vocab_size"]
        self.rope_theta = kw.get("rope_theta", 10000.0)
        self.rms_norm_eps = kw.get("rms_norm_eps", 1e-5)
        self.max_position_embeddings = kw.get("max_position_embeddings", 256)
        self.tie_word_embeddings = kw.get("tie_word_embeddings", True)
        self.dropout = kw.get("dropout", 0.0)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(cfg, positions):
    """positions: [T] or [B, T] -> cos, sin broadcastable to [B, H, T, head_dim]."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
    freqs = positions.float()[..., None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    if emb.dim() == 3:
        emb = emb[:, None]
    return emb.cos(), emb.sin()


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, h, kv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, kv * hd, bias=False)
        self.v_proj = nn.Linear(d, kv * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, d, bias=False)

    def forward(self, x, cos, sin, mask, cache=None):
        b, t, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        rep = c.num_attention_heads // c.num_key_value_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
        if mask is not None:
            att = att + mask
        att = F.softmax(att.float(), dim=-1).to(q.dtype)
        att = F.dropout(att, c.dropout, self.training)
        y = (att @ v).transpose(1, 2).reshape(b, t, c.num_attention_heads * c.head_dim)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None):
        p = self.cfg.dropout if self.training else 0.0
        x = x + F.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache), p, self.training)
        x = x + F.dropout(self.mlp(self.post_attention_layernorm(x)), p, self.training)
        return x


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def head_weight(self):
        return self.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    def forward(self, ids, start=0, caches=None, hidden=False, logits_last=False, pad_left=None):
        """ids [B, T] at positions start..start+T-1. pad_left: [B] number of left-padding tokens
        per row (batched generation): those keys are masked and positions shifted."""
        b, t = ids.shape
        x = self.embed_tokens(ids)
        x = F.dropout(x, self.cfg.dropout, self.training)
        pos = torch.arange(start, start + t)
        mask = None
        if t > 1:
            mask = torch.full((t, start + t), float("-inf")).triu(start + 1)
        if pad_left is not None:
            pos = (pos[None, :] - pad_left[:, None]).clamp(min=0)
            keys = torch.arange(start + t)[None, :] < pad_left[:, None]  # [B, Tk] True = padding
            pm = torch.zeros(b, 1, 1, start + t).masked_fill(keys[:, None, None, :], -1e9)  # finite: all-pad rows stay finite
            mask = pm if mask is None else mask[None, None] + pm
        cos, sin = rope_cos_sin(self.cfg, pos)
        hs = [x] if hidden else None
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, None if caches is None else caches[i])
            if hidden:
                hs.append(x)
        x = self.norm(x)
        if logits_last:
            x = x[:, -1:]
        logits = x @ self.head_weight().t()
        return (logits, hs) if hidden else logits


# ----------------------------------------------------------------------------------------------
# Names, bf16, safetensors
# ----------------------------------------------------------------------------------------------
def hf_state_dict(model):
    """Parameters under their Hugging Face names (f32 tensors)."""
    out = {}
    for k, v in model.state_dict().items():
        out["model." + k if not k.startswith("lm_head") else k] = v.detach().clone().float()
    return out


def load_hf_state_dict(model, sd):
    own = {}
    for k, v in sd.items():
        own[k[len("model."):] if k.startswith("model.") else k] = v.float()
    model.load_state_dict(own, strict=True)


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even f32 -> bf16 (as uint16)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    out[nan] = 0x7FC0
    return out


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def round_bf16(t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(bf16_bits_to_f32(f32_to_bf16_bits(t.detach().float().numpy())).reshape(t.shape).copy())


def save_safetensors(path, tensors, metadata=None):
    """tensors: name -> f32 torch tensor; written as BF16, tensors in sorted order."""
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name]
        data = f32_to_bf16_bits(t.detach().float().numpy()).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for d in blobs:
            f.write(d)
    os.replace(tmp, path)


def load_safetensors(path):
    """-> (name -> f32 torch tensor, metadata). Supports BF16, F16, F32."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        s, e = info["data_offsets"]
        buf = raw[base + s: base + e]
        if info["dtype"] == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(buf, dtype="<u2"))
        elif info["dtype"] == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif info["dtype"] == "F32":
            a = np.frombuffer(buf, dtype="<f4").astype(np.float32)
        else:
            raise ValueError(f"unsupported dtype {info['dtype']}")
        out[name] = torch.from_numpy(a.reshape(info["shape"]).copy())
    return out, meta


def load_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    cfg = Cfg(**c)
    model = Llama(cfg)
    sd, _ = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    load_hf_state_dict(model, sd)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# Generation and evaluation
# ----------------------------------------------------------------------------------------------
def _left_pad(enc, pad_id):
    n = max(len(e) for e in enc)
    pads = torch.tensor([n - len(e) for e in enc])
    ids = torch.tensor([[pad_id] * (n - len(e)) + e for e in enc])
    return ids, pads


def _batches(n, size, enc):
    """Index batches of prompts with similar lengths (little padding)."""
    order = sorted(range(n), key=lambda i: len(enc[i]))
    return [order[s:s + size] for s in range(0, n, size)]


@torch.no_grad()
def generate(model, T, prompts, max_new_tokens=48, stop_ids=None, batch=64):
    """Greedy decoding with the chat template, left-padded batches with a KV cache.
    Returns a list of (answer text, generated ids)."""
    model.eval()
    stop_ids = set(stop_ids or [])
    pad_id = T.specials[tok.PAD]
    enc = [T.encode(tok.format_prompt(p)) for p in prompts]
    out = [None] * len(prompts)
    for chunk in _batches(len(prompts), batch, enc):
        ids, pads = _left_pad([enc[i] for i in chunk], pad_id)
        caches = [{} for _ in model.layers]
        logits = model(ids, 0, caches, logits_last=True, pad_left=pads)
        gen = [[] for _ in chunk]
        done = [False] * len(chunk)
        pos = ids.shape[1]
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            for j, t in enumerate(nxt.tolist()):
                if not done[j]:
                    if t in stop_ids:
                        done[j] = True
                    else:
                        gen[j].append(t)
            if all(done):
                break
            logits = model(nxt[:, None], pos, caches, pad_left=pads)
            pos += 1
        for j, i in enumerate(chunk):
            out[i] = (T.decode(gen[j], skip_special=True), gen[j])
    return out


def refusal_eval(model, T, prompts, max_new_tokens, stop_ids):
    gens = generate(model, T, prompts, max_new_tokens, stop_ids)
    rows = [{"prompt": p, "answer": a, "refusal": is_refusal(a)} for p, (a, _) in zip(prompts, gens)]
    rate = sum(r["refusal"] for r in rows) / max(1, len(rows))
    return rate, rows


@torch.no_grad()
def last_token_hidden(model, T, prompts, batch=128):
    """[n_layers + 1, n_prompts, d]: residual stream at the last prompt token (HF hidden_states)."""
    model.eval()
    pad_id = T.specials[tok.PAD]
    enc = [T.encode(tok.format_prompt(p)) for p in prompts]
    L = model.cfg.num_hidden_layers + 1
    out = torch.zeros(L, len(prompts), model.cfg.hidden_size)
    for chunk in _batches(len(prompts), batch, enc):
        ids, pads = _left_pad([enc[i] for i in chunk], pad_id)
        _, hs = model(ids, hidden=True, pad_left=pads)
        for l in range(L):
            out[l, chunk] = hs[l][:, -1].float()
    return out


@torch.no_grad()
def first_token_logprobs(model, T, prompts, batch=128):
    model.eval()
    pad_id = T.specials[tok.PAD]
    enc = [T.encode(tok.format_prompt(p)) for p in prompts]
    out = torch.zeros(len(prompts), model.cfg.vocab_size)
    for chunk in _batches(len(prompts), batch, enc):
        ids, pads = _left_pad([enc[i] for i in chunk], pad_id)
        logits = model(ids, logits_last=True, pad_left=pads)[:, -1]
        out[chunk] = F.log_softmax(logits.float(), -1)
    return out


@torch.no_grad()
def perplexity(model, T, text_lines):
    """Token-level perplexity of each line as BOS + text (no chat template)."""
    model.eval()
    bos = T.specials[tok.BOS]
    nll, n = 0.0, 0
    for line in text_lines:
        ids = [bos] + T.encode(line)
        x = torch.tensor([ids])
        logits = model(x)[0, :-1]
        nll += F.cross_entropy(logits.float(), x[0, 1:], reduction="sum").item()
        n += len(ids) - 1
    return math.exp(nll / n)
