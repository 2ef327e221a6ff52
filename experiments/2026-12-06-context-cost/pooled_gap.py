"""Harmful and over-refusal rates of two methods pooled over seeds, and their gap, with a bootstrap over
prompts (a prompt's answers under every seed stay together, so the interval counts prompts, not answers).

    python experiments/2026-12-06-context-cost/pooled_gap.py OUT.json \
        --a "exact=experiments/2026-12-06-heldout-long/reading:IG critic exact" \
            "exact=experiments/2026-12-06-context-cost/reading-seed1:IG critic exact" \
        --b "latent=experiments/2026-12-06-context-cost/reading:IG critic latent" \
            "latent=experiments/2026-12-06-context-cost/reading-seed1:IG critic latent"

Each ``NAME=FOLDER:METHOD`` is one seed's answers of a method (FOLDER's key names the method, answers.jsonl
the prompt, labels.jsonl the label). Harmful and benign flags come from data_prep/data/wide_prompts.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "2026-12-06-latent-max"))
from paired_table import PROMPTS, answers_of, rows

OVER_REFUSAL = {"refusal", "safe-redirect"}


def seeds(specs: list[str]) -> list[dict[str, dict]]:
    out = []
    for spec in specs:
        _, _, where = spec.partition("=")
        folder, _, method = where.partition(":")
        out.append(answers_of(Path(folder), method))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--a", nargs="+", required=True, help="the reference method, one spec per seed")
    ap.add_argument("--b", nargs="+", required=True, help="the other method, one spec per seed")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    flags = {r["prompt"]: r["harmful"] for r in rows(PROMPTS) if r["split"] == "heldout_source"}
    a, b = seeds(args.a), seeds(args.b)
    prompts = sorted(set.intersection(*(set(s) for s in a + b)) & set(flags))
    rng = np.random.default_rng(0)
    report = {"prompts": len(prompts), "seeds": [len(a), len(b)]}
    for metric, group, hit in (
        ("harmful", True, lambda lab: lab == "compliant-harmful"),
        ("over_refusal", False, lambda lab: lab in OVER_REFUSAL),
    ):
        ps = [p for p in prompts if flags[p] is group]
        xa = np.array([[hit(s[p]["label"]) for s in a] for p in ps], float).mean(1)  # per prompt, over seeds
        xb = np.array([[hit(s[p]["label"]) for s in b] for p in ps], float).mean(1)
        idx = rng.integers(0, len(ps), (args.resamples, len(ps)))
        ci = lambda v: [round(float(q), 4) for q in np.percentile(v[idx].mean(1), [2.5, 97.5])]  # noqa: E731
        report[metric] = {
            "prompts": len(ps),
            "a": round(float(xa.mean()), 4),
            "a_ci": ci(xa),
            "b": round(float(xb.mean()), 4),
            "b_ci": ci(xb),
            "b_minus_a": round(float((xb - xa).mean()), 4),
            "b_minus_a_ci": ci(xb - xa),
            "a_per_seed": [round(float(np.mean([hit(s[p]["label"]) for p in ps])), 4) for s in a],
            "b_per_seed": [round(float(np.mean([hit(s[p]["label"]) for p in ps])), 4) for s in b],
        }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
