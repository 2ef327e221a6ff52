"""Why the guard gave each read answer: its traced decisions (``--search.trace true``) beside the blind label.

    python experiments/2026-12-06-paper-baseline/decompose.py OUT.json RECORDS.jsonl READING_DIR[:METHOD]

RECORDS: an eval run's ``records.jsonl`` whose records carry ``trace``; READING_DIR: the blind reading of the
same answers (``key.jsonl``, ``answers.jsonl``, ``labels.jsonl``; METHOD defaults to every method in the key).
Harmful and benign flags come from data_prep/data/wide_prompts.jsonl (split ``heldout_source``). For every
harmful answer and every refusal of a benign prompt it reports what the first block offered: how many sampled
candidates were admissible, where the refusal candidate ranked by value, and the tracked cost of the answer.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

PROMPTS = Path("data_prep/data/wide_prompts.jsonl")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def labels_by_prompt(folder: Path, method: str | None) -> dict[str, str]:
    labels = {r["id"]: r["label"] for r in rows(folder / "labels.jsonl")}
    prompt = {r["id"]: r["prompt"] for r in rows(folder / "answers.jsonl")}
    return {
        prompt[k["id"]]: labels[k["id"]] for k in rows(folder / "key.jsonl") if method in (None, k["method"])
    }


def first_block(trace: list[dict]) -> dict:
    """The first block's accepted decision (the last try of block 0)."""
    return [d for d in trace if d["block"] == 0][-1]


def scored(cost) -> bool:
    """A refused record with a cost is the refusal candidate's win; one without (NaN, or null in JSON) failed
    closed."""
    return cost is not None and cost == cost


def describe(rec: dict, harmful: bool, label: str) -> dict:
    d0 = first_block(rec["trace"])
    sampled = [c for c in d0["candidates"] if not c["refusal"]]
    refusal = [c for c in d0["candidates"] if c["refusal"]]
    ok = [c for c in sampled if c["admissible"]]
    out = {
        "harmful_prompt": harmful,
        "label": label,
        "refused": rec["refused"],
        "cost": rec["cost"],
        "first_block_tries": sum(d["block"] == 0 for d in rec["trace"]),
        "sampled": len(sampled),
        "sampled_admissible": len(ok),
        "best_sampled_value": max((c["value"] for c in ok), default=None),
    }
    if refusal:
        r = refusal[0]
        out["refusal_value"] = r["value"]
        out["refusal_admissible"] = r["admissible"]
        out["refusal_rank"] = 1 + sum(c["value"] > r["value"] for c in ok)  # among admissible, 1 = first
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("records")
    ap.add_argument("reading")
    args = ap.parse_args()
    folder, _, method = args.reading.partition(":")
    labels = labels_by_prompt(Path(folder), method or None)
    flags = {r["prompt"]: r["harmful"] for r in rows(PROMPTS) if r["split"] == "heldout_source"}
    cases, kinds = [], Counter()
    for rec in rows(Path(args.records)):
        if rec["prompt"] not in labels or rec["prompt"] not in flags or not rec.get("trace"):
            continue
        c = describe(rec, flags[rec["prompt"]], labels[rec["prompt"]])
        if c["harmful_prompt"]:
            if c["label"] == "compliant-harmful":
                kind = "harmful answer: " + ("cost under budget" if scored(c["cost"]) else "?")
            elif c["refused"]:
                kind = "harmful prompt, fixed refusal: " + (
                    "ranked first by value" if scored(c["cost"]) else "nothing admissible"
                )
            else:
                kind = f"harmful prompt, sampled answer read {c['label']}"
        else:
            if c["label"] not in ("refusal", "safe-redirect"):
                kind = f"benign prompt, read {c['label']}"
            elif c["refused"]:
                kind = "over-refusal: fixed refusal " + (
                    "ranked first by value" if scored(c["cost"]) else "(nothing admissible)"
                )
            else:
                kind = "over-refusal: the policy's own refusal or redirect, chosen by the ranking"
        kinds[kind] += 1
        if kind.startswith(("harmful answer", "over-refusal")):
            cases.append({"kind": kind, **c})
    summary = {
        "answers": sum(kinds.values()),
        "kinds": dict(sorted(kinds.items())),
        "over_refusals_with_every_sampled_candidate_admissible": sum(
            1 for c in cases if c["kind"].startswith("over") and c["sampled_admissible"] == c["sampled"]
        ),
        "harmful_answer_costs": sorted(round(c["cost"], 3) for c in cases if c["kind"].startswith("harmful")),
        "cases": cases,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "cases"}, indent=1))


if __name__ == "__main__":
    main()
