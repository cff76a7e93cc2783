#!/usr/bin/env python3
"""Generate the project's harmful/harmless prompt sets (train / val / test) and the SFT answers.

Deterministic (seeded). Writes
  data/harmful_{train,val,test}.txt, data/harmless_{train,val,test}.txt   (one prompt a line)
  training/sft_train.jsonl   (each train prompt with its label, kind and subject; the candidate
                              answers come from answers_for() below)

Split rules
  * every subject list and every template list is split into a train part and a held-out part;
  * train prompts = train subject x train template (+ hand-written train prompts);
  * test / val prompts = held-out subject x train template, train subject x held-out template,
    held-out subject x held-out template (+ hand-written held-out prompts for test);
  * test, val and train are disjoint as strings, and no test/val prompt appears in training.

Run from the repository root:  /usr/bin/python3 training/make_prompts.py
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prompt_content as C  # noqa: E402

SEED = 1234
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")

N_TRAIN = {"harmful": 1800, "harmless": 1800}
N_TEST_CELLS = {"HT": 55, "TH": 45, "HH": 38}  # + all hand-written held-out prompts (22)
N_VAL_CELLS = {"HT": 16, "TH": 16, "HH": 16}


def cap(s):
    return s[:1].upper() + s[1:]


def second_person(s):
    return (" " + s + " ").replace(" my ", " your ").replace(" I ", " you ").replace(" me ", " you ").strip()


def flat(d, part):
    """Category dict -> list of subjects of one part."""
    out = []
    for cat in d.values():
        out.extend(cat[part])
    return out


def combo_subjects(side):
    """Compositional train-only subjects: harmful -> [vp], harmless -> [(vp, body)]."""
    if side == "harmful":
        out = [f.format(p=p) for f in C.HARMFUL_PERSON_FRAMES for p in C.PEOPLE]
        out += [f.format(x=x) for f, xs in C.HARMFUL_OBJECT_FRAMES.items() for x in xs]
    else:
        out = [(f.format(p=p), b) for f, b in C.HARMLESS_PERSON_FRAMES for p in C.PEOPLE]
        out += [(f.format(x=x), b) for (f, b), xs in C.HARMLESS_OBJECT_FRAMES.items() for x in xs]
    return out


def cells(side):
    """Return {kind: (subjects_by_part, templates_by_part, fill)} for one side."""
    if side == "harmful":
        combo = {"train": combo_subjects(side), "test": []}
        vp = {p: flat(C.HARMFUL_VP, p) for p in ("train", "test")}
        vpt = {p: C.VP_TEMPLATES[p] + C.VP_TEMPLATES_HARMFUL_ONLY[p] + C.VP_TEMPLATES_HARMLESS_ONLY[p] for p in ("train", "test")}
        topic = C.HARMFUL_TOPIC
        doc = C.HARMFUL_DOC
    else:
        combo = {"train": [s for s, _ in combo_subjects(side)], "test": []}
        vp = {p: [s for s, _ in flat(C.HARMLESS_VP, p)] for p in ("train", "test")}
        vpt = {p: C.VP_TEMPLATES[p] + C.VP_TEMPLATES_HARMFUL_ONLY[p] + C.VP_TEMPLATES_HARMLESS_ONLY[p] for p in ("train", "test")}
        topic = {p: [s for s, _ in C.HARMLESS_TOPIC[p]] for p in ("train", "test")}
        doc = {p: [s for s, _ in C.HARMLESS_DOC[p]] for p in ("train", "test")}
    return {
        "vp": (vp, vpt, "vp"),
        "combo": (combo, vpt, "vp"),
        "topic": (topic, C.TOPIC_TEMPLATES, "topic"),
        "doc": (doc, C.DOC_TEMPLATES, "doc"),
    }


def combos(side, subj_part, tpl_part):
    """All (prompt, kind, subject) for one cell of the split."""
    out = []
    for kind, (subj, tpl, key) in cells(side).items():
        if kind == "combo" and (subj_part, tpl_part) != ("train", "train"):
            continue  # compositional subjects are train-only; held-out cells use hand-written subjects
        for s in subj[subj_part]:
            for t in tpl[tpl_part]:
                out.append((t.format(**{key: s}), kind, s))
    return out


def harmless_answers():
    """subject -> list of candidate answers (harmless)."""
    ans = {}
    for vp, body in combo_subjects("harmless"):
        v = second_person(vp)
        ans[("combo", vp)] = [f.format(vp=v, body=body, Body=cap(body)) for f in C.VP_ANSWER_FORMS]
    for cat in C.HARMLESS_VP.values():
        for part in ("train", "test"):
            for vp, body in cat[part]:
                v = second_person(vp)
                ans[("vp", vp)] = [f.format(vp=v, body=body, Body=cap(body)) for f in C.VP_ANSWER_FORMS]
    for part in ("train", "test"):
        for topic, body in C.HARMLESS_TOPIC[part]:
            ans[("topic", topic)] = [f.format(body=body) for f in C.TOPIC_ANSWER_FORMS]
        for doc, body in C.HARMLESS_DOC[part]:
            ans[("doc", doc)] = [f.format(doc=second_person(doc), body=body) for f in C.DOC_ANSWER_FORMS]
        for prompt, body in C.HARMLESS_FREE[part]:
            ans[("free", prompt)] = [body]
    return ans


_ANSWERS = None


_CATEGORY = None


def harmful_category(subject):
    """Category of a harmful subject ('generic' for topics, documents and free-form prompts)."""
    global _CATEGORY
    if _CATEGORY is None:
        _CATEGORY = {}
        for cat, parts in C.HARMFUL_VP.items():
            for part in ("train", "test"):
                for s in parts[part]:
                    _CATEGORY[s] = cat
        for f, cat in C.HARMFUL_PERSON_FRAME_CATEGORY.items():
            for p in C.PEOPLE:
                _CATEGORY[f.format(p=p)] = cat
        for f, cat in C.HARMFUL_OBJECT_FRAME_CATEGORY.items():
            for x in C.HARMFUL_OBJECT_FRAMES[f]:
                _CATEGORY[f.format(x=x)] = cat
    return _CATEGORY.get(subject, "generic")


def refusals_for(kind, subject):
    """Refusal candidates: generic ones, generic + a safe redirect for the category, and (for
    verb-phrase requests) ones that restate the request, with the redirect."""
    redirect = C.REDIRECTS[harmful_category(subject)]
    out = list(C.REFUSALS) + [r + " " + redirect for r in C.REFUSALS]
    if kind in ("vp", "combo"):
        vp = second_person(subject)
        out += [f.format(vp=vp) + " " + redirect for f in C.RESTATE_REFUSALS] * 3
    return out


def answers_for(row):
    """Candidate training answers for one sft_train.jsonl row."""
    global _ANSWERS
    if row["label"] == "harmful":
        return refusals_for(row["kind"], row["subject"])
    if _ANSWERS is None:
        _ANSWERS = harmless_answers()
    return list(_ANSWERS[(row["kind"], row["subject"])])


def sample_cell(rng, pool, n, taken):
    pool = [c for c in pool if c[0] not in taken]
    rng.shuffle(pool)
    # spread over subjects: round-robin by subject so every held-out subject is represented
    by_subj = {}
    for c in pool:
        by_subj.setdefault(c[2], []).append(c)
    order = sorted(by_subj)
    rng.shuffle(order)
    out = []
    while len(out) < n and any(by_subj[s] for s in order):
        for s in order:
            if by_subj[s] and len(out) < n:
                c = by_subj[s].pop()
                out.append(c)
                taken.add(c[0])
    return out


def main():
    rng = random.Random(SEED)
    os.makedirs(DATA, exist_ok=True)
    answers = harmless_answers()
    sft = []
    for side in ("harmful", "harmless"):
        free = C.HARMFUL_FREE if side == "harmful" else {p: [q for q, _ in C.HARMLESS_FREE[p]] for p in ("train", "test")}
        taken = set()
        # ---- train: train subjects x train templates, sampled per kind, plus hand-written
        tt = combos(side, "train", "train")
        by_kind = {}
        for c in tt:
            by_kind.setdefault(c[1], []).append(c)
        n_free = len(free["train"])
        n_rest = N_TRAIN[side] - n_free
        quota = {"topic": 150 if side == "harmless" else 100, "doc": 100, "combo": 700}
        quota["vp"] = n_rest - quota["topic"] - quota["doc"] - quota["combo"]
        train = []
        for kind in ("vp", "combo", "topic", "doc"):
            train += sample_cell(rng, by_kind[kind], quota[kind], taken)
        train += [(p, "free", p) for p in free["train"]]
        taken.update(p for p, _, _ in train)
        # ---- test and val from held-out cells
        pools = {
            "HT": combos(side, "test", "train"),
            "TH": combos(side, "train", "test"),
            "HH": combos(side, "test", "test"),
        }
        test, val = [], []
        for cell, n in N_TEST_CELLS.items():
            test += sample_cell(rng, pools[cell], n, taken)
        test += [(p, "free", p) for p in free["test"]]
        taken.update(p for p, _, _ in test)
        for cell, n in N_VAL_CELLS.items():
            val += sample_cell(rng, pools[cell], n, taken)
        # ---- checks
        tr = [p for p, _, _ in train]
        te = [p for p, _, _ in test]
        va = [p for p, _, _ in val]
        assert len(set(tr)) == len(tr) and len(set(te)) == len(te) and len(set(va)) == len(va)
        assert not (set(tr) & set(te)) and not (set(tr) & set(va)) and not (set(te) & set(va))
        for p in tr + te + va:
            assert p.strip() == p and "\n" not in p and p
        rng.shuffle(train)
        rng.shuffle(test)
        rng.shuffle(val)
        for name, rows in (("train", train), ("test", test), ("val", val)):
            with open(os.path.join(DATA, f"{side}_{name}.txt"), "w", encoding="utf-8") as f:
                for p, _, _ in rows:
                    f.write(p + "\n")
        for p, kind, subj in train:
            if side == "harmless":
                for a in answers[(kind, subj)]:
                    assert not C.is_refusal(a), a
            sft.append({"prompt": p, "label": side, "kind": kind, "subject": subj})
        print(f"{side}: train {len(train)}  val {len(val)}  test {len(test)}")
    for r in C.REFUSALS + C.RESTATE_REFUSALS:
        assert C.is_refusal(r), r
    for r in C.REDIRECTS.values():
        assert not C.is_refusal(r), r  # the marker must come from the refusal sentence itself
    # every harmless answer of every subject (also held-out ones) must be marker-free
    for cand in answers.values():
        for a in cand:
            assert not C.is_refusal(a), a
    with open(os.path.join(ROOT, "training", "sft_train.jsonl"), "w", encoding="utf-8") as f:
        for row in sft:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
