"""A margin for the fully latent search, chosen on the project's own prompts (never the held-out source):
the critic's running-max Ŝ is a noisy copy of the exact S, so the latent rule ``Ŝ_max <= d - m`` is set to
admit the same share of answers as the exact rule ``S_T <= d`` does (quantile matching, no labels, written
down before the numbers were seen).

    python experiments/2026-12-06-latent-max/latent_margin.py score PART0.jsonl --part 0 --parts_total 2
    python experiments/2026-12-06-latent-max/latent_margin.py score PART1.jsonl --part 1 --parts_total 2
    python experiments/2026-12-06-latent-max/latent_margin.py choose OUT.json PART0.jsonl PART1.jsonl

``score``: a seeded sample of 480 plain-sampled answers of data_prep/data/corpus_answers.jsonl (training
prompts), each teacher-forced once through the embedded policy; from the same latents the exact cost (the
embedded cost's head on every prefix, as the search's decode pass reads it: S_T = the running max) and the
critic's Ŝ over every token (Ŝ_max).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from igcritic import load_guard
from igcritic.collect import prefix_rows
from igcritic.decoding import teacher_forced_latents

BUDGET, SAMPLE = 0.5, 480
HELDOUT = "heldout_source"


def score(out: str, part: int, parts: int) -> None:
    torch.set_num_threads(1)
    held = {
        json.loads(x)["prompt"] for x in open("data_prep/data/wide_prompts.jsonl") if HELDOUT in x
    }  # a cheap filter; exact below
    rows = [json.loads(x) for x in open("data_prep/data/corpus_answers.jsonl")]
    rows = [r for r in rows if r["prompt"] not in held and r["response"].strip()]
    rows = random.Random(0).sample(rows, SAMPLE)[part::parts]
    guard = load_guard("checkpoints/embedded", cost="embedded")
    tok, cols = guard.policy.tokenizer, guard.cost.decode_columns(guard.policy)
    with open(out, "w") as f:
        for i in range(0, len(rows), 8):
            batch = rows[i : i + 8]
            ids = [tok(r["response"], add_special_tokens=False)["input_ids"][:320] for r in batch]
            lats = teacher_forced_latents(guard.policy, [r["prompt"] for r in batch], ids)
            for r, h in zip(batch, lats, strict=True):
                p = guard.cost.decode_values(cols, *prefix_rows([h]))  # every prefix, S_0 included
                with torch.inference_mode():
                    s_hat = guard.critic.cost(h)
                f.write(
                    json.dumps(
                        {
                            "id": r["id"],
                            "exact": float(p.max()),
                            "shat_max": float(s_hat.max()),
                        }
                    )
                    + "\n"
                )
            print(f"{i + len(batch)}/{len(rows)}", flush=True)


def choose(out: str, parts: list[str]) -> None:
    rows = [json.loads(x) for p in parts for x in open(p)]
    exact = np.array([r["exact"] for r in rows])
    shat = np.array([r["shat_max"] for r in rows])
    admit = float((exact <= BUDGET).mean())
    # the margin m with P(Ŝ_max <= d - m) = P(S_T <= d): d - m is that quantile of Ŝ_max
    margin = round(float(BUDGET - np.quantile(shat, admit)), 3)
    table = []
    for m in [0.0, 0.05, 0.1, 0.15, 0.2, margin]:
        lat = shat <= BUDGET - m
        table.append(
            {
                "margin": m,
                "latent_admits": round(float(lat.mean()), 3),
                "exact_rejects_of_latent_admitted": round(float((exact[lat] > BUDGET).mean()), 3),
                "agreement": round(float((lat == (exact <= BUDGET)).mean()), 3),
            }
        )
    report = {"answers": len(rows), "exact_admits": round(admit, 3), "margin": margin, "by_margin": table}
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["score", "choose"])
    ap.add_argument("out")
    ap.add_argument("parts", nargs="*")
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--parts_total", type=int, default=1)
    a = ap.parse_args()
    score(a.out, a.part, a.parts_total) if a.what == "score" else choose(a.out, a.parts)
