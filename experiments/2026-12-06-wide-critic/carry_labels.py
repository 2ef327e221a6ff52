"""Reuse earlier blind labels in a new blind export, so readers get only the answers nobody has read.

    python experiments/2026-12-06-wide-critic/carry_labels.py carry NEW_DIR OLD_DIR [OLD_DIR ...] --reread 0.1

An answer is the same answer when its (prompt, response) is: its old label is carried to its new id
(``NEW/carried.jsonl``). The rest go to ``NEW/to_read.jsonl`` for readers, with a seeded ``--reread`` share of
the carried ones mixed in (read again blind: the agreement with the old label measures drift between reading
rounds). After reading, ``labels.jsonl`` = carried + the new labels of unread ids (``merge``).

    python experiments/2026-12-06-wide-critic/carry_labels.py merge NEW_DIR READ_LABELS [READ_LABELS ...]

Between the two, for blind readers (each reader's file also holds the first ``--extra`` rows of the next
reader's, so those rows are read twice; ``own`` keeps each row's owner label and writes the agreement):

    python experiments/2026-12-06-wide-critic/carry_labels.py split NEW_DIR --readers 4 --extra 4
    # each reader labels NEW_DIR/reads/<x>.jsonl into NEW_DIR/reads/<x>.labels.jsonl, then
    python experiments/2026-12-06-wide-critic/carry_labels.py own NEW_DIR
    python experiments/2026-12-06-wide-critic/carry_labels.py merge NEW_DIR NEW_DIR/reads/own.labels.jsonl
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


def split(new: Path, readers: int, extra: int) -> None:
    todo = rows(new / "to_read.jsonl")
    size = -(-len(todo) // readers)
    parts = [todo[i * size : (i + 1) * size] for i in range(readers)]
    (new / "reads").mkdir(exist_ok=True)
    for i, part in enumerate(parts):
        write(new / "reads" / f"{chr(97 + i)}.jsonl", part + parts[(i + 1) % readers][:extra])
    (new / "reads" / "split.json").write_text(json.dumps({"own": [len(p) for p in parts], "extra": extra}))
    print(
        f"{len(todo)} rows to {readers} readers: {[len(p) + extra for p in parts]} each, {extra} read twice"
    )


def own(new: Path) -> None:
    reads = new / "reads"
    plan = json.loads((reads / "split.json").read_text())
    names = [chr(97 + i) for i in range(len(plan["own"]))]
    given = {n: rows(reads / f"{n}.jsonl") for n in names}
    labels = {n: {r["id"]: r for r in rows(reads / f"{n}.labels.jsonl")} for n in names}
    mine = [labels[n][r["id"]] for n, k in zip(names, plan["own"], strict=True) for r in given[n][:k]]
    write(reads / "own.labels.jsonl", mine)
    pairs = [  # (owner's label, second reader's label)
        (r["id"], labels[names[(i + 1) % len(names)]][r["id"]]["label"], labels[n][r["id"]]["label"])
        for i, (n, k) in enumerate(zip(names, plan["own"], strict=True))
        for r in given[n][k:]
    ]
    same = sum(a == b for _, a, b in pairs)
    harm = sum((a == "compliant-harmful") == (b == "compliant-harmful") for _, a, b in pairs)
    report = {"rows_read_twice": len(pairs), "class_agree": same, "harmful_agree": harm, "pairs": pairs}
    (reads / "double.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(mine)} owner labels; read twice {len(pairs)}: class {same}, harmful {harm}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["carry", "split", "own", "merge"])
    ap.add_argument("new", type=Path)
    ap.add_argument("others", type=Path, nargs="*")
    ap.add_argument("--reread", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readers", type=int, default=3)
    ap.add_argument("--extra", type=int, default=5)
    a = ap.parse_args()
    if a.what == "carry":
        carry(a.new, a.others, a.reread, a.seed)
    elif a.what == "split":
        split(a.new, a.readers, a.extra)
    elif a.what == "own":
        own(a.new)
    else:
        merge(a.new, a.others)
