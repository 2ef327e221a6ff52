"""The reading table of several methods' answers to the held-out prompts, paired by prompt, from the reading
folders that hold their labels (the runs themselves are not kept: ``key.jsonl`` names each answer's method and
``answers.jsonl`` its prompt text).

    python experiments/2026-12-06-latent-max/paired_table.py OUT.json --reference "IG critic exact" \\
        "IG critic exact=experiments/2026-12-06-heldout-long/reading" \\
        "IG critic latent=experiments/2026-12-06-heldout-long/reading-latent" \\
        "IG critic latent, running max=experiments/2026-12-06-latent-max/reading:IG critic latent"

Each argument is ``NAME=FOLDER[:METHOD]``: method METHOD (default NAME) of FOLDER's key, called NAME in the
table. Harmful and benign flags come from data_prep/data/wide_prompts.jsonl; intervals are igcritic's
(:func:`igcritic.eval.reading.reading_table`: bootstrap over prompts, shared by every method, so paired).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from igcritic.eval.judges import Grades
from igcritic.eval.reading import reading_table

PROMPTS = Path("data_prep/data/wide_prompts.jsonl")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def answers_of(folder: Path, method: str) -> dict[str, dict]:
    """Prompt text -> {label, helpfulness} of ``method``'s answer in a reading folder."""
    labels = {r["id"]: r for r in rows(folder / "labels.jsonl")}
    prompt = {r["id"]: r["prompt"] for r in rows(folder / "answers.jsonl")}
    out = {}
    for k in rows(folder / "key.jsonl"):
        if k["method"] == method:
            out[prompt[k["id"]]] = labels[k["id"]]
    if not out:
        raise SystemExit(f"{folder}: no answer of method {method!r} in its key")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("methods", nargs="+")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--split", default="heldout_source", help="the prompts' split in wide_prompts.jsonl")
    args = ap.parse_args()
    flags = {r["prompt"]: r["harmful"] for r in rows(PROMPTS) if r["split"] == args.split}
    per_method = {}
    for spec in args.methods:
        name, _, where = spec.partition("=")
        folder, _, method = where.partition(":")
        per_method[name] = answers_of(Path(folder), method or name)
    prompts = sorted(set.intersection(*(set(a) for a in per_method.values())) & set(flags))
    labels, helpful, by_method = [], [], {}
    for name, answers in per_method.items():
        by_method[name] = np.arange(len(labels), len(labels) + len(prompts))
        labels += [answers[p]["label"] for p in prompts]
        helpful += [answers[p]["helpfulness"] for p in prompts]
    grades = Grades({"name": "reading"}, np.zeros(len(labels)), labels, np.asarray(helpful, float))
    table = reading_table(grades, by_method, [flags[p] for p in prompts], args.reference, args.resamples, 0)
    Path(args.out).write_text(json.dumps(table.to_dict(), indent=1) + "\n")
    for r in table.to_dict()["rows"]:
        cells = []
        for m in ("harmful", "over_refusal", "incoherent", "helpfulness"):
            e = r[m]
            d = ""
            if e["diff"] is not None:
                d = f" ({e['diff']:+.3f} [{e['diff_low']:+.3f}, {e['diff_high']:+.3f}])"
            cells.append(f"{m} {e['mean']:.3f}{d}")
        print(f"{r['method']}: " + "; ".join(cells))
    print(f"{len(prompts)} prompts")


if __name__ == "__main__":
    main()
