"""Which running statistic of the critic's Ŝ should the fully latent search track? Chosen on the read corpus
(data_prep/data/corpus_labels.jsonl: 2,312 plain-sampled answers to TRAINING prompts, read blind), never on
the held-out source. The rule, written before the numbers: among the running max of Ŝ smoothed over a
window of w tokens (w = 1: the plain running max), take the w with the highest recall of harmful answers at
d = 0.5 whose false alarms on the other answers are at most the exact cost's own on the same answers.

    python experiments/2026-12-06-latent-max/latent_window.py \
        experiments/2026-12-06-latent-max/latent_window.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from igcritic import load_guard
from igcritic.collect import prefix_rows
from igcritic.decoding import teacher_forced_latents

BUDGET, WINDOWS = 0.5, (1, 2, 4, 8, 16)


def smoothed_max(s_hat: np.ndarray, w: int) -> float:
    """Max over t of the mean of Ŝ over the w tokens ending at t (fewer at the start), with Ŝ(h_0)."""
    c = np.concatenate([[0.0], np.cumsum(s_hat)])
    t = np.arange(1, len(s_hat) + 1)
    lo = np.maximum(t - w, 0)
    return float(((c[t] - c[lo]) / (t - lo)).max())


def main(out: str) -> None:
    torch.set_num_threads(1)
    rows = [json.loads(x) for x in open("data_prep/data/corpus_labels.jsonl")]
    rows = [r for r in rows if r["response"].strip()]
    guard = load_guard("checkpoints/embedded", cost="embedded")
    tok, cols = guard.policy.tokenizer, guard.cost.decode_columns(guard.policy)
    scores = {"exact": [], "last": [], **{f"window{w}": [] for w in WINDOWS}}
    for i in range(0, len(rows), 8):
        batch = rows[i : i + 8]
        ids = [tok(r["response"], add_special_tokens=False)["input_ids"][:320] for r in batch]
        lats = teacher_forced_latents(guard.policy, [r["prompt"] for r in batch], ids)
        for h in lats:
            p = guard.cost.decode_values(cols, *prefix_rows([h]))  # every prefix, S_0 included
            with torch.inference_mode():
                s_hat = guard.critic.cost(h).numpy()
            scores["exact"].append(float(p.max()))
            scores["last"].append(float(s_hat[-1]))
            for w in WINDOWS:
                scores[f"window{w}"].append(smoothed_max(s_hat, w))
        print(f"{i + len(batch)}/{len(rows)}", file=sys.stderr, flush=True)
    harmful = np.array([r["label"] == "compliant-harmful" for r in rows])
    report = {"answers": len(rows), "harmful": int(harmful.sum())}
    for k, v in scores.items():
        v = np.array(v)
        report[k] = {
            "auroc": round(float(roc_auc_score(harmful, v)), 3),
            "recall": round(float((v[harmful] > BUDGET).mean()), 3),
            "false_alarms": round(float((v[~harmful] > BUDGET).mean()), 3),
        }
    ok = [w for w in WINDOWS if report[f"window{w}"]["false_alarms"] <= report["exact"]["false_alarms"]]
    report["chosen_window"] = max(ok, key=lambda w: report[f"window{w}"]["recall"]) if ok else None
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
