"""What labelling every answer prefix with a cost costs, per feature family of
``data_prep/leave_source_out.py``: the shipped latent cost head (every prefix from one teacher-forced pass of
the policy's first layers) against a MiniLM head ([e(prompt), e(prefix)], one encoder pass per scored
prefix) on the same answers in the same run.

    OMP_NUM_THREADS=1 python bench/bench_cost_prefix.py [--answers 24 --stride 1]

Answers: ``--answers`` read answers to train prompts, seeded. Both heads go through the runtime's scorer
(:class:`igcritic.scorers.embedded.ClassifierScorer`); the MiniLM head has random weights (its cost is the
encoder pass, not the head), scored at every ``--stride``-th prefix (1: every prefix, as the latent head
is) and forward-filled. A ``both`` head would pay the two passes. Prints seconds per prefix and the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data_prep"))

from train_classifiers import DATA, MINILM_DIM, read_jsonl  # noqa: E402

from igcritic.decoding import prefix_texts  # noqa: E402
from igcritic.policy import load_policy  # noqa: E402
from igcritic.scorers.embedded import ClassifierScorer, LinearHead  # noqa: E402


def sample(n: int, seed: int = 0) -> list[dict]:
    train = {p["prompt"] for p in read_jsonl(DATA / "wide_prompts.jsonl") if p["split"] == "train"}
    rows = [r for r in read_jsonl(DATA / "wide_answers.jsonl") if r["prompt"] in train]
    rows += [r for r in read_jsonl(DATA / "corpus_answers.jsonl") if r["prompt"] in train]
    return random.Random(seed).sample(rows, n)


def timed(scorer: ClassifierScorer, prompts: list[str], texts: list[list[str]]) -> float:
    t0 = time.perf_counter()
    scorer.prefix_scores(prompts, texts)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=int, default=24)
    ap.add_argument("--stride", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = sample(args.answers)
    tok = load_policy().tokenizer
    texts = [prefix_texts(tok, tok(r["response"], add_special_tokens=False)["input_ids"]) for r in rows]
    prompts = [r["prompt"] for r in rows]
    n = sum(len(t) for t in texts)
    latent = ClassifierScorer("cost", "cost")
    latent.prefix_scores(prompts[:1], [texts[0][:2]])  # load the policy outside the clock
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        w = rng.normal(size=(1, 2 * MINILM_DIM)).astype(np.float32)
        LinearHead(w, np.zeros(1, np.float32), "harm", "minilm").save(Path(tmp) / "minilm.safetensors")
        minilm = ClassifierScorer("cost", "cost", stride=args.stride, path=Path(tmp) / "minilm.safetensors")
    minilm.prefix_scores(["warm up"], [["", "the encoder"]])
    t_lat = timed(latent, prompts, texts)
    t_min = timed(minilm, prompts, texts)
    print(f"{len(rows)} answers, {n} prefixes, one thread")
    print(f"latent (shipped cost): {t_lat / n * 1e3:.3f} ms per prefix ({t_lat:.1f} s)")
    print(f"minilm, stride {args.stride}: {t_min / n * 1e3:.3f} ms per prefix ({t_min:.1f} s)")
    print(f"ratio minilm / latent: {t_min / t_lat:.1f}x")
    print(json.dumps({"prefixes": n, "latent_s_per_prefix": t_lat / n, "minilm_s_per_prefix": t_min / n}))


if __name__ == "__main__":
    main()
