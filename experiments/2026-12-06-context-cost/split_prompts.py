"""The train prompts of the widened set in two halves, shortest first, for two collect writers.

    python experiments/2026-12-06-context-cost/split_prompts.py runs/embedded-context-a/prompts.jsonl \
        runs/embedded-context-b/prompts.jsonl

Every train prompt of data_prep/data/wide_prompts.jsonl (2,269; never the held-out or PyRIT prompts), sorted
by length (a batch pads to its longest prompt) and dealt alternately, so both writers see short and long
prompts alike and finish together.
"""

import json
import sys
from pathlib import Path

rows = [json.loads(line) for line in open("data_prep/data/wide_prompts.jsonl", encoding="utf-8")]
train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: len(r["prompt"]))
for k, out in enumerate(map(Path, sys.argv[1:3])):
    out.parent.mkdir(parents=True, exist_ok=True)
    half = train[k::2]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in half), encoding="utf-8")
    print(f"{len(half)} of {len(train)} train prompts -> {out}")
