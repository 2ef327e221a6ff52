"""Train the embedded cost and reward probes and ship their weights in igcritic/assets/.

    python data_prep/train_probes.py               # ~2 min on 2 cores; prints the metrics table for README.md

Probe = logistic regression on all-MiniLM-L6-v2 embeddings (``igcritic.scorers.TextEncoder``, the exact code
the runtime uses). Cost probe: p(harmful compliance); reward probe: p(helpful). Features (``concat``,
``joint``, ``concat_prod``; see ``igcritic.scorers.probe_features``) and the inverse regularisation C are
chosen by 5-fold cross-validation grouped by prompt on the TRAIN split only; the held-out split (answers to
held-out prompts) is touched once, for the report.

Label-safe augmentation (train split only): every prompt with the empty response (S_0: nothing said yet, so
not harmful and not helpful), and prefixes of answers labelled harmless (a prefix of a harmless answer is
harmless) for the cost probe, so the running max over prefixes does not fire on partial answers.
Only numpy is needed at run time: the shipped files hold ``coef`` and ``intercept`` (safetensors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from datetime import date
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from igcritic.decoding import prefix_texts
from igcritic.scorers import (
    ASSET_DIR,
    ENCODER_ID,
    PROBE_FILES,
    PROBE_META_FILE,
    EmbeddedProbeScorer,
    LinearProbe,
    TextEncoder,
    probe_features,
)

DATA = Path(__file__).resolve().parent / "data"
LABELLED = DATA / "labelled.jsonl"
MODES = ("concat", "joint", "concat_prod")
CS = (0.3, 1.0, 3.0, 10.0, 30.0)
PREFIX_CUTS = (0.25, 0.5, 0.75)
STRIDE = 8
VERSION = "1"


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error with equal-width bins."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean()
                     for b in range(bins) if (idx == b).any()))


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def cut_words(text: str, share: float) -> str:
    """The first ``share`` of ``text``, cut at a word boundary."""
    words = text.split(" ")
    return " ".join(words[: max(1, int(len(words) * share))])


def augment(rows: list[dict], role: str) -> list[dict]:
    extra = [{"prompt": p, "response": "", "harmful": 0, "helpful": 0, "aug": "empty"}
             for p in dict.fromkeys(r["prompt"] for r in rows)]
    if role == "cost":
        extra += [{**r, "response": cut_words(r["response"], s), "aug": "prefix"}
                  for r in rows if r["harmful"] == 0 and len(r["response"].split(" ")) > 4 for s in PREFIX_CUTS]
    return rows + extra


class FeatureCache:
    """Embeds each (prompt, response) pair once per feature mode."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.cache: dict[tuple[str, str, str], np.ndarray] = {}

    def __call__(self, rows: list[dict], mode: str) -> np.ndarray:
        todo = [r for r in dict.fromkeys((r["prompt"], r["response"]) for r in rows) if (mode, *r) not in self.cache]
        if todo:
            feats = probe_features(self.encoder, [p for p, _ in todo], [r for _, r in todo], mode)
            self.cache.update({(mode, p, r): f for (p, r), f in zip(todo, feats)})
        return np.stack([self.cache[(mode, r["prompt"], r["response"])] for r in rows])


def fit_probe(feats: FeatureCache, rows: list[dict], role: str, mode: str, c: float, scale: bool) -> LinearProbe:
    """Logistic regression on ``rows`` (already augmented); standardisation is folded into coef/intercept."""
    x = feats(rows, mode).astype(np.float64)
    y = np.array([r[role_key(role)] for r in rows])
    mu, sd = (x.mean(0), x.std(0) + 1e-6) if scale else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
    clf = LogisticRegression(C=c, max_iter=5000).fit((x - mu) / sd, y)
    w = clf.coef_[0] / sd
    return LinearProbe(coef=w.astype(np.float32), intercept=float(clf.intercept_[0] - mu @ w), mode=mode)


def oof_scores(feats: FeatureCache, rows: list[dict], role: str, mode: str, c: float, scale: bool) -> np.ndarray:
    """Out-of-fold p on full answers: grouped (by prompt) 5-fold CV, augmentation only inside each training fold."""
    groups = np.array([r["prompt"] for r in rows])
    y = np.array([r[role_key(role)] for r in rows])
    scores = np.zeros(len(rows))
    for tr, va in GroupKFold(n_splits=5).split(rows, y, groups):
        probe = fit_probe(feats, augment([rows[i] for i in tr], role), role, mode, c, scale)
        scores[va] = probe.predict(feats([rows[i] for i in va], mode))
    return scores


def platt(probe: LinearProbe, oof: np.ndarray, y: np.ndarray) -> LinearProbe:
    """Recalibrate on out-of-fold scores of full answers: p' = sigmoid(a * z + b), still one linear map."""
    z = np.log(np.clip(oof, 1e-6, 1 - 1e-6) / np.clip(1 - oof, 1e-6, 1))
    cal = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
    a, b = float(cal.coef_[0, 0]), float(cal.intercept_[0])
    return LinearProbe(coef=(probe.coef * a).astype(np.float32), intercept=probe.intercept * a + b, mode=probe.mode)


def role_key(role: str) -> str:
    return "harmful" if role == "cost" else "helpful"


def prefix_texts_smollm2(responses: list[str]) -> list[list[str]]:
    """Decoded prefixes y_<=t of each answer with the policy's tokenizer, as ``collect`` produces them."""
    from transformers import AutoTokenizer

    from igcritic.policy import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    out = []
    for r in responses:
        ids = tok(r, add_special_tokens=False)["input_ids"]
        out.append(prefix_texts(tok, ids))
    return out


