"""What featurising read answers for the classifiers costs (``data_prep/train_classifiers.py features``):
answers per second now against the path it replaced, on the same answers in the same run.

    OMP_NUM_THREADS=1 python bench/bench_features.py [--prompts 16 --wide 32 --repeats 1]

Answers: all answers of ``--prompts`` corpus prompts (2-3 each) and ``--wide`` answers of the widened set,
seeded. Before: the whole policy (30 layers, hidden states of layers 6-27) over left-padded batches of 16 in
file order (a corpus prompt's answers never shared a chunk there). Now: the policy cut after layer 22 (layers
6-21), a prompt's answers in one chunk sharing its pass, the others sharing the chat template's opening.
MiniLM (computed before, now only with ``--minilm``) is left out of both. Prints both rates, their ratio and
the largest difference between the two paths' features of layers 6-21 (float rounding only).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data_prep"))

from train_classifiers import ALL_LAYERS, DATA, truncated_policy  # noqa: E402

from igcritic.policy import load_policy  # noqa: E402
from igcritic.scorers.latent import LatentFeatureSpec, PolicyFeatures  # noqa: E402


def sample(n_prompts: int, n_wide: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    corpus = [json.loads(x) for x in (DATA / "corpus_answers.jsonl").read_text().splitlines() if x.strip()]
    wide = [json.loads(x) for x in (DATA / "wide_answers.jsonl").read_text().splitlines() if x.strip()]
    prompts = set(rng.sample(sorted({r["prompt"] for r in corpus}), n_prompts))
    rows = [r for r in corpus if r["prompt"] in prompts] + rng.sample(wide, n_wide)
    rng.shuffle(rows)  # file order: a prompt's answers apart
    return rows


def before(rows: list[dict]) -> tuple[float, list]:
    pf = PolicyFeatures(load_policy(), LatentFeatureSpec((6, 9, 12, 15, 18, 21, 24, 27), ("last", "mean")))
    t0 = time.perf_counter()
    out: list = [None] * len(rows)
    for s in range(0, len(rows), 64):
        chunk = rows[s : s + 64]
        enc = [pf._encode(r["prompt"], r["response"]) for r in chunk]
        part: list = [None] * len(chunk)
        pf._padded_passes(enc, list(range(len(chunk))), part)
        out[s : s + len(chunk)] = part
    return time.perf_counter() - t0, out


def now(rows: list[dict]) -> tuple[float, list]:
    pf = PolicyFeatures(truncated_policy(max(ALL_LAYERS)), LatentFeatureSpec(ALL_LAYERS, ("last", "mean")))
    order = sorted(range(len(rows)), key=lambda i: rows[i]["prompt"])
    t0 = time.perf_counter()
    feats = pf.prefix_features([rows[i]["prompt"] for i in order], [rows[i]["response"] for i in order])
    secs = time.perf_counter() - t0
    out: list = [None] * len(rows)
    for i, f in zip(order, feats, strict=True):
        out[i] = f
    return secs, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--wide", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = sample(args.prompts, args.wide)
    t_before, t_now = [], []
    for _ in range(args.repeats):  # alternated: a busy machine slows both sides alike
        t, old = before(rows)
        t_before.append(t)
        t, new = now(rows)
        t_now.append(t)
    width = len(ALL_LAYERS) * 2 * 576  # layers 6-21 lead both layouts
    diff = max(float(np.abs(a[0][:, :width] - b[0]).max()) for a, b in zip(old, new, strict=True))
    scale = max(float(np.abs(a[0][:, :width]).max()) for a in old)
    rb, rn = len(rows) / np.median(t_before), len(rows) / np.median(t_now)
    print(f"{len(rows)} answers, {args.repeats} repeat(s), one thread")
    print(f"before: {rb:.2f} answers/s ({np.median(t_before):.1f} s)")
    print(f"now:    {rn:.2f} answers/s ({np.median(t_now):.1f} s)")
    print(f"ratio now / before: {rn / rb:.2f}x")
    print(f"largest feature difference {diff:.2g} (largest value {scale:.0f})")


if __name__ == "__main__":
    main()
