"""The train prompts of the widened set that the stopped round-1 store does not hold, shortest first.

    python experiments/2026-12-06-wide-critic/rest_prompts.py runs/embedded-wide/store.zarr \
        runs/embedded-wide-rest/prompts.jsonl

Round 1 (configs/collect/embedded-wide.yaml, 2 rollouts per prompt) ran at ~50 s per batch of 32 on the
shared 2-core VM once past the project's short prompts, so it was stopped after 69 of 142 batches and the
other prompts were collected with ONE rollout each into a second store (fit reads both). Shortest first: a
batch pads to its longest prompt, and the long jailbreak templates come last.
"""

import json
import sys
from pathlib import Path

from igcritic.store.reader import StoreReader

store, out = sys.argv[1], Path(sys.argv[2])
reader = StoreReader(store)
held = {reader.prompts[i] for i in set(reader.traj_prompt.tolist())}
rows = [json.loads(line) for line in open("data_prep/data/wide_prompts.jsonl", encoding="utf-8")]
rest = [r for r in rows if r["split"] == "train" and r["prompt"] not in held]
rest.sort(key=lambda r: len(r["prompt"]))
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rest), encoding="utf-8")
print(f"{len(rest)} of {sum(r['split'] == 'train' for r in rows)} train prompts not in {store} -> {out}")
