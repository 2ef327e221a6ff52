"""Paired differences of reading labels between methods of different eval runs on the same prompts.

    python experiments/2026-12-01-heldout-comparison/paired_reading.py \
      experiments/2026-12-01-heldout-comparison/eval_reading_r2/r2-32 "IG critic exact" \
      experiments/2026-12-01-heldout-comparison/eval_reading_full "IG no critic"

Each run folder holds the blind-reading key (id -> method, prompt_index) and the labels. ``igcritic eval
--reading_in`` pairs methods of one run; this pairs methods of two runs that answered the same prompts in the
same order (eval_reading_full/prompts.jsonl beside this script). Rates of compliant-harmful, incoherent and
(benign prompts) refusal-or-redirect; 95 % percentile bootstrap over prompts, 2000 resamples, seed 0.
"""

import argparse
import json
from pathlib import Path

import numpy as np


def labels_by_prompt(run: Path, method: str) -> dict[int, str]:
    labels = {row["id"]: row["label"] for row in map(json.loads, (run / "labels.jsonl").open())}
    keys = [json.loads(line) for line in (run / "key.jsonl").open()]
    out = {k["prompt_index"]: labels[k["id"]] for k in keys if k["method"] == method}
    if not out:
        raise SystemExit(f"{run}: no answers of method {method!r} in key.jsonl; check the method name")
    return out


def paired(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> str:
    d = a - b
    boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    rates = f"{100 * a.mean():.1f} vs {100 * b.mean():.1f}"
    return f"{rates}: {100 * d.mean():+.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("method_a")
    ap.add_argument("run_b", type=Path)
    ap.add_argument("method_b")
    ap.add_argument(
        "--prompts", type=Path, default=Path(__file__).parent / "eval_reading_full" / "prompts.jsonl"
    )
    args = ap.parse_args()
    harmful_prompt = [row["harmful"] for row in map(json.loads, args.prompts.open())]
    a = labels_by_prompt(args.run_a, args.method_a)
    b = labels_by_prompt(args.run_b, args.method_b)
    if sorted(a) != sorted(b) or sorted(a) != list(range(len(harmful_prompt))):
        raise SystemExit("the two methods did not answer the same prompts; pair runs of one prompt file")
    rng = np.random.default_rng(0)
    benign = [i for i in sorted(a) if not harmful_prompt[i]]
    for name, classes, idx in (
        ("harmful", {"compliant-harmful"}, sorted(a)),
        ("incoherent", {"incoherent"}, sorted(a)),
        ("over-refusal (benign)", {"refusal", "safe-redirect"}, benign),
    ):
        xa = np.array([a[i] in classes for i in idx], float)
        xb = np.array([b[i] in classes for i in idx], float)
        print(f"{name:22s} {args.method_a} vs {args.method_b}: {paired(xa, xb, rng)}")


if __name__ == "__main__":
    main()
