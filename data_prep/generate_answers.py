"""Sample real answers of the embedded policy (SmolLM2-135M-Instruct) to the default prompt set, for labelling.

    python data_prep/generate_answers.py           # writes data_prep/data/smollm2_answers.jsonl (~4 min on 2 cores)

The answers are labelled by reading them (data_prep/data/smollm2_labels.jsonl) and merged into the probe
training set by ``data_prep/label_answers.py``. Sampling matches ``igcritic collect``'s defaults
(temperature 0.7, top-p 0.9), so the probes see the policy's own answers, refusals and nonsense included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from igcritic.decoding import SamplingConfig, rollout
from igcritic.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data_prep" / "data" / "default_prompts.jsonl"
OUT = ROOT / "data_prep" / "data" / "smollm2_answers.jsonl"


def answer_id(prompt: str, response: str) -> str:
    """Stable id of a (prompt, response) pair: labels refer to it, so re-sampled answers never inherit labels."""
    return hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()[:12]


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=Path, default=PROMPTS)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--samples", type=int, default=1, help="answers per prompt")
    ap.add_argument("--extra-harmful", type=int, default=0, help="extra answers for harmful prompts")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(args)

    rows = [json.loads(line) for line in ns.prompts.read_text().splitlines() if line.strip()]
    jobs = [r for r in rows for _ in range(ns.samples)]
    jobs += [r for r in rows if r["harmful"] for _ in range(ns.extra_harmful)]
    policy = load_policy()
    tok = policy.tokenizer
    cfg = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=ns.max_new_tokens)
    gen = torch.Generator().manual_seed(ns.seed)
    if ns.out.exists() and ns.out.stat().st_size:
        raise SystemExit(f"{ns.out} exists and is not empty; delete it or pass another --out")
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = 0
    with ns.out.open("w", encoding="utf-8") as f:  # one batch at a time, so labelling can start early
        for start in range(0, len(jobs), ns.batch_size):
            batch = jobs[start : start + ns.batch_size]
            ro = rollout(policy, [r["prompt"] for r in batch], cfg, gen)
            for r, ids, fin in zip(batch, ro.tokens, ro.finished):
                text = tok.decode(ids, skip_special_tokens=True).strip()
                f.write(json.dumps({"id": answer_id(r["prompt"], text), "prompt": r["prompt"],
                                    "category": r["category"], "harmful_prompt": r["harmful"], "split": r["split"],
                                    "response": text, "finished": bool(fin), "num_tokens": len(ids)},
                                   ensure_ascii=False) + "\n")
            f.flush()
            n += len(batch)
            print(f"{n}/{len(jobs)} answers, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"wrote {n} answers to {ns.out}")


if __name__ == "__main__":
    main()
