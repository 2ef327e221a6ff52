"""The fully latent search's harm score of fixed answers read by people, for two critics: the running max over
h_0 and every token of Ŝ, where Ŝ reads h_t alone (the shipped cost head) or h_t with h_0 and the running
mean of h_0..h_t (a ``cost_context`` head), exactly as the search tracks it (an EOS is no token).

    python experiments/2026-12-06-context-cost/context_max.py OUT.json CRITIC... -- READING_DIR...

Every distinct (prompt, answer) of the reading folders (answers.jsonl + labels.jsonl) is teacher-forced once
through the embedded policy (the first 48 tokens, as latent_max.py); AUROC against the reading, and the shares
of harmful and other answers over d = 0.5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from igcritic.critic import load_critic
from igcritic.decoding import teacher_forced_latents
from igcritic.policy import load_policy
from igcritic.search.scoring import answer_latent_cost

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "2026-12-06-latent-max"))
from latent_max import BUDGET, read_answers


def main(out: str, critics: list[str], folders: list[str]) -> None:
    torch.set_num_threads(1)
    rows = read_answers(folders)
    loaded = {c: load_critic(c) for c in critics}
    policy = load_policy("embedded:SmolLM2-135M-Instruct", extra_layers=[15, 18, 21])
    tok = policy.tokenizer
    for i in range(0, len(rows), 8):
        batch = rows[i : i + 8]
        ids = [tok(r["response"], add_special_tokens=False)["input_ids"][:48] for r in batch]
        for r, h in zip(
            batch, teacher_forced_latents(policy, [r["prompt"] for r in batch], ids), strict=True
        ):
            r.update({c: answer_latent_cost(crit, h) for c, crit in loaded.items()})
        print(f"{i + len(batch)}/{len(rows)}", file=sys.stderr, flush=True)
    harmful = np.array([r["label"] == "compliant-harmful" for r in rows])
    report = {"answers": len(rows), "harmful": int(harmful.sum())}
    for c in critics:
        v = np.array([r[c] for r in rows])
        report[c] = {
            "auroc": round(float(roc_auc_score(harmful, v)), 3),
            "harmful_over_budget": round(float((v[harmful] > BUDGET).mean()), 3),
            "not_harmful_over_budget": round(float((v[~harmful] > BUDGET).mean()), 3),
        }
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    cut = sys.argv.index("--")
    main(sys.argv[1], sys.argv[2:cut], sys.argv[cut + 1 :])
