"""Blind reading of the corpus: hand answers to readers without method names, merge their labels, measure
agreement.

    python data_prep/reading.py batches --round r1 --readers 6   # new answers -> data/reading/r1-<k>.jsonl
    python data_prep/reading.py merge   # data/reading/*.labels.jsonl -> data/corpus_labels.jsonl
    python data_prep/reading.py batches --answers data_prep/data/wide_answers.jsonl --round w1 --per-batch 150
    python data_prep/reading.py merge --answers data_prep/data/wide_answers.jsonl \
        --out data_prep/data/wide_labels.jsonl --agreement data_prep/data/wide_agreement.json

A reader gets ``{"id", "prompt", "response"}`` rows in a seeded shuffled order (no source, no method, no
category) and writes ``<batch>.labels.jsonl`` with ``{"id", "label", "helpfulness"}`` rows following
``data_prep/LABELLING.md``. A ``--double`` share of each round's answers is also put into the batch of a
second reader, who labels it without seeing the first label; ``merge`` reports the agreement on those
(raw and Cohen's kappa, on the class and on harmful vs not) and keeps the first reader's label.
``batches`` hands out only answers no batch holds yet, so it can be run again as answers accumulate (a new
``--round`` name each time). ``merge`` reads the label files of the batches drawn from its ``--answers`` file
only, so the project's corpus and the widened set's answers keep separate labels and agreement files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
ANSWERS = DATA / "corpus_answers.jsonl"
READING = DATA / "reading"
LABELS_OUT = DATA / "corpus_labels.jsonl"
AGREEMENT_OUT = DATA / "corpus_agreement.json"
LABELS = ("compliant-harmful", "refusal", "safe-redirect", "incoherent", "benign-helpful")


def read_jsonl(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.exists()
        else []
    )


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def batches(ns: argparse.Namespace) -> None:
    if any(READING.glob(f"{ns.round}-*.jsonl")):
        raise SystemExit(
            f"--round {ns.round}: batches of that round exist in {READING}; pick a new round name"
        )
    handed = {
        r["id"]
        for p in READING.glob("*.jsonl")
        if not p.name.endswith(".labels.jsonl")
        for r in read_jsonl(p)
    }
    fresh = {
        r["id"]: r for r in read_jsonl(ns.answers) if r["id"] not in handed
    }  # same (prompt, answer): one id
    ids = sorted(fresh)
    rng = random.Random(f"{ns.seed}-{ns.round}")
    rng.shuffle(ids)
    if ns.limit:
        ids = ids[: ns.limit]
    if ns.per_batch:
        ns.readers = max(2, round(len(ids) * (1 + ns.double) / ns.per_batch))
    if not ids:
        raise SystemExit(
            f"no answers in {ns.answers} that a batch does not hold already; nothing to hand out"
        )
    shares: list[list[str]] = [ids[k :: ns.readers] for k in range(ns.readers)]
    doubled = ids[: round(len(ids) * ns.double)]
    for j, i in enumerate(doubled):  # the second read goes to the next reader over
        owner = next(k for k, s in enumerate(shares) if i in s)
        shares[(owner + 1 + j % max(1, ns.readers - 1)) % ns.readers].append(i)
    for k, share in enumerate(shares):
        rng.shuffle(share)
        rows = [{"id": i, "prompt": fresh[i]["prompt"], "response": fresh[i]["response"]} for i in share]
        write_jsonl(rows, READING / f"{ns.round}-{k}.jsonl")
        print(f"{READING / f'{ns.round}-{k}.jsonl'}: {len(rows)} answers")
    print(f"{len(ids)} answers handed out, {len(doubled)} of them to two readers")


def kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two readers' labels on the same items."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in set(a) | set(b)) / n**2
    return (po - pe) / (1 - pe) if pe < 1 else 1.0


def merge(ns: argparse.Namespace) -> None:
    first: dict[str, dict] = {}
    second: dict[str, dict] = {}
    problems = []
    answers = {r["id"]: r for r in read_jsonl(ns.answers)}
    for path in sorted(READING.glob("*.labels.jsonl")):
        batch_ids = {
            r["id"] for r in read_jsonl(path.with_name(path.name.replace(".labels.jsonl", ".jsonl")))
        }
        if not batch_ids <= answers.keys():  # a batch of another answers file
            continue
        for n, r in enumerate(read_jsonl(path), 1):
            if (
                r.get("label") not in LABELS
                or r.get("helpfulness") not in (0, 1, 2)
                or r.get("id") not in batch_ids
            ):
                problems.append(f"{path.name}:{n}: {r}")
                continue
            r = {
                "id": r["id"],
                "label": r["label"],
                "helpfulness": r["helpfulness"],
                "reader": path.name.split(".")[0],
            }
            if (
                r["id"] in first and first[r["id"]]["reader"] != r["reader"]
            ):  # a reader's later line corrects it
                second[r["id"]] = r
            else:
                first[r["id"]] = r
    if problems:  # reported and left out; the answers they meant stay unlabelled and are handed out again
        print(
            f"{len(problems)} label rows left out (label not in {LABELS}, helpfulness not 0-2, or id not in "
            f"the batch); first: {problems[0]}"
        )
    rows = [
        {**first[i], "prompt": answers[i]["prompt"], "response": answers[i]["response"]}
        for i in sorted(first)
        if i in answers
    ]
    write_jsonl(rows, ns.out)
    both = sorted(second)
    a = [first[i]["label"] for i in both]
    b = [second[i]["label"] for i in both]
    ha = ["h" if x == "compliant-harmful" else "n" for x in a]
    hb = ["h" if x == "compliant-harmful" else "n" for x in b]
    agree = {
        "double_read": len(both),
        "class_agreement": sum(x == y for x, y in zip(a, b, strict=True)) / max(1, len(both)),
        "class_kappa": kappa(a, b) if both else None,
        "harmful_agreement": sum(x == y for x, y in zip(ha, hb, strict=True)) / max(1, len(both)),
        "harmful_kappa": kappa(ha, hb) if both else None,
        "helpfulness_agreement": sum(first[i]["helpfulness"] == second[i]["helpfulness"] for i in both)
        / max(1, len(both)),
        "confusions": Counter(f"{x} / {y}" for x, y in zip(a, b, strict=True) if x != y).most_common(8),
    }
    ns.agreement.write_text(json.dumps(agree, indent=1) + "\n")
    print(f"{len(rows)} labelled answers -> {ns.out}; labels: {dict(Counter(r['label'] for r in rows))}")
    print(json.dumps(agree, indent=1))


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("batches")
    b.add_argument("--round", required=True)
    b.add_argument("--answers", type=Path, default=ANSWERS)
    b.add_argument("--readers", type=int, default=6)
    b.add_argument("--per-batch", type=int, default=0, help="about this many rows per batch (sets --readers)")
    b.add_argument("--double", type=float, default=0.1)
    b.add_argument("--limit", type=int, default=0)
    b.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("merge")
    m.add_argument("--answers", type=Path, default=ANSWERS)
    m.add_argument("--out", type=Path, default=LABELS_OUT)
    m.add_argument("--agreement", type=Path, default=AGREEMENT_OUT)
    ns = ap.parse_args(args)
    batches(ns) if ns.cmd == "batches" else merge(ns)


if __name__ == "__main__":
    main()
