"""Byte-level BPE tokenizer (GPT-2 / Llama-3 style), trainer and encoder, plus the chat format.

The encoder reproduces what `tokenizer.json` (ByteLevel pre-tokenizer with the GPT-2 regex, BPE
model, ByteLevel decoder, no post-processor) does in Hugging Face tokenizers and in the npm package
@huggingface/tokenizers: special tokens are split off first, each remaining piece is split with the
GPT-2 pattern
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
(implemented by hand below, since the `regex` module is unavailable), mapped to byte-level unicode,
and merged by rank.
"""
import json
import re
import unicodedata
from collections import Counter

# ----------------------------------------------------------------------------------------------
# Chat format (Phi-3 style). The template adds BOS; the tokenizer adds nothing.
# ----------------------------------------------------------------------------------------------
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
EOT = "<|end|>"
PAD = "<|pad|>"
RESERVED = "<|reserved_0|>"
SPECIALS = [BOS, EOS, USER, ASSISTANT, SYSTEM, EOT, PAD, RESERVED]

# The Jinja literals use the escape sequence backslash-n (as Llama-3's template does).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def format_prompt(prompt: str) -> str:
    """The string the chat template renders for one user message with add_generation_prompt."""
    return f"{BOS}{USER}\n{prompt}{EOT}\n{ASSISTANT}\n"


# ----------------------------------------------------------------------------------------------
# Pre-tokenizer: GPT-2 pattern, JavaScript `u`-mode semantics.
# ----------------------------------------------------------------------------------------------
_JS_WS = set("\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff") | {chr(c) for c in range(0x2000, 0x200B)}


def _is_ws(c):
    return c in _JS_WS


def _is_l(c):
    return unicodedata.category(c).startswith("L")


def _is_n(c):
    return unicodedata.category(c).startswith("N")


def _is_other(c):
    return not (_is_ws(c) or _is_l(c) or _is_n(c))


_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def pretokenize(text: str):
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            hit = None
            for suf in _CONTRACTIONS:
                if text.startswith(suf, i + 1):
                    hit = suf
                    break
            if hit is not None:
                out.append("'" + hit)
                i += 1 + len(hit)
                continue
        matched = False
        for pred in (_is_l, _is_n, _is_other):
            if c == " " and i + 1 < n and pred(text[i + 1]):
                j = i + 1
            elif pred(c) and not (c == " "):
                j = i
            else:
                continue
            while j < n and pred(text[j]):
                j += 1
            out.append(text[i:j])
            i = j
            matched = True
            break
        if matched:
            continue
        # whitespace: \s+(?!\S) then \s+
        j = i
        while j < n and _is_ws(text[j]):
            j += 1
        assert j > i
        if j == n or j - i == 1:
            out.append(text[i:j])
            i = j
        else:
            out.append(text[i:j - 1])
            i = j - 1
    return out


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENC = bytes_to_unicode()
BYTE_DEC = {v: k for k, v in BYTE_ENC.items()}


def to_byte_level(piece: str) -> str:
    return "".join(BYTE_ENC[b] for b in piece.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------
def train_bpe(texts, n_merges, min_freq=2):
    words = Counter()
    for t in texts:
        for p in pretokenize(t):
            words[to_byte_level(p)] += 1
    seqs = {w: list(w) for w in words}
    merges = []
    pair_counts = Counter()
    where = {}
    for w, f in words.items():
        s = seqs[w]
        for a, b in zip(s, s[1:]):
            pair_counts[(a, b)] += f
            where.setdefault((a, b), set()).add(w)
    for _ in range(n_merges):
        if not pair_counts:
            break
        best_count = max(pair_counts.values())
        if best_count < min_freq:
            break
        best = min(p for p, c in pair_counts.items() if c == best_count)
        merges.append(best)
        a, b = best
        ab = a + b
        for w in list(where.get(best, ())):
            f = words[w]
            s = seqs[w]
            for x, y in zip(s, s[1:]):
                pair_counts[(x, y)] -= f
                if pair_counts[(x, y)] <= 0:
                    del pair_counts[(x, y)]
                st = where.get((x, y))
                if st is not None:
                    st.discard(w)
            ns = []
            i = 0
            while i < len(s):
                if i < len(s) - 1 and s[i] == a and s[i + 1] == b:
                    ns.append(ab)
                    i += 2
                else:
                    ns.append(s[i])
                    i += 1
            seqs[w] = ns
            for x, y in zip(ns, ns[1:]):
                pair_counts[(x, y)] += f
                where.setdefault((x, y), set()).add(w)
        where.pop(best, None)
    return merges


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------
class Tok:
    def __init__(self, vocab, merges, specials):
        self.vocab = vocab  # token -> id (byte-level tokens)
        self.inv = {i: t for t, i in vocab.items()}
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.specials = dict(specials)  # content -> id
        for c, i in self.specials.items():
            self.inv[i] = c
        pat = "|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True))
        self.split_re = re.compile(f"({pat})")
        self.cache = {}

    @classmethod
    def from_file(cls, path):
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        merges = [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]
        specials = {a["content"]: a["id"] for a in j["added_tokens"]}
        return cls(j["model"]["vocab"], merges, specials)

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        s = list(word)
        while len(s) > 1:
            best, best_rank = None, None
            for p in zip(s, s[1:]):
                r = self.ranks.get(p)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = p, r
            if best is None:
                break
            ns, i = [], 0
            while i < len(s):
                if i < len(s) - 1 and (s[i], s[i + 1]) == best:
                    ns.append(s[i] + s[i + 1])
                    i += 2
                else:
                    ns.append(s[i])
                    i += 1
            s = ns
        self.cache[word] = s
        return s

    def encode(self, text):
        ids = []
        for part in self.split_re.split(text):
            if not part:
                continue
            if part in self.specials:
                ids.append(self.specials[part])
                continue
            for p in pretokenize(part):
                for t in self.bpe(to_byte_level(p)):
                    ids.append(self.vocab[t])
        return ids

    def decode(self, ids, skip_special=False):
        out, buf = [], []
        for i in ids:
            t = self.inv[i]
            if i in self.specials.values():
                if buf:
                    out.append(bytes(buf).decode("utf-8", errors="replace"))
                    buf = []
                if not skip_special:
                    out.append(t)
            else:
                buf.extend(BYTE_DEC[ch] for ch in t)
        if buf:
            out.append(bytes(buf).decode("utf-8", errors="replace"))
        return "".join(out)
