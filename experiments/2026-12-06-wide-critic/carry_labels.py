"""Reuse earlier blind labels in a new blind export, so readers get only the answers nobody has read.

    python experiments/2026-12-06-wide-critic/carry_labels.py carry NEW_DIR OLD_DIR [OLD_DIR ...] --reread 0.1

An answer is the same answer when its (prompt, response) is: its old label is carried to its new id
(``NEW/carried.jsonl``). The rest go to ``NEW/to_read.jsonl`` for readers, with a seeded ``--reread`` share of
the carried ones mixed in (read again blind: the agreement with the old label measures drift between reading
rounds). After reading, ``labels.jsonl`` = carried + the new labels of unread ids (``merge``).

    python experiments/2026-12-06-wide-critic/carry_labels.py merge NEW_DIR READ_LABELS [READ_LABELS ...]
"""

import argparse
import json
import random
from pathlib import Path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")


def carry(new: Path, olds: list[Path], reread: float, seed: int) -> None:
    known = {}
    for old in olds:
        labels = {r["id"]: r for r in rows(old / "labels.jsonl")}
        for a in rows(old / "answers.jsonl"):
            if a["id"] in labels:
                known[(a["prompt"], a["response"])] = labels[a["id"]]
    answers = rows(new / "answers.jsonl")
    carried, unread = [], []
    for a in answers:
        old = known.get((a["prompt"], a["response"]))
        if old is None:
            unread.append(a)
        else:
            carried.append({"id": a["id"], "label": old["label"], "helpfulness": old["helpfulness"]})
    by_id = {a["id"]: a for a in answers}
    again = random.Random(seed).sample(carried, round(reread * len(carried)))
    to_read = [{k: by_id[c["id"]][k] for k in ("id", "prompt", "response")} for c in again] + [
        {k: a[k] for k in ("id", "prompt", "response")} for a in unread
    ]
    random.Random(seed + 1).shuffle(to_read)
    write(new / "carried.jsonl", carried)
    write(new / "to_read.jsonl", to_read)
    print(
        f"{len(answers)} answers: {len(carried)} labels carried, {len(unread)} unread; to_read.jsonl: "
        f"{len(to_read)} ({len(again)} carried ones read again)"
    )


def merge(new: Path, read: list[Path]) -> None:
    carried = {r["id"]: r for r in rows(new / "carried.jsonl")}
    fresh = {r["id"]: r for p in read for r in rows(p)}
    again = [(carried[i]["label"], fresh[i]["label"]) for i in carried if i in fresh]
    same = sum(a == b for a, b in again)
    harm = sum((a == "compliant-harmful") == (b == "compliant-harmful") for a, b in again)
    labels = [carried.get(a["id"]) or fresh[a["id"]] for a in rows(new / "answers.jsonl")]
    write(
        new / "labels.jsonl",
        [{"id": r["id"], "label": r["label"], "helpfulness": r["helpfulness"]} for r in labels],
    )
    (new / "agreement.json").write_text(
        json.dumps({"read_again": len(again), "class_agree": same, "harmful_agree": harm}, indent=1) + "\n"
    )
    print(
        f"labels.jsonl: {len(labels)}; read again {len(again)}: class {same}/{len(again)}, "
        f"harmful {harm}/{len(again)}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["carry", "merge"])
    ap.add_argument("new", type=Path)
    ap.add_argument("others", type=Path, nargs="+")
    ap.add_argument("--reread", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    carry(a.new, a.others, a.reread, a.seed) if a.what == "carry" else merge(a.new, a.others)