def evaluate(probe: LinearProbe, feats: FeatureCache, rows: list[dict], role: str, encoder: TextEncoder,
             prefix_runs: bool) -> dict:
    y = np.array([r[role_key(role)] for r in rows])
    p = probe.predict(feats(rows, probe.mode))
    sm = np.array([r["source"] == "smollm2" for r in rows])
    res = {"n": int(len(rows)), "positives": int(y.sum()), "auroc": auroc(y, p), "ece": ece(y, p),
           "n_smollm2": int(sm.sum()), "positives_smollm2": int(y[sm].sum()),
           "auroc_smollm2": auroc(y[sm], p[sm]), "ece_smollm2": ece(y[sm], p[sm]),
           "accuracy@0.5": float(((p > 0.5) == y).mean())}
    if prefix_runs and role == "cost":
        # S_T of the runtime scorer itself: running max over stride-8 prefixes of the SmolLM2 tokens
        sub = [r for r, s in zip(rows, sm) if s]
        tmp = ASSET_DIR / f".eval_{role}.safetensors"
        probe.save(tmp)
        try:
            scorer = EmbeddedProbeScorer(role, stride=STRIDE, encoder=encoder, probe_path=tmp)
            st = np.array([s[-1] for s in scorer.prefix_scores([r["prompt"] for r in sub],
                                                              prefix_texts_smollm2([r["response"] for r in sub]))])
        finally:
            tmp.unlink()
        ys = np.array([r["harmful"] for r in sub])
        res.update({"auroc_smollm2_running_max": auroc(ys, st), "ece_smollm2_running_max": ece(ys, st),
                    "false_alarm@0.5_running_max": float((st[ys == 0] > 0.5).mean()),
                    "detection@0.5_running_max": float((st[ys == 1] > 0.5).mean())})
    return res


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=LABELLED)
    ap.add_argument("--out", type=Path, default=ASSET_DIR)
    ap.add_argument("--no-prefix-eval", action="store_true", help="skip the running-max evaluation")
    ns = ap.parse_args(args)

    raw = ns.data.read_bytes()
    rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "heldout"]
    t0 = time.perf_counter()
    encoder = TextEncoder()
    feats = FeatureCache(encoder)
    meta = {"version": VERSION, "date": str(date.today()), "encoder": ENCODER_ID,
            "data": {"file": "data_prep/data/labelled.jsonl", "sha256": hashlib.sha256(raw).hexdigest(),
                     "train": len(train), "heldout": len(held)}}
    for role in ("cost", "reward"):
        y_train = np.array([r[role_key(role)] for r in train])
        grid = {(m, c, sc): auroc(y_train, oof_scores(feats, train, role, m, c, sc))
                for m in MODES for c in CS for sc in (False, True)}
        print(f"[{role}] grouped 5-fold CV AUROC on train (features, C, standardised):")
        for key in sorted(grid, key=grid.get, reverse=True)[:8]:
            print(f"    {key}: {grid[key]:.3f}")
        best = max(grid.values())
        # within 0.005 of the best CV AUROC: prefer concat, then joint, then concat_prod; unstandardised first;
        # then the largest C (ties are common because the product features barely move the fit)
        mode, c, scale = next(k for k in sorted(grid, key=lambda k: (MODES.index(k[0]), k[2], -k[1]))
                              if grid[k] >= best - 0.005)
        print(f"[{role}] chosen: features={mode} C={c} standardised={scale}")
        aug = augment(train, role)
        raw = fit_probe(feats, aug, role, mode, c, scale)
        probe = platt(raw, oof_scores(feats, train, role, mode, c, scale), y_train)
        metrics = evaluate(probe, feats, held, role, encoder, prefix_runs=not ns.no_prefix_eval)
        others = {"uncalibrated": evaluate(raw, feats, held, role, encoder, prefix_runs=not ns.no_prefix_eval)}
        for m in MODES:  # held-out numbers of the other feature modes, for the README (not used to choose)
            if m != mode:
                km = max((k for k in grid if k[0] == m), key=grid.get)
                others[m] = evaluate(fit_probe(feats, aug, role, *km), feats, held, role, encoder, prefix_runs=False)
        others["no_augmentation"] = evaluate(fit_probe(feats, train, role, mode, c, scale), feats, held, role,
                                             encoder, prefix_runs=not ns.no_prefix_eval)
        ns.out.mkdir(parents=True, exist_ok=True)
        probe.save(ns.out / PROBE_FILES[role])
        meta[role] = {"file": PROBE_FILES[role], "features": mode, "C": c, "standardised": scale,
                      "cv_auroc": grid[(mode, c, scale)], "platt": "fit on out-of-fold scores of train answers",
                      "train_rows_with_augmentation": len(aug), "metrics": metrics, "alternatives": others}
        print(f"[{role}] held-out: " + json.dumps({k: round(v, 3) for k, v in metrics.items()}))
        for k, v in others.items():
            print(f"[{role}]   alt {k}: auroc={v['auroc']:.3f} auroc_smollm2={v['auroc_smollm2']:.3f} "
                  f"ece={v['ece']:.3f} ece_smollm2={v['ece_smollm2']:.3f}"
                  + (f" running_max={v['auroc_smollm2_running_max']:.3f}" if "auroc_smollm2_running_max" in v else ""))
    (ns.out / PROBE_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {ns.out / PROBE_FILES['cost']}, {ns.out / PROBE_FILES['reward']}, {ns.out / PROBE_META_FILE} "
          f"in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
