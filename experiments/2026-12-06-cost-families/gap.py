"""Paired bootstrap of the per-source AUROC gap between the best heads of the family comparison and the
latent ones, under leave-one-source-out on the train rows (the same folds as ``leave_source_out.py``;
nothing of the held-out source or the held-out prompts is read).

    OMP_NUM_THREADS=1 python experiments/2026-12-06-cost-families/gap.py   # -> gap.json beside it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "data_prep"))

import leave_source_out as lso  # noqa: E402
from train_classifiers import load_features  # noqa: E402

PAIRS = [
    (lso.Candidate(family="both", head="fusion", c=0.03), lso.SHIPPED_FORM),
    (lso.Candidate(family="both", head="fusion", c=0.03), lso.Candidate(head="product", balanced=True)),
    (
        lso.Candidate(family="both", head="fusion", c=0.01, balanced=True),
        lso.Candidate(head="product", balanced=True),
    ),
    (lso.Candidate(family="minilm", head="product", c=0.1), lso.Candidate(head="product", c=0.01)),
]


def main() -> None:
    feats = load_features()
    train = [r for r in lso.load_rows() if r["id"] in feats and r["split"] == "train"]
    y = np.array([int(r["label"] == "compliant-harmful") for r in train])
    folds = lso.source_folds(train)
    p: dict[str, np.ndarray] = {}
    for cand in dict.fromkeys(c for pair in PAIRS for c in pair):
        d = lso.Design(train, feats, cand.layers, cand.parts, cand.family)
        p[cand.name], _ = lso.oof_scores(cand, d, folds)
        del d
    out = {f"{a.name} - {b.name}": lso.auroc_gap(y, p[a.name], p[b.name], train) for a, b in PAIRS}
    (HERE / "gap.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
