"""The held-out source's other 90 prompts: the PyRIT prompts of data_prep/data/wide_prompts.jsonl (split
heldout_source) that data_prep/data/heldout_source_short.jsonl (the CPU subset) left out, in file order.

    python experiments/2026-12-06-heldout-long/long_prompts.py > data_prep/data/heldout_source_long.jsonl
"""

import json
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "data_prep" / "data"

short = {json.loads(line)["id"] for line in (DATA / "heldout_source_short.jsonl").open()}
for line in (DATA / "wide_prompts.jsonl").open():
    row = json.loads(line)
    if row.get("split") == "heldout_source" and row["id"] not in short:
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
