#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer and write the Hugging Face tokenizer files.

Reads training/sft_train.jsonl (train prompts and their answers) and data/plain_text.txt; the
val/test prompts are NOT used for training the tokenizer. Writes
  models/tiny-chat/tokenizer.json, models/tiny-chat/tokenizer_config.json
  training/tokenizer_ids.json.gz   (reference ids for training/check_tokenizer.mjs)

Run from the repository root:  /usr/bin/python3 training/make_tokenizer.py
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok  # noqa: E402
import prompt_content as C  # noqa: E402
from make_prompts import answers_for  # noqa: E402
import gzip  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "tiny-chat")
VOCAB_SIZE = 1024  # 256 bytes + merges + 8 special tokens
MODEL_MAX_LENGTH = 256


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def main():
    rows = [json.loads(l) for l in open(os.path.join(ROOT, "training", "sft_train.jsonl"), encoding="utf-8")]
    plain = read_lines(os.path.join(ROOT, "data", "plain_text.txt"))
    all_answers = sorted({a for r in rows for a in answers_for(r)})
    texts = [r["prompt"] for r in rows] + all_answers + plain
    n_merges = VOCAB_SIZE - 256 - len(tok.SPECIALS)
    merges = tok.train_bpe(texts, n_merges)
    assert len(merges) == n_merges, len(merges)
    vocab = {tok.BYTE_ENC[b]: b for b in range(256)}
    for a, b in merges:
        assert a + b not in vocab
        vocab[a + b] = len(vocab)
    specials = {s: len(vocab) + i for i, s in enumerate(tok.SPECIALS)}
    assert len(vocab) + len(specials) == VOCAB_SIZE

    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for s, i in specials.items()
    ]
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }
    tc = {
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for s, i in specials.items()
        },
        "bos_token": tok.BOS,
        "eos_token": tok.EOT,
        "pad_token": tok.PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "chat_template": tok.CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)
        f.write("\n")
    with open(os.path.join(OUT, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, ensure_ascii=False, indent=2)
        f.write("\n")

    # ---- reference ids for the Node check: every prompt (formatted and raw), every answer,
    # the plain text, and some edge cases for the pre-tokenizer.
    T = tok.Tok.from_file(os.path.join(OUT, "tokenizer.json"))
    prompts = []
    for side in ("harmful", "harmless"):
        for split in ("train", "val", "test"):
            prompts += read_lines(os.path.join(ROOT, "data", f"{side}_{split}.txt"))
    answers = list(all_answers)
    for cat in C.HARMLESS_VP.values():
        for vp, body in cat["train"] + cat["test"]:
            answers.append(body)
    edge = [
        "", " ", "  leading and trailing  ", "a  b   c\n\nd\t\te", "I'm sure you'll say 'hello', won't you? It's 'quoted'.",
        "Numbers: 3.14159, 1,440 and 2024-06-01!", "Unicode: caf\u00e9 na\u00efve \u00fcber \u2019curly\u2019 \u201cquotes\u201d \u2014 dash",
        "emoji \U0001F600 and CJK \u4f60\u597d", "x  \n  y", "tabs\tand\u00a0nbsp", "end with spaces   ",
        "<|user|>inline special<|end|> tokens<|assistant|>", "code: text[::-1] {**a, **b} => a - b;",
        "'s 't 're 've 'm 'll 'd 'S 'x", "   ", "\n", "multi\n\n\nline\n",
    ]
    cases = []
    for p in prompts:
        f = tok.format_prompt(p)
        cases.append({"text": f, "ids": T.encode(f)})
    for a in answers:
        cases.append({"text": a + tok.EOT, "ids": T.encode(a + tok.EOT)})
    for t in plain + edge:
        cases.append({"text": t, "ids": T.encode(t)})
    # round trip in Python
    for c in cases:
        assert T.decode(c["ids"]) == c["text"], c["text"]
    chats = [{"messages": [{"role": "user", "content": p}], "expected": tok.format_prompt(p)} for p in prompts]
    chats.append({
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "What's 2 + 2?"},
        ],
        "expected": f"{tok.BOS}{tok.SYSTEM}\nYou are a helpful assistant.{tok.EOT}\n{tok.USER}\nHi!{tok.EOT}\n"
                    f"{tok.ASSISTANT}\nHello! How can I help?{tok.EOT}\n{tok.USER}\nWhat's 2 + 2?{tok.EOT}\n{tok.ASSISTANT}\n",
    })
    blob = json.dumps({"cases": cases, "chats": chats}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with open(os.path.join(ROOT, "training", "tokenizer_ids.json.gz"), "wb") as f:
        f.write(gzip.compress(blob, compresslevel=9, mtime=0))
    lens = [len(T.encode(tok.format_prompt(p))) for p in prompts]
    print(f"vocab {VOCAB_SIZE}, merges {len(merges)}, specials {specials}")
    print(f"{len(cases)} tokenizer cases, {len(chats)} chat cases; formatted prompt length mean {sum(lens)/len(lens):.1f} max {max(lens)}")


if __name__ == "__main__":
    main()
