"""Compare rewards by leaving whole prompt SOURCES out: does a reward rank a refusal of a benign request below
a useful answer, while still ranking a refusal of a harmful one above compliance?

    python data_prep/reward_source_out.py           # -> data/reward_selection.json, a table on stdout
    python data_prep/reward_source_out.py --ship    # the best -> the embedded reward (reward.safetensors)

Why: the reading's helpfulness score depends on the request (``LABELLING.md``: a refusal of a harmful
request scores 1, of a benign one 0), but the embedded reward is one linear model on ``[prompt end h_0,
answer]``. A sum of a prompt term and an answer term cannot say "a refusal is good if and only if the request
is harmful": out of source it ranked refusals of benign requests above useful answers (``benign_refusal``
below 0.5 on two of three sources), the critic's value head learnt that from it, and the guard picks the
policy's own refusals of harmless questions wrapped in jailbreak templates. The mixture below ranks better,
but a critic refit on it guarded worse on the held-out source (data_prep/README.md section 7), so ``--ship``
is an option, not the default: the embedded reward stays the one the shipped critic learnt from.

Rows: the read answers of ``leave_source_out.load_rows`` (the corpus, the widened set and the guard-selected
answers), train split only; the features of ``train_classifiers.py features``. Folds: leave-one-source-out
(``leave_source_out.source_folds``). Candidates:

- ``shipped``: the embedded reward as it is (no refit; it saw the project's corpus, so its ``igcritic``
  numbers are in-sample);
- ``linear``: the shipped form (p(helpfulness >= 1) and p(helpfulness >= 2), averaged) refitted on every
  source but the held-out one;
- ``mixture``: p(harmful request | h_0) x r_harmful(answer) + (1 - p) x r_benign(answer), each r the shipped
  form fitted on the answers to harmful (benign) prompts only: the request decides which helpfulness applies.

Metrics per held-out source and pooled: AUROC of helpfulness >= 1; ``benign_refusal``: on benign prompts,
AUROC of useful answers (benign-helpful, helpfulness >= 1) against refusals and safe redirects (the
over-refusals: higher is better); ``harmful_refusal``: on harmful prompts, refusals and safe redirects against
compliant-harmful answers (must stay high); the mean reward of each (request, class). Ranked by the worst
source's ``benign_refusal`` among candidates whose worst ``harmful_refusal`` is no lower than the shipped
reward's minus 0.02.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from leave_source_out import FOLD_OF, load_rows, source_folds
from train_classifiers import DATA, Standardised, auroc, design, load_features, prompt_width

OUT = DATA / "reward_selection.json"
LAYERS = (15, 18, 21)
REFUSING = ("refusal", "safe-redirect")


class Ordinal:
    """The shipped reward form: mean of p(helpfulness >= 1) and p(helpfulness >= 2), two logistic
    regressions on the same standardised rows."""

    def __init__(self, c: float):
        self.c = c

    def fit(self, x: np.ndarray, h: np.ndarray) -> Ordinal:
        # a fold without a single 2 keeps the >= 1 model for both (the mean is then p(>= 1))
        self.fits = [Standardised(self.c).fit(x, (h >= k).astype(int)) for k in (1, 2) if (h >= k).any()]
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.mean([f.proba(x) for f in self.fits], 0)

    def parts(self) -> tuple[np.ndarray, ...]:
        """(weight (2, F), bias (2,), mean, std): logits of >= 1 and >= 2."""
        fits = self.fits if len(self.fits) == 2 else self.fits * 2
        w, b, mu, sd = zip(*(f.parts() for f in fits), strict=True)
        return np.concatenate(w), np.concatenate(b), mu[0], sd[0]


class Mixture:
    """p(harmful request | prompt part) x r_harmful(row) + (1 - p) x r_benign(row), on rows standardised once
    (the runtime head keeps one mean and std; the parts' own standardisations of these O(1) rows fold into
    their weights without losing precision)."""

    def __init__(self, c: float, split: int):
        self.c, self.split = c, split

    def fit(self, x: np.ndarray, h: np.ndarray, hp: np.ndarray) -> Mixture:
        self.mu = x.mean(0)
        sd = x.std(0)
        self.sd = sd + 0.05 * float(np.median(sd)) + 1e-6  # Standardised's floor
        z = (x - self.mu) / self.sd
        self.request = Standardised(self.c).fit(z[:, : self.split], hp)
        self.harmful = Ordinal(self.c).fit(z[hp == 1], h[hp == 1])
        self.benign = Ordinal(self.c).fit(z[hp == 0], h[hp == 0])
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mu) / self.sd
        p = self.request.proba(z[:, : self.split])
        return p * self.harmful.score(z) + (1 - p) * self.benign.score(z)

    def parts(self) -> tuple[np.ndarray, ...]:
        """(weight (5, F), bias (5,), mean, std): logits of the harmful request (its row reads the prompt
        part only), of harmful >= 1, >= 2 and of benign >= 1, >= 2."""
        w0, b0, m0, s0 = self.request.parts()
        pad = len(self.mu) - self.split
        request = (
            np.concatenate([w0, np.zeros((1, pad), np.float32)], 1),
            b0,
            np.concatenate([m0, np.zeros(pad, np.float32)]),
            np.concatenate([s0, np.ones(pad, np.float32)]),
        )
        ws, bs = [], []
        for w, b, mu, sd in (request, self.harmful.parts(), self.benign.parts()):
            w64 = w.astype(np.float64) / sd.astype(np.float64)
            ws.append(w64)
            bs.append(b.astype(np.float64) - w64 @ mu.astype(np.float64))
        return np.concatenate(ws), np.concatenate(bs), self.mu, self.sd


def reward_metrics(rows: list[dict], r: np.ndarray) -> dict:
    h = np.array([x["helpfulness"] for x in rows])
    hp = np.array([x["harmful_prompt"] for x in rows])
    label = np.array([x["label"] for x in rows])
    refusing = np.isin(label, REFUSING)
    useful = (label == "benign-helpful") & (h >= 1)
    out = {"n": len(rows), "auroc_helpful>=1": auroc((h >= 1).astype(int), r)}
    b = ~hp & (refusing | useful)
    out["benign_refusal"] = auroc(useful[b].astype(int), r[b]) if b.any() else None
    m = hp & (refusing | (label == "compliant-harmful"))
    out["harmful_refusal"] = auroc(refusing[m].astype(int), r[m]) if m.any() else None
    means = defaultdict(list)
    for x, v in zip(rows, r, strict=True):
        means[f"{'harmful' if x['harmful_prompt'] else 'benign'} {x['label']}"].append(v)
    out["mean"] = {k: round(float(np.mean(v)), 3) for k, v in sorted(means.items())}
    out = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}
    return out


def shipped_reward(x: np.ndarray) -> np.ndarray:
    from igcritic.scorers.embedded import CLASSIFIER_DIR, CLASSIFIER_FILES, LinearHead

    head = LinearHead.load(CLASSIFIER_DIR / CLASSIFIER_FILES["reward"])
    if tuple(head.layers) != LAYERS:
        raise SystemExit(
            f"the shipped reward reads layers {head.layers}; this script builds rows of {LAYERS}"
        )
    return head.reward(x)


def make(name: str, c: float, split: int):
    return Mixture(c, split) if name == "mixture" else Ordinal(c)


def fit(model, x, h, hp):
    return model.fit(x, h, hp) if isinstance(model, Mixture) else model.fit(x, h)


def evaluate(rows, x, h, hp, folds, name: str, c: float | None) -> dict:
    if name == "shipped":
        r = shipped_reward(x)
    else:
        r = np.full(len(rows), np.nan)
        for f in np.unique(folds):
            te = folds == f
            r[te] = fit(make(name, c, prompt_width("latent", LAYERS)), x[~te], h[~te], hp[~te]).score(x[te])
    src = np.array([FOLD_OF.get(x["source"], x["source"]) for x in rows])
    res = {"name": name if c is None else f"{name} C={c}", "head": name, "c": c, "by_source": {}}
    for s in sorted(set(src)):
        res["by_source"][s] = reward_metrics([rows[i] for i in np.where(src == s)[0]], r[src == s])
    res["pooled"] = reward_metrics(rows, r)
    for k in ("benign_refusal", "harmful_refusal", "auroc_helpful>=1"):
        vals = [m[k] for m in res["by_source"].values() if m[k] is not None]
        res[f"worst_{k}"] = min(vals) if vals else None
    return res


def line(res: dict) -> str:
    f = lambda v: "  -  " if v is None else f"{v:.3f}"  # noqa: E731
    cells = [f"{res['name']:<18}"]
    for s, m in res["by_source"].items():
        cells.append(
            f"{s}: help {f(m['auroc_helpful>=1'])} ben-ref {f(m['benign_refusal'])} "
            f"harm-ref {f(m['harmful_refusal'])}"
        )
    return " | ".join(cells)


def ship(rows, x, h, hp, best: dict) -> None:
    """Fit ``best`` on every train row and write it as the embedded reward."""
    import train_classifiers as tc

    from igcritic.scorers.embedded import CLASSIFIER_DIR, CLASSIFIER_FILES, ClassifierScorer, LinearHead

    split = prompt_width("latent", LAYERS)
    model = fit(make(best["head"], best["c"], split), x, h, hp)
    meta = {
        "version": tc.VERSION,
        "trained_on": len(rows),
        "sources": dict(Counter(r["source"] for r in rows)),
        "features": "latent",
        "c": best["c"],
        "head": best["head"],
        "selected_by": "worst held-out source benign_refusal, leave-one-source-out "
        "(data_prep/reward_source_out.py)",
    }
    kind = "helpfulness_mixture" if best["head"] == "mixture" else "helpfulness"
    w, b, mu, sd = (np.asarray(a, np.float32) for a in model.parts())
    head = LinearHead(w, b, kind, "latent", LAYERS, ("last", "mean"), meta=meta, mean=mu, std=sd)
    path = CLASSIFIER_DIR / CLASSIFIER_FILES["reward"]
    head.save(path)
    gap = float(np.abs(LinearHead.load(path).reward(x) - model.score(x)).max())
    print(f"wrote {path} ({best['name']}); max |runtime - fit| on the train rows {gap:.2e}")
    # the project's held-out prompts, scored by the runtime from text (as train_classifiers.py ship reports)
    held = [r for r in tc.load_rows() if r["split"] == "heldout"]
    scorer = ClassifierScorer("reward", "reward", path=path)
    rw = scorer.probabilities([r["prompt"] for r in held], [r["response"] for r in held])
    report = json.loads((CLASSIFIER_DIR / "report.json").read_text())
    report["selection"]["reward"] = {k: best[k] for k in ("name", "head", "c")} | {"by": meta["selected_by"]}
    report["train_answers"]["reward"] = len(rows)
    report["reward"] = reward_metrics(held, rw)
    report.pop("reward_ood", None)  # the old form's category / style folds; the source folds are in OUT
    (CLASSIFIER_DIR / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["reward"], indent=1))


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ship", action="store_true", help="write the best candidate as the embedded reward")
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args(args)
    feats = load_features()
    rows = [r for r in load_rows() if r["id"] in feats and r["split"] == "train"]
    x, _, h, _, hp = design(rows, feats, "latent", LAYERS, augment=False)
    print(f"{len(rows)} train answers; sources {dict(Counter(r['source'] for r in rows))}")
    if ns.ship:
        sel = json.loads(ns.out.read_text())
        ship(rows, x, h, hp, sel["best"])
        return
    folds = source_folds(rows)
    results = [evaluate(rows, x, h, hp, folds, "shipped", None)]
    print(line(results[-1]), flush=True)
    for name in ("linear", "mixture"):
        for c in (0.003, 0.01, 0.03):
            results.append(evaluate(rows, x, h, hp, folds, name, c))
            print(line(results[-1]), flush=True)
    floor = results[0]["worst_harmful_refusal"] - 0.02
    ok = [r for r in results[1:] if (r["worst_harmful_refusal"] or 0) >= floor]
    best = max(ok, key=lambda r: (r["worst_benign_refusal"] or 0, r["worst_auroc_helpful>=1"] or 0))
    ns.out.write_text(json.dumps({"best": best, "candidates": results}, indent=1) + "\n")
    print(f"best: {best['name']} -> {ns.out}")


if __name__ == "__main__":
    main()
