"""Export PKU-SafeRLHF prompts to JSONL for ``igcritic collect`` (real runs; needs the Hugging Face hub).

    python data_prep/pku_saferlhf.py --split train --limit 2000 --out data/pku_train.jsonl
    python data_prep/pku_saferlhf.py --split test --out data/pku_test.jsonl

Each output line is ``{"prompt": ...}``; prompts are de-duplicated (the dataset has two responses per prompt
and the same prompt under several source models) and kept in dataset order, so ``--limit N`` is the first N
distinct prompts. The dataset (``PKU-Alignment/PKU-SafeRLHF``, CC BY-NC 4.0: research use only, never bundled
with igcritic) is pinned to ``REVISION``; override it with ``--revision`` (``v0`` is the release the beaver
v1.0 models were trained on). This script cannot run on the offline development machines (no hub access);
it is exercised only where the hub is reachable. The pinned commit is the one public references cite for the
current release; if the hub rejects it, pass ``--revision main`` and record the commit it resolves to.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATASET_ID = "PKU-Alignment/PKU-SafeRLHF"
REVISION = "9421ffafec3fa40a1f1a7d567b4d525079477ecb"
PROMPT_FIELD = "prompt"


class ExportError(ValueError):
    """The export cannot run with the given flags."""


def distinct_prompts(rows, limit: int | None = None) -> list[str]:
    """First ``limit`` distinct, non-empty prompts of an iterable of dataset rows, in order."""
    seen: dict[str, None] = {}
    for row in rows:
        p = (row.get(PROMPT_FIELD) or "").strip()
        if p and p not in seen:
            seen[p] = None
            if limit is not None and len(seen) >= limit:
                break
    return list(seen)


def export(
    split: str = "train",
    limit: int | None = None,
    out: Path = Path("pku_saferlhf.jsonl"),
    revision: str = REVISION,
    subset: str | None = None,
) -> int:
    """Write the prompts of one split to ``out``; returns how many were written."""
    if limit is not None and limit < 1:
        raise ExportError(f"--limit {limit} must be >= 1 (or left out for all prompts)")
    if out.exists() and out.stat().st_size:
        raise ExportError(f"{out} exists and is not empty; pass another --out or delete it")
    from datasets import load_dataset

    ds = load_dataset(DATASET_ID, name=subset, split=split, revision=revision, streaming=limit is not None)
    prompts = distinct_prompts(ds, limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({PROMPT_FIELD: p}, ensure_ascii=False) + "\n")
    tmp.rename(out)
    return len(prompts)


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument("--limit", type=int, default=None, help="keep the first N distinct prompts")
    ap.add_argument("--out", type=Path, default=Path("pku_saferlhf.jsonl"))
    ap.add_argument("--revision", default=REVISION, help="dataset commit or tag (default: the pinned commit)")
    ap.add_argument(
        "--subset", default=None, help="dataset config: alpaca-7b, alpaca2-7b, alpaca3-8b (default all)"
    )
    ns = ap.parse_args(args)
    n = export(ns.split, ns.limit, ns.out, ns.revision, ns.subset)
    print(f"wrote {n} prompts from {DATASET_ID}@{ns.revision} ({ns.split}) to {ns.out}")


if __name__ == "__main__":
    main()
