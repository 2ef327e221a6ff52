"""One method's answers to all 170 held-out-source prompts, joined from the runs that answered parts of it,
as a run folder that `igcritic eval --run` reads (records.jsonl + a minimal results.json). Every record's
prompt_index becomes the prompt's position among the 170 PyRIT prompts of data_prep/data/wide_prompts.jsonl
(split heldout_source), so runs of the 80-prompt subset and of the other 90 line up with the plain-sampling
run of all 170 (runs/eval/heldout-source, which stopped before writing its results.json).

    python experiments/2026-12-06-heldout-long/join_runs.py OUT NAME RUN:METHOD [RUN:METHOD ...]
    # e.g. runs/eval/all170-critic "IG critic exact" runs/eval/wide-short:"IG critic exact" \
    #      runs/eval/long-critic:"IG critic exact"
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines() if x.strip()]


def main(out: str, name: str, parts: list[str]) -> None:
    rows = [json.loads(x) for x in (ROOT / "data_prep/data/wide_prompts.jsonl").open()]
    order = {r["prompt"]: k for k, r in enumerate(r for r in rows if r["split"] == "heldout_source")}
    joined: dict[int, dict] = {}
    for part in parts:
        run, method = part.split(":", 1)
        for r in records(Path(run)):
            if r["method_name"] == method:
                k = order[r["prompt"]]
                if k in joined:
                    raise SystemExit(f"prompt {k} is answered twice ({part}); join runs of disjoint prompts")
                joined[k] = {**r, "method_name": name, "prompt_index": k}
    if len(joined) != len(order):
        raise SystemExit(f"{len(joined)} of {len(order)} prompts answered; give runs that cover all of them")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=False)
    recs = [joined[k] for k in sorted(joined)]
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    wall = sum(float(r.get("seconds") or 0.0) for r in recs)
    results = {
        "config": {"seed": 0, "joined_from": parts},
        "budget": 0.5,
        "reference": name,
        "summary": [{"method": name, "wall_seconds": wall}],
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{len(recs)} answers of {name!r} -> {folder}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
