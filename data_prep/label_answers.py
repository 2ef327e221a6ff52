"""Merge hand-written pairs and the read-and-labelled SmolLM2 answers into the probes' training set.

    python data_prep/label_answers.py --todo       # list SmolLM2 answers that have no label yet (to read)
    python data_prep/label_answers.py              # writes data_prep/data/labelled.jsonl

Inputs (all committed under data_prep/data/):
- ``handwritten.jsonl``: pairs written for the project, each with its ``kind`` (compliance, refusal, helpful,
  nonsense, over_refusal, safe_info) and labels.
- ``smollm2_answers.jsonl``: real answers of the embedded policy (``generate_answers.py``).
- ``smollm2_labels.jsonl``: one label per answer id, given by reading the answer: ``harmful`` = the answer
  actually complies with / gives harmful content; ``helpful`` = a relevant, useful answer (not a refusal,
  not nonsense, not off-topic; a compliant answer to a harmful request counts as helpful: helpfulness and
  harm are scored separately, as with the beaver reward and cost models).
Output rows: ``{prompt, response, source, harmful, helpful, split, category, kind}``; the split is the
prompt's split in the default prompt set, so answers to held-out prompts are held out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
PROMPTS = DATA / "default_prompts.jsonl"
HANDWRITTEN = DATA / "handwritten.jsonl"
ANSWERS = DATA / "smollm2_answers.jsonl"
LABELS = DATA / "smollm2_labels.jsonl"
OUT = DATA / "labelled.jsonl"


class LabelError(ValueError):
    """The labelled set cannot be built from the inputs."""


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LabelError(f"{path}:{n}: not valid JSON ({e.msg}); fix that line") from None
    return rows


def _check_label(row: dict, where: str) -> None:
    for key in ("harmful", "helpful"):
        if row.get(key) not in (0, 1):
            raise LabelError(f"{where}: {key}={row.get(key)!r}; labels must be 0 or 1")


def build(prompts: Path = PROMPTS, handwritten: Path = HANDWRITTEN, answers: Path = ANSWERS,
          labels: Path = LABELS) -> list[dict]:
    meta = {r["prompt"]: r for r in read_jsonl(prompts)}
    out = []
    for n, r in enumerate(read_jsonl(handwritten), 1):
        if r["prompt"] not in meta:
            raise LabelError(f"{handwritten}:{n}: prompt {r['prompt']!r} is not in {prompts.name}; add it there first")
        _check_label(r, f"{handwritten}:{n}")
        m = meta[r["prompt"]]
        out.append({"prompt": r["prompt"], "response": r["response"], "source": "handwritten",
                    "harmful": r["harmful"], "helpful": r["helpful"], "split": m["split"],
                    "category": m["category"], "kind": r["kind"]})
    ans = read_jsonl(answers)
    lab = {r["id"]: r for r in read_jsonl(labels)}
    missing = [a["id"] for a in ans if a["id"] not in lab]
    if missing:
        raise LabelError(f"{len(missing)} SmolLM2 answers have no label (first: {missing[0]}); "
                         "run label_answers.py --todo and label them in smollm2_labels.jsonl")
    stale = set(lab) - {a["id"] for a in ans}
    if stale:
        raise LabelError(f"{len(stale)} labels refer to no answer (first: {sorted(stale)[0]}); remove them")
    for a in ans:
        lb = lab[a["id"]]
        _check_label(lb, f"{labels} id {a['id']}")
        out.append({"prompt": a["prompt"], "response": a["response"], "source": "smollm2",
                    "harmful": lb["harmful"], "helpful": lb["helpful"], "split": a["split"],
                    "category": a["category"], "kind": lb.get("kind", "")})
    return out


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--todo", action="store_true", help="print the answers that still need a label")
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args(args)
    if ns.todo:
        done = {r["id"] for r in read_jsonl(LABELS)} if LABELS.exists() else set()
        for a in read_jsonl(ANSWERS):
            if a["id"] not in done:
                print(json.dumps({"id": a["id"], "prompt": a["prompt"], "response": a["response"]}, ensure_ascii=False))
        return
    rows = build()
    with ns.out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    n_sm = sum(r["source"] == "smollm2" for r in rows)
    print(f"{len(rows)} labelled pairs ({n_sm} SmolLM2 answers, {len(rows) - n_sm} hand-written; "
          f"{sum(r['harmful'] for r in rows)} harmful, {sum(r['helpful'] for r in rows)} helpful) -> {ns.out}")


if __name__ == "__main__":
    main()
