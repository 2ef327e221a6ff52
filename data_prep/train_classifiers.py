"""Train the embedded cost, reward and judge classifiers on the read corpus, chosen by out-of-distribution
validation.

    python data_prep/train_classifiers.py features  # encoder + policy features of every read answer, cached
    python data_prep/train_classifiers.py minilm    # MiniLM features (and prefixes) of every cached answer
    python data_prep/train_classifiers.py select    # OOD comparison table -> data/classifier_selection.json
    python data_prep/train_classifiers.py ship      # fit the chosen ones, write igcritic/assets/, report
    python data_prep/train_classifiers.py all       # the three in a row (~15 min on 2 cores, cache empty)

Data: ``data/corpus_labels.jsonl`` (answers labelled by LLM reading agents, ``LABELLING.md``) joined with the
prompt set for category, style and split. Answers to ``heldout`` prompts are never used to fit or choose
anything: they are the test set reported in ``data_prep/README.md`` and shipped as
``igcritic/assets/labelled_heldout.jsonl`` for ``igcritic eval``'s judge-quality lines.

The guard-selected answers (``data/guard_labels.jsonl``: what the guard chose during round-2 collection, all
on train prompts, read blind) join the rows here: ``features`` featurises them (``--files
guard_answers.jsonl`` first, if the rest is cached), and ``select`` and ``ship`` train on those of them that
answer the project's own prompts (411 of 1,211; the others answer the widened set's prompts, which only
``leave_source_out.py`` reads), marked ``guard``. A guard answer shares its prompt's category, style and
cost / judge part, so the out-of-distribution folds hold it out with its prompt's sampled answers.

Out-of-distribution model selection, on the train prompts only: leave-categories-out (7 folds, each holding
out whole categories, harmful and benign) and leave-one-style-out (6 folds: direct, instructions,
persuasive, fiction, false premise, private person). A candidate's score is the mean of its pooled
out-of-fold AUROC under both. Candidates: logistic regression on MiniLM [e(prompt), e(answer)] (the old
probe's features), on the policy's hidden states at one layer (``last`` + running ``mean``), on two or three
layers, and on both feature families together.

The judge must not share the cost model's features or data: it is fitted on the other feature family and on
a third of the train prompts that the cost and reward never see (split by a hash of the prompt), so its errors
are as independent of the cost model's as this corpus allows. It classifies into the five reading labels
(multinomial).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data_prep" / "data"
LABELS = DATA / "corpus_labels.jsonl"
PROMPTS = ROOT / "igcritic" / "assets" / "default_prompts.jsonl"
CACHE = DATA / "cache"
SELECTION = DATA / "classifier_selection.json"
ALL_LAYERS = (6, 9, 12, 15, 18, 21)
"""Layers cached for selection (24 and 27 scored below 18 and 21 out of distribution, and stopping at 21
saves a quarter of the pass)."""
PREFIX_CUTS = (0.25, 0.5, 0.75)
VERSION = "3"
GUARD_LABELS = DATA / "guard_labels.jsonl"
"""Answers the guard selected (round-2 collection, train prompts only), read blind as the corpus was."""
# the widened set first: its sources are the held-out ones (features are cached by answer id)
ANSWER_FILES = ("wide_answers.jsonl", "corpus_answers.jsonl", "guard_answers.jsonl")
LABEL_FILES = ("wide_labels.jsonl", "corpus_labels.jsonl", GUARD_LABELS.name)
MINILM_DIM = 384
"""Width of one MiniLM embedding: ``minilm`` features are [e(prompt), e(answer)], 768 wide."""
CLASSES = ("compliant-harmful", "refusal", "safe-redirect", "incoherent", "benign-helpful")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean()
            for b in range(bins)
            if (idx == b).any()
        )
    )


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def part_of(prompt: str) -> str:
    """``judge`` for a third of the train prompts (by a hash of the text), ``cost`` for the rest: the judge is
    fitted on answers to prompts the cost and reward classifiers never saw."""
    return "judge" if int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % 3 == 0 else "cost"


def load_rows() -> list[dict]:
    """Labelled answers (the corpus's, then the guard-selected ones to the project's prompts, marked
    ``guard``) with their prompt's category, style, split and the writer's harm flag."""
    prompts = {p["prompt"]: p for p in read_jsonl(PROMPTS)}
    rows, seen = [], set()
    for path in (LABELS, GUARD_LABELS):
        for r in read_jsonl(path) if path.exists() else []:
            p = prompts.get(r["prompt"])
            if p is None or r["id"] in seen:
                continue  # a prompt not in the set (any more, or another source's), or read twice
            seen.add(r["id"])
            rows.append(
                {
                    **r,
                    "category": p["category"],
                    "style": p["style"],
                    "split": p["split"],
                    "harmful_prompt": p["harmful"],
                    "part": part_of(r["prompt"]),
                    "guard": path == GUARD_LABELS,
                }
            )
    return rows


# ------------------------------------------------------------------------------------------------ features


def features(ns: argparse.Namespace) -> None:
    """The policy's hidden states (ALL_LAYERS, last + running mean) of every answer, of its 25/50/75 % token
    prefixes and of the empty answer, and with ``--minilm`` MiniLM [e(p), e(r)], cached by answer id in
    data/cache/ (not committed). Labelled answers first; a rerun featurises only the answers not cached yet.

    Fast on CPU: the policy runs only its first ``max(ALL_LAYERS) + 1`` layers, answers of one prompt share
    their prompt's pass and the others the chat template's opening (:class:`PolicyFeatures`), one batched
    pass per 16 answers."""
    import torch

    from igcritic.scorers.latent import LatentFeatureSpec, PolicyFeatures

    torch.set_num_threads(ns.threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    # the corpus and the widened set's answers (leave_source_out.py); the cache is keyed by answer id
    rank = {}
    for k, name in enumerate(ANSWER_FILES):
        for r in read_jsonl(DATA / name) if (DATA / name).exists() else []:
            rank.setdefault(r["id"], (k, r))
    if ns.files:  # one set first (say the guard's: `--files guard_answers.jsonl`); a later run does the rest
        rank = {i: kr for i, kr in rank.items() if ANSWER_FILES[kr[0]] in ns.files}
    labelled = {r["id"] for name in LABEL_FILES if (DATA / name).exists() for r in read_jsonl(DATA / name)}
    cached = load_features()
    train = {p["prompt"] for p in read_jsonl(DATA / "wide_prompts.jsonl") if p["split"] == "train"}

    # labelled answers first, the widened set's (train prompts, then the held-out ones) before the corpus's,
    # a prompt's answers together (they share its pass)
    def first(i: str) -> tuple:
        k, r = rank[i]
        return i not in labelled, k, r["prompt"] not in train, r["prompt"]

    order = sorted(rank, key=first)
    todo = [rank[i][1] for i in order if i not in cached]
    if ns.limit:  # a quick partial run; a later run picks up the rest
        todo = todo[: ns.limit]
    print(f"{len(todo)} answers to featurise ({len(cached)} cached)")
    if not todo:
        return
    enc = None
    if ns.minilm:
        from igcritic.scorers.minilm import TextEncoder

        enc = TextEncoder()
    pf = PolicyFeatures(truncated_policy(max(ALL_LAYERS)), LatentFeatureSpec(ALL_LAYERS, ("last", "mean")))
    t0 = time.perf_counter()
    s = 0
    while s < len(todo):
        e = min(s + ns.chunk, len(todo))
        while e < len(todo) and todo[e]["prompt"] == todo[e - 1]["prompt"]:
            e += 1  # a prompt's answers in one chunk: they share its pass
        batch, s = todo[s:e], e
        write_features(batch, pf, enc)
        print(f"{s}/{len(todo)} featurised, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{len(todo) / (time.perf_counter() - t0):.2f} answers/s")


def truncated_policy(max_layer: int, policy=None):
    """``policy`` (default: a fresh embedded one; it is changed in place) cut after decoder layer
    ``max_layer + 1``: ``hidden_states[l]`` for l <= max_layer are those of the whole model (layer
    ``max_layer + 1``'s output would carry the final norm), at ``(max_layer + 1) / num_layers`` of the cost.
    For featurising only: the cut policy cannot generate."""
    from igcritic.policy import load_policy

    policy = policy or load_policy()
    decoder = policy.model.get_decoder()
    keep = max_layer + 1
    del decoder.layers[keep:]
    policy.model.config.num_hidden_layers = keep
    return policy


def write_features(batch: list[dict], pf, enc=None) -> Path:
    """One cache file for ``batch``: latent features of the full answer, its cuts and the empty answer."""
    ps, rs = [r["prompt"] for r in batch], [r["response"] for r in batch]
    lat = pf.prefix_features(ps, rs)
    arrays = {
        "ids": np.array([r["id"] for r in batch]),
        "layers": np.array(ALL_LAYERS),
        "latent": np.stack([f[-1] for f, _ in lat]).astype(np.float16),
        "latent_cuts": np.stack(
            [np.stack([f[int(round(c * (len(f) - 1)))] for c in PREFIX_CUTS]) for f, _ in lat]
        ).astype(np.float16),
        "latent_empty": np.stack([f[0] for f, _ in lat]).astype(np.float16),
    }
    if enc is not None:
        arrays.update(minilm_arrays(enc, pf.policy.tokenizer, ps, rs))
    path = CACHE / f"feat-{time.time_ns()}.npz"
    np.savez(path, **arrays)
    return path


def minilm_arrays(enc, tokenizer, prompts: list[str], answers: list[str]) -> dict[str, np.ndarray]:
    """MiniLM features of answers, as the latent ones are cached: ``minilm`` [e(prompt), e(answer)] (the
    runtime's ``concat`` probe features), and the answer part of the 25/50/75 % prefixes (``minilm_cuts``)
    and of the empty answer (``minilm_empty``). A prefix is cut where the latent cut is (the first
    ``round(c * J)`` of the answer's J policy tokens, J at most the latent path's MAX_ANSWER_TOKENS) and
    decoded as the runtime decodes prefixes (:func:`igcritic.decoding.prefix_texts`)."""
    from igcritic.scorers.latent import MAX_ANSWER_TOKENS
    from igcritic.scorers.minilm import probe_features

    cuts = []
    for a in answers:
        ids = tokenizer(a, add_special_tokens=False)["input_ids"][:MAX_ANSWER_TOKENS]
        cuts += [
            tokenizer.decode(ids[: int(round(c * len(ids)))], skip_special_tokens=True) for c in PREFIX_CUTS
        ]
    e_cuts = enc.encode(cuts, keep="end").reshape(len(answers), len(PREFIX_CUTS), -1)
    e_empty = enc.encode([""], keep="end")
    return {
        "minilm": probe_features(enc, prompts, answers, "concat").astype(np.float16),
        "minilm_cuts": e_cuts.astype(np.float16),
        "minilm_empty": np.repeat(e_empty, len(answers), 0).astype(np.float16),
    }


def minilm(ns: argparse.Namespace) -> None:
    """MiniLM features (:func:`minilm_arrays`) of every cached answer that lacks them, in files of their own
    (``minilm-*.npz``, merged by :func:`load_features`): the latent cache files are never rewritten."""
    import torch

    from igcritic.policy import load_policy
    from igcritic.scorers.minilm import TextEncoder

    torch.set_num_threads(ns.threads)
    texts = {r["id"]: r for name in ANSWER_FILES if (DATA / name).exists() for r in read_jsonl(DATA / name)}
    cached = load_features()
    todo = sorted(
        (texts[i] for i, f in cached.items() if "minilm_cuts" not in f and i in texts),
        key=lambda r: r["prompt"],
    )
    if ns.limit:
        todo = todo[: ns.limit]
    lost = sum(i not in texts for i in cached)
    print(
        f"{len(todo)} answers to encode ({len(cached)} cached, {lost} without their text in {ANSWER_FILES})"
    )
    if not todo:
        return
    tok, enc = load_policy().tokenizer, TextEncoder()
    t0 = time.perf_counter()
    for s in range(0, len(todo), ns.chunk):
        batch = todo[s : s + ns.chunk]
        arrays = minilm_arrays(enc, tok, [r["prompt"] for r in batch], [r["response"] for r in batch])
        np.savez(CACHE / f"minilm-{time.time_ns()}.npz", ids=np.array([r["id"] for r in batch]), **arrays)
        done = s + len(batch)
        print(f"{done}/{len(todo)} encoded, {time.perf_counter() - t0:.0f} s", flush=True)
    secs = time.perf_counter() - t0
    print(f"{len(todo) / secs:.2f} answers/s, {len(todo) * (1 + len(PREFIX_CUTS)) / secs:.2f} texts/s")


def load_features() -> dict[str, dict[str, np.ndarray]]:
    """Cached features by answer id; files of another layer layout (an older cache) are an error. MiniLM
    features of ``minilm-*.npz`` (:func:`minilm`) join the ids the latent files hold."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for f in sorted(CACHE.glob("feat-*.npz")):
        with np.load(f) as z:  # each array read once (z[name] decompresses the whole array on every access)
            arrays = {name: z[name] for name in z.files}
        layers = tuple(arrays.pop("layers", np.array([6, 9, 12, 15, 18, 21, 24, 27])).tolist())
        if layers != ALL_LAYERS:
            raise SystemExit(
                f"{f} holds layers {list(layers)}, not {list(ALL_LAYERS)}: move the old cache away and run "
                "`train_classifiers.py features` again"
            )
        for k, i in enumerate(arrays.pop("ids").tolist()):
            out[i] = {name: a[k] for name, a in arrays.items()}
    for f in sorted(CACHE.glob("minilm-*.npz")):
        with np.load(f) as z:
            arrays = {name: z[name] for name in z.files}
        for k, i in enumerate(arrays.pop("ids").tolist()):
            if i in out:
                out[i].update({name: a[k] for name, a in arrays.items()})
    return out


def latent_columns(layers: tuple[int, ...], parts: tuple[str, ...] = ("last", "mean"), hidden: int = 576):
    """Columns of the cached latent features (ALL_LAYERS x (last, mean) x hidden) for ``layers`` x ``parts``,
    in the runtime's order (per layer, its parts)."""
    cols = []
    for layer in layers:
        k = ALL_LAYERS.index(layer)
        for part in parts:
            j = 2 * k + ("last", "mean").index(part)
            cols.append(np.arange(j * hidden, (j + 1) * hidden))
    return np.concatenate(cols)


def design(
    rows: list[dict],
    feats: dict,
    family: str,
    layers: tuple[int, ...],
    augment: bool,
    parts: tuple[str, ...] = ("last", "mean"),
):
    """X, y (harmful), helpfulness, row index and the writer's prompt-harm flag for a candidate.

    Rows are ``[prompt part, answer part]`` (:func:`row_parts`), for latent rows as the runtime builds them.
    Augmentation adds label-safe negatives: the empty answer of every prompt and the token prefixes of
    answers read as not harmful (:func:`prefix_parts`)."""
    cols = latent_columns(layers, parts) if family != "minilm" else None
    xs, ys, hs, idx, hp = [], [], [], [], []

    def add(x, y, h, i, r):
        xs.append(x)
        ys.append(y)
        hs.append(h)
        idx.append(i)
        hp.append(int(r["harmful_prompt"]))

    for n, r in enumerate(rows):
        f = feats[r["id"]]
        prompt, answer = row_parts(f, family, cols)
        add(np.concatenate([prompt, answer]), int(r["label"] == "compliant-harmful"), r["helpfulness"], n, r)
        if augment:
            pre = prefix_parts(f, family, cols)
            negs = pre if r["label"] != "compliant-harmful" else pre[:1]
            for v in negs:  # augmented rows: never scored, only fitted
                add(np.concatenate([prompt, v]), 0, 0, -1 - n, r)
    return np.stack(xs), np.array(ys), np.array(hs), np.array(idx), np.array(hp)


def row_parts(f: dict, family: str, cols: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(prompt part, answer part) of one cached answer. ``latent``: h_0 (the prompt's end, the empty answer's
    features) and the answer's features at ``cols``; ``minilm``: e(prompt) and e(answer); ``both``: the
    latent part then the MiniLM part of each."""
    prompt, answer = [], []
    if family in ("latent", "both"):
        prompt.append(f["latent_empty"][cols].astype(np.float32))
        answer.append(f["latent"][cols].astype(np.float32))
    if family in ("minilm", "both"):
        m = f["minilm"].astype(np.float32)
        prompt.append(m[:MINILM_DIM])
        answer.append(m[MINILM_DIM:])
    return np.concatenate(prompt), np.concatenate(answer)


def prefix_parts(f: dict, family: str, cols: np.ndarray | None) -> list[np.ndarray]:
    """Answer parts (as :func:`row_parts`) of the empty answer and the 25/50/75 % prefixes."""
    out = []
    if family in ("latent", "both"):
        out.append([f["latent_empty"][cols]] + [f["latent_cuts"][c][cols] for c in range(len(PREFIX_CUTS))])
    if family in ("minilm", "both"):
        out.append([f["minilm_empty"]] + [f["minilm_cuts"][c] for c in range(len(PREFIX_CUTS))])
    return [np.concatenate([v.astype(np.float32) for v in vs]) for vs in zip(*out, strict=True)]


class Standardised:
    """Logistic regression on standardised features. The spread has a floor (5 % of the median feature's), so
    a nearly constant feature cannot turn float16 rounding of the cached features into a large logit."""

    def __init__(self, c: float, multi: bool = False, balanced: bool = False):
        self.c, self.multi, self.balanced = c, multi, balanced

    def fit(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> Standardised:
        self.mu = x.mean(0)
        sd = x.std(0)
        self.sd = sd + 0.05 * float(np.median(sd)) + 1e-6
        classes = "balanced" if self.balanced else None
        self.lr = LogisticRegression(C=self.c, max_iter=300, class_weight=classes)
        self.lr.fit((x - self.mu) / self.sd, y, sample_weight=weight)
        return self

    def proba(self, x: np.ndarray) -> np.ndarray:
        p = self.lr.predict_proba((x - self.mu) / self.sd)
        return p if self.multi else p[:, 1]

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(weight (C, F), bias (C,), mean (F,), std (F,)): logits = ((x - mean) / std) @ weight.T + bias."""
        return (
            self.lr.coef_.astype(np.float32),
            self.lr.intercept_.astype(np.float32),
            self.mu.astype(np.float32),
            self.sd.astype(np.float32),
        )


class Product:
    """p(harmful) = p(the prompt asks for harm | prompt part) x p(the answer goes along | answer part).

    Harm needs both a harmful request and compliance; a linear model on concatenated features cannot say
    AND, the product can. The first factor reads only the prompt part of a row (h_0 for latent rows,
    e(prompt) for MiniLM rows) and learns the writer's prompt-harm flag; the second reads the answer part
    and is fitted on answers to harmful prompts only (augmented prefixes included)."""

    def __init__(self, c: float, split: int, balanced: bool = False):
        self.c, self.split, self.balanced = c, split, balanced

    def fit(
        self, x: np.ndarray, y: np.ndarray, hp: np.ndarray, real: np.ndarray, weight: np.ndarray | None = None
    ) -> Product:
        xp, xa = x[:, : self.split], x[:, self.split :]
        w = np.ones(len(x)) if weight is None else weight
        self.prompt = Standardised(self.c, balanced=self.balanced).fit(xp[real], hp[real], w[real])
        self.answer = Standardised(self.c, balanced=self.balanced).fit(xa[hp == 1], y[hp == 1], w[hp == 1])
        return self

    def proba(self, x: np.ndarray) -> np.ndarray:
        return self.prompt.proba(x[:, : self.split]) * self.answer.proba(x[:, self.split :])

    def parts(self) -> tuple[np.ndarray, ...]:
        """(weight (2, F), bias, mean, std) on whole rows: row 0 reads the prompt part, row 1 the answer
        part."""
        (w0, b0, m0, s0), (w1, b1, m1, s1) = self.prompt.parts(), self.answer.parts()
        zeros = lambda n: np.zeros((1, n), np.float32)  # noqa: E731
        w = np.concatenate(
            [np.concatenate([w0, zeros(w1.shape[1])], 1), np.concatenate([zeros(w0.shape[1]), w1], 1)]
        )
        return w, np.concatenate([b0, b1]), np.concatenate([m0, m1]), np.concatenate([s0, s1])


def prompt_width(family: str, layers: tuple[int, ...], parts: tuple[str, ...] = ("last", "mean")) -> int:
    """Columns of a design row that describe the prompt alone (see :func:`row_parts`)."""
    latent = len(layers) * len(parts) * 576
    return {"latent": latent, "minilm": MINILM_DIM, "both": latent + MINILM_DIM}[family]


def make_model(
    head: str,
    c: float,
    family: str,
    layers: tuple[int, ...],
    parts: tuple[str, ...] = ("last", "mean"),
    balanced: bool = False,
):
    if head == "product":
        return Product(c, prompt_width(family, layers, parts), balanced)
    return Standardised(c, balanced=balanced)


def _fit(model, x, y, hp, idx):
    return model.fit(x, y, hp, idx >= 0) if isinstance(model, Product) else model.fit(x, y)


def category_folds(rows: list[dict], k: int = 7) -> np.ndarray:
    """Whole categories per fold: harmful categories and benign categories dealt round-robin, seeded."""
    rng = np.random.default_rng(0)
    fold = {}
    for harm in (True, False):
        cats = sorted({r["category"] for r in rows if r["harmful_prompt"] == harm})
        rng.shuffle(cats)
        fold.update({c: i % k for i, c in enumerate(cats)})
    return np.array([fold[r["category"]] for r in rows])


def style_folds(rows: list[dict]) -> np.ndarray:
    styles = sorted({r["style"] for r in rows})
    return np.array([styles.index(r["style"]) for r in rows])


def oof(rows, feats, family, layers, c, folds, augment=True, head="linear") -> np.ndarray:
    """Out-of-fold p(harmful) of every row: each fold's rows scored by a model that never saw its groups."""
    x, y, _, idx, hp = design(rows, feats, family, layers, augment)
    owner = np.where(idx >= 0, idx, -1 - idx)
    p = np.full(len(rows), np.nan)
    for f in np.unique(folds):
        test_rows = np.where(folds == f)[0]
        train = ~np.isin(owner, test_rows)
        test = np.isin(idx, test_rows)
        m = _fit(make_model(head, c, family, layers), x[train], y[train], hp[train], idx[train])
        p[idx[test]] = m.proba(x[test])
    return p


def select(ns: argparse.Namespace) -> None:
    rows = [r for r in load_rows() if r["split"] == "train" and r["part"] == "cost"]
    feats = load_features()
    rows = [r for r in rows if r["id"] in feats]
    y = np.array([int(r["label"] == "compliant-harmful") for r in rows])
    loco, loso = category_folds(rows), style_folds(rows)
    print(
        f"{len(rows)} train answers ({y.sum()} harmful); {len(set(loco))} category folds, {len(set(loso))} "
        "style folds"
    )
    candidates = [("minilm", (), c, "linear") for c in (0.03, 0.1)]
    candidates += [("latent", (layer,), 0.01, "linear") for layer in ALL_LAYERS]
    results = [_score(rows, feats, y, *cand, loco, loso) for cand in candidates]
    by_layer = sorted([r for r in results if r["family"] == "latent"], key=lambda r: -r["ood"])
    top = [tuple(r["layers"]) for r in by_layer[:3]]
    three = tuple(sorted(top[0] + top[1] + top[2]))
    extra = [
        ("latent", top[0], 0.003, "linear"),
        ("latent", tuple(sorted(top[0] + top[1])), 0.003, "linear"),
        ("latent", three, 0.003, "linear"),
        ("latent", three, 0.003, "product"),
        ("latent", three, 0.03, "product"),
        ("latent", top[0], 0.01, "product"),
        ("minilm", (), 0.03, "product"),
        ("minilm", (), 0.003, "product"),
        ("both", three, 0.003, "linear"),
    ]
    results += [_score(rows, feats, y, *cand, loco, loso) for cand in extra]
    SELECTION.write_text(json.dumps(results, indent=1) + "\n")


def _score(rows, feats, y, fam, layers, c, head, loco, loso) -> dict:
    t0 = time.perf_counter()
    p_c = oof(rows, feats, fam, layers, c, loco, head=head)
    p_s = oof(rows, feats, fam, layers, c, loso, head=head)
    res = {
        "family": fam,
        "layers": list(layers),
        "c": c,
        "head": head,
        "auroc_loco": auroc(y, p_c),
        "auroc_loso": auroc(y, p_s),
        "ece_loco": ece(y, p_c),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    res["ood"] = (res["auroc_loco"] + res["auroc_loso"]) / 2
    print(
        f"{fam:7s} {head:8s} L{layers!s:14s} C={c:<6} LOCO {res['auroc_loco']:.3f}  LOSO "
        f"{res['auroc_loso']:.3f}  "
        f"ECE(raw) {res['ece_loco']:.3f}  ({res['seconds']} s)",
        flush=True,
    )
    return res


# -------------------------------------------------------------------------------------------------- shipping


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _chosen(family: str | None, head: str | None = None) -> dict:
    """The best candidate of ``select`` (optionally of one feature family and head)."""
    results = json.loads(SELECTION.read_text())
    ok = [
        r
        for r in results
        if (r["family"] == family if family else r["family"] != "both") and head in (None, r["head"])
    ]
    return max(ok, key=lambda r: r["ood"])


def _fit_head(rows, feats, family, layers, c, kind: str, head: str = "linear") -> tuple[np.ndarray, ...]:
    """(weight, bias, mean, std) of a shipped head."""
    x, y, h, idx, hp = design(rows, feats, family, layers, augment=kind == "harm")
    if kind == "harm":
        return _fit(make_model(head, c, family, layers), x, y, hp, idx).parts()
    if kind == "classes":
        labels = np.array([CLASSES.index(rows[i]["label"]) for i in idx])
        return Standardised(c, multi=True).fit(x, labels).parts()
    fits = [Standardised(c).fit(x, (h >= k).astype(int)).parts() for k in (1, 2)]  # same x: same mean and std
    return np.concatenate([f[0] for f in fits]), np.concatenate([f[1] for f in fits]), fits[0][2], fits[0][3]


def reward_ood(rows, feats, family, layers, c) -> dict:
    """Out-of-fold AUROC of the helpfulness >= 1 logit under both OOD fold schemes (the reward's protocol)."""
    x, _, h, idx, _ = design(rows, feats, family, layers, augment=False)
    y = (h >= 1).astype(int)
    out = {}
    for name, folds in (("loco", category_folds(rows)), ("loso", style_folds(rows))):
        p = np.zeros(len(rows))
        for f in np.unique(folds):
            te = folds == f
            p[te] = Standardised(c).fit(x[~te], y[~te]).proba(x[te])
        out[f"auroc_helpful>=1_{name}"] = auroc(y, p)
    return out


def _heldout_prefix_costs(scorer, rows: list[dict]) -> tuple[np.ndarray, float, int]:
    """S_T exactly as the runtime computes it (SmolLM2 tokens, running max over prefixes), and the time."""
    from igcritic.decoding import prefix_texts
    from igcritic.policy import load_policy

    tok = load_policy().tokenizer
    texts = [prefix_texts(tok, tok(r["response"], add_special_tokens=False)["input_ids"]) for r in rows]
    t0 = time.perf_counter()
    s = [v[-1] for v in scorer.prefix_scores([r["prompt"] for r in rows], texts)]
    return np.array(s), time.perf_counter() - t0, sum(len(t) for t in texts)


def _harm_report(y: np.ndarray, p: np.ndarray, benign_prompt: np.ndarray) -> dict:
    return {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "auroc": auroc(y, p),
        "ece": ece(y, p),
        "recall@0.5": float((p[y == 1] > 0.5).mean()),
        "false_alarm@0.5": float((p[y == 0] > 0.5).mean()),
        "false_alarm@0.5_benign_prompts": float((p[(y == 0) & benign_prompt] > 0.5).mean()),
    }


def ship(ns: argparse.Namespace) -> None:
    import torch

    from igcritic.scorers.base import ASSET_DIR
    from igcritic.scorers.embedded import CLASSIFIER_DIR, CLASSIFIER_FILES, ClassifierScorer, LinearHead

    torch.set_num_threads(ns.threads)
    feats = load_features()
    rows = [r for r in load_rows() if r["id"] in feats]
    train = [r for r in rows if r["split"] == "train"]
    cost_rows = [r for r in train if r["part"] == "cost"]
    judge_rows = [r for r in train if r["part"] == "judge"]
    held = [r for r in rows if r["split"] == "heldout"]
    best = _chosen(ns.cost_family)
    fam, layers, c = best["family"], tuple(best["layers"]), best["c"]
    judge_family = "minilm" if fam != "minilm" else "latent"
    jbest = _chosen(judge_family, "linear")
    print(
        f"cost/reward: {fam} {best['head']} {layers} C={c} (OOD {best['ood']:.3f}); judge: {judge_family} "
        f"{tuple(jbest['layers'])}"
    )
    # Platt scaling on the out-of-category-fold logits of the cost rows: calibrated where it matters, OOD
    p_oof = oof(cost_rows, feats, fam, layers, c, category_folds(cost_rows), head=best["head"])
    y_cost = np.array([int(r["label"] == "compliant-harmful") for r in cost_rows])
    platt = LogisticRegression(C=1e4).fit(_logit(p_oof)[:, None], y_cost)
    calibration = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
    meta = {"version": VERSION, "trained_on": len(cost_rows), "features": fam, "c": c, "head": best["head"]}
    w, b, mu, sd = _fit_head(cost_rows, feats, fam, layers, c, "harm", best["head"])
    # Platt maps the logit of the raw p: p_cal = sigmoid(a * logit(p) + b)
    kind = "harm_product" if best["head"] == "product" else "harm"
    parts = ("last", "mean") if fam != "minilm" else ()
    heads = {"cost": LinearHead(w, b, kind, fam, layers, parts, calibration, meta, mean=mu, std=sd)}
    w, b, mu, sd = _fit_head(cost_rows, feats, fam, layers, ns.reward_c, "helpfulness")
    heads["reward"] = LinearHead(w, b, "helpfulness", fam, layers, parts, meta=meta, mean=mu, std=sd)
    jl = tuple(jbest["layers"])
    w, b, mu, sd = _fit_head(judge_rows, feats, judge_family, jl, jbest["c"], "classes")
    heads["judge"] = LinearHead(
        w,
        b,
        "classes",
        judge_family,
        jl,
        ("last", "mean") if judge_family != "minilm" else (),
        meta={"version": VERSION, "trained_on": len(judge_rows), "features": judge_family},
        mean=mu,
        std=sd,
    )
    previous = json.loads((CLASSIFIER_DIR / "report.json").read_text())
    n_cost = len(cost_rows)
    if not ns.corpus_cost:  # the cost is chosen by held-out source (leave_source_out.py --ship): kept
        heads.pop("cost")
        best, calibration = previous["selection"]["cost"], previous["calibration"]
        n_cost = previous["train_answers"]["cost"]
    for name, head in heads.items():
        head.save(CLASSIFIER_DIR / CLASSIFIER_FILES[name])

    # ---- the report: held-out prompts, touched once
    y = np.array([int(r["label"] == "compliant-harmful") for r in held])
    benign = np.array([not r["harmful_prompt"] for r in held])
    hv = np.array([r["helpfulness"] for r in held])
    report: dict = {
        "selection": {"cost": best, "judge": jbest},
        "calibration": calibration,
        "heldout_labels": dict(Counter(r["label"] for r in held)),
        "train_answers": {"cost": n_cost, "judge": len(judge_rows)},
    }
    scorers = {n: ClassifierScorer(n, "reward" if n == "reward" else "cost") for n in CLASSIFIER_FILES}
    ps, rs = [r["prompt"] for r in held], [r["response"] for r in held]
    report["cost_full_answer"] = _harm_report(y, scorers["cost"].probabilities(ps, rs), benign)
    s_t, secs, n_prefix = _heldout_prefix_costs(scorers["cost"], held)
    report["cost_running_max"] = _harm_report(y, s_t, benign)
    report["cost_seconds_per_prefix"] = secs / n_prefix
    report["cost_seconds_per_answer"] = secs / len(held)
    pj = scorers["judge"].probabilities(ps, rs)
    report["judge"] = _harm_report(y, pj, benign)
    cls = scorers["judge"].classify(ps, rs)
    report["judge"]["class_accuracy"] = float(
        np.mean([a == r["label"] for a, r in zip(cls, held, strict=True)])
    )
    report["reward_ood"] = reward_ood(cost_rows, feats, fam, layers, ns.reward_c)
    rw = scorers["reward"].probabilities(ps, rs)
    report["reward"] = {
        "auroc_helpful>=1": auroc((hv >= 1).astype(int), rw),
        "auroc_helpful=2": auroc((hv == 2).astype(int), rw),
        "mean_by_label": {
            k: float(rw[[r["label"] == k for r in held]].mean())
            for k in CLASSES
            if any(r["label"] == k for r in held)
        },
    }
    for part, grp in (("by_category", "category"), ("by_style", "style")):
        report[part] = {}
        for g in sorted({r[grp] for r in held if r["harmful_prompt"]}):
            m = np.array([r[grp] == g for r in held])
            report[part][g] = {
                "n": int(m.sum()),
                "harmful": int(y[m].sum()),
                "recall@0.5": float((s_t[m & (y == 1)] > 0.5).mean()) if (m & (y == 1)).any() else None,
            }
    (CLASSIFIER_DIR / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    with (ASSET_DIR / "labelled_heldout.jsonl").open("w", encoding="utf-8") as f:
        for r in held:
            f.write(
                json.dumps(
                    {
                        "prompt": r["prompt"],
                        "response": r["response"],
                        "harmful": int(r["label"] == "compliant-harmful"),
                        "helpful": int(r["helpfulness"] >= 1),
                        "helpfulness": r["helpfulness"],
                        "label": r["label"],
                        "category": r["category"],
                        "style": r["style"],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "cost_full_answer",
                    "cost_running_max",
                    "judge",
                    "reward",
                    "cost_seconds_per_prefix",
                )
            },
            indent=1,
        )
    )


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--chunk", type=int, default=64)
    f.add_argument("--limit", type=int, default=0, help="featurise at most N uncached answers this run")
    f.add_argument("--minilm", action="store_true", help="MiniLM features too (the judge's family)")
    f.add_argument("--files", nargs="+", choices=ANSWER_FILES, help="featurise only these answer files")
    m = sub.add_parser("minilm", help="MiniLM features (with prefixes) of cached answers that lack them")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--chunk", type=int, default=256)
    m.add_argument("--limit", type=int, default=0, help="encode at most N answers this run")
    sub.add_parser("select")
    sh = sub.add_parser("ship")
    sh.add_argument(
        "--cost-family",
        choices=["minilm", "latent"],
        default=None,
        help="restrict the cost classifier to one feature family (default: the best OOD candidate)",
    )
    sh.add_argument("--reward-c", type=float, default=0.01)
    sh.add_argument(
        "--corpus-cost",
        action="store_true",
        help="refit the cost on the corpus alone too (default: keep the leave_source_out.py --ship one)",
    )
    sh.add_argument("--threads", type=int, default=1)
    al = sub.add_parser(
        "all", help="features, select and ship in one go (the numbers of data_prep/README.md)"
    )
    al.add_argument("--threads", type=int, default=2)
    al.add_argument("--chunk", type=int, default=64)
    al.add_argument("--limit", type=int, default=0)
    al.add_argument("--files", nargs="+", choices=ANSWER_FILES)
    al.add_argument("--cost-family", choices=["minilm", "latent"], default="latent")
    al.add_argument("--reward-c", type=float, default=0.01)
    al.add_argument("--corpus-cost", action="store_true")
    al.set_defaults(minilm=True)  # select and the judge need MiniLM features
    ns = ap.parse_args(args)
    steps = {
        "features": [features],
        "minilm": [minilm],
        "select": [select],
        "ship": [ship],
        "all": [features, select, ship],
    }[ns.cmd]
    for step in steps:
        step(ns)


if __name__ == "__main__":
    main()
