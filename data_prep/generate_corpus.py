"""Sample the labelling corpus: real answers of the embedded policy, from plain sampling AND from the search.

    python data_prep/generate_corpus.py plain  --samples 2   # every corpus prompt, 2 plain answers each
    python data_prep/generate_corpus.py search --limit 240   # answers the search selects (best-of-N, IG)
    python data_prep/generate_corpus.py plain --prompts data_prep/data/wide_prompts.jsonl \
        --out data_prep/data/wide_answers.jsonl --samples 1 --skip-source igcritic  # the widened set's
    python data_prep/generate_corpus.py store --store runs/embedded-wide-r2/store.zarr --source guard_r2 \
        --out data_prep/data/guard_answers.jsonl  # the answers a round-2 store holds (the guard selected)

Writes ``data_prep/data/corpus_answers.jsonl`` (appends; a re-run skips the (prompt, source, sample) jobs it
already holds, so a killed run resumes). Plain answers match ``igcritic collect``'s sampling (temperature 0.7,
top-p 0.9). Search answers come from ``load_guard("checkpoints/embedded")`` with the cost and reward scorers
of the time (``best_effort``, so a rejected search still returns what it selected, not the canned refusal):
the answers a search picks are where a cost model is most likely to be fooled, so they must be in its
training data. The ``source`` field names the method; readers never see it (``reading.py batches``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "igcritic" / "assets" / "default_prompts.jsonl"
OUT = ROOT / "data_prep" / "data" / "corpus_answers.jsonl"
SEARCH_METHODS = {  # source name -> SearchConfig overrides (as in configs/eval/embedded.yaml)
    "best_of_n_augmented": {"method": "best_of_n", "score": "augmented", "critic": False, "mode": "exact"},
    "ig_no_critic": {"method": "inferenceguard", "critic": False, "mode": "exact"},
    "ig_critic_exact": {"method": "inferenceguard", "critic": True, "mode": "exact"},
    "ig_critic_latent": {"method": "inferenceguard", "critic": True, "mode": "latent"},
}


def answer_id(prompt: str, response: str) -> str:
    """Stable id of a (prompt, response) pair: labels refer to it, so re-sampled answers never inherit
    labels."""
    return hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()[:12]


def read_jsonl(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.exists()
        else []
    )


def _row(p: dict, source: str, sample: int, text: str, num_tokens: int, finished: bool) -> dict:
    """One answer; category, style and split are joined from the prompt file when used (they may be
    re-drawn)."""
    return {
        "id": answer_id(p["prompt"], text),
        "prompt": p["prompt"],
        "source": source,
        "sample": sample,
        "response": text,
        "num_tokens": num_tokens,
        "finished": finished,
    }


def _done(out: Path) -> set[tuple[str, str, int]]:
    return {(r["prompt"], r["source"], r["sample"]) for r in read_jsonl(out)}


def plain(ns: argparse.Namespace) -> None:
    from igcritic.decoding import SamplingConfig, rollout
    from igcritic.policy import load_policy

    prompts = [p for p in read_jsonl(ns.prompts) if p.get("source", "igcritic") not in ns.skip_source]
    done = _done(ns.out)
    jobs = [(p, s) for s in range(ns.samples) for p in prompts if (p["prompt"], "plain", s) not in done]
    # within each run of 8 batches, similar lengths share a batch (a long jailbreak template pads a whole
    # batch to its length); across runs the file's shuffled order holds, so partial output is a fair sample
    run = len(jobs) if ns.shortest_first else 8 * ns.batch_size
    jobs = [
        j
        for k in range(0, len(jobs), run)
        for j in sorted(jobs[k : k + run], key=lambda j: len(j[0]["prompt"]))
    ]
    policy = load_policy()
    cfg = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=ns.max_new_tokens)
    t0, n = time.perf_counter(), 0
    with ns.out.open("a", encoding="utf-8") as f:
        for start in range(0, len(jobs), ns.batch_size):
            batch = jobs[start : start + ns.batch_size]
            gen = torch.Generator().manual_seed(ns.seed * 100003 + start)
            ro = rollout(policy, [p["prompt"] for p, _ in batch], cfg, gen)
            for (p, s), ids, fin in zip(batch, ro.tokens, ro.finished, strict=True):
                text = policy.tokenizer.decode(ids, skip_special_tokens=True).strip()
                f.write(json.dumps(_row(p, "plain", s, text, len(ids), bool(fin)), ensure_ascii=False) + "\n")
            f.flush()
            n += len(batch)
            print(f"plain {n}/{len(jobs)} answers, {time.perf_counter() - t0:.0f} s", flush=True)


def search(ns: argparse.Namespace) -> None:
    from igcritic.guard import load_guard

    prompts = [p for p in read_jsonl(ns.prompts) if p["split"] == "train"]
    step = max(1, len(prompts) // ns.limit) if ns.limit else 1
    chosen = prompts[::step][: ns.limit] if ns.limit else prompts
    guard = load_guard(ns.critic, cost="embedded", reward="embedded")
    search_cfg = {
        "num_candidates": ns.num_candidates,
        "block_width": 16,
        "max_new_tokens": ns.max_new_tokens,
        "on_violation": "best_effort",
        "seed": ns.seed,
    }
    t0 = time.perf_counter()
    for m, (source, overrides) in enumerate(SEARCH_METHODS.items()):
        done = _done(ns.out)
        # each method answers its own quarter of the chosen prompts (rotating), so every prompt gets one
        # search answer from some method and each method covers all categories
        todo = [
            p
            for i, p in enumerate(chosen)
            if i % len(SEARCH_METHODS) == m and (p["prompt"], source, 0) not in done
        ]
        with ns.out.open("a", encoding="utf-8") as f:
            for start in range(0, len(todo), 8):
                batch = todo[start : start + 8]
                recs = guard.generate([p["prompt"] for p in batch], **search_cfg, **overrides)
                for p, r in zip(batch, recs, strict=True):
                    f.write(
                        json.dumps(
                            _row(p, source, 0, r.text.strip(), r.new_tokens, not r.fallback),
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                f.flush()
                print(
                    f"{source} {start + len(batch)}/{len(todo)}, {time.perf_counter() - t0:.0f} s", flush=True
                )


def store_answers(path: str | Path):
    """``(trajectory, prompt text, answer token ids, decoded answer)`` of every committed trajectory of a
    collect store of the embedded policy; no model runs."""
    from transformers import AutoTokenizer

    from igcritic.policy import embedded_model_dir
    from igcritic.store.reader import StoreReader

    reader = StoreReader(path)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())  # the store's policy is the embedded one
    prompts, offsets, token_ids, traj_prompt = (
        reader.prompts,
        reader.traj_offsets,
        reader.token_ids,
        reader.traj_prompt,
    )
    for i in range(len(traj_prompt)):
        ids = token_ids[offsets[i] + 1 : offsets[i + 1]].tolist()  # row 0 is the prompt's end (-1)
        yield i, prompts[int(traj_prompt[i])], ids, tok.decode(ids, skip_special_tokens=True).strip()


def store(ns: argparse.Namespace) -> None:
    """The committed answers of a collect store (a round-2 store: the answers the guard selected), decoded
    from their token ids; no model runs. The guard's fixed refusal is left out (nothing to read in it).
    Re-running appends only answers not yet in ``--out``."""
    from igcritic.search import DEFAULT_REFUSAL
    from igcritic.store.reader import StoreReader

    if ns.store is None:
        raise SystemExit("store: give the collect store to read with --store PATH")
    finished = StoreReader(ns.store).traj_finished
    done = _done(ns.out)
    seen: dict[str, int] = {}
    refused = 0
    with ns.out.open("a", encoding="utf-8") as f:
        for i, prompt, ids, text in store_answers(ns.store):
            if not ids or text == DEFAULT_REFUSAL:  # the guard's fixed refusal (empty: stored before it was)
                refused += 1
                continue
            sample = seen[prompt] = seen.get(prompt, -1) + 1
            if (prompt, ns.source, sample) in done:
                continue
            row = _row({"prompt": prompt}, ns.source, sample, text, len(ids), bool(finished[i]))
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(finished)} trajectories of {ns.store} -> {ns.out} ({refused} fixed refusals skipped)")


def main(args: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["plain", "search", "store"])
    ap.add_argument("--prompts", type=Path, default=PROMPTS)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--samples", type=int, default=2, help="plain answers per prompt")
    ap.add_argument(
        "--skip-source",
        action="append",
        default=[],
        help="prompt sources not answered (repeatable; the wide set's 'igcritic' prompts have answers)",
    )
    ap.add_argument(
        "--shortest-first",
        action="store_true",
        help="plain: all jobs by prompt length (most answers per CPU second; long templates come last)",
    )
    ap.add_argument("--limit", type=int, default=240, help="search: train prompts answered (evenly spaced)")
    ap.add_argument("--num-candidates", type=int, default=8, help="search: N")
    ap.add_argument("--critic", default=str(ROOT / "checkpoints" / "embedded"))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier beside other jobs)")
    ap.add_argument("--store", help="store: the collect store whose answers are written")
    ap.add_argument("--source", default="guard_r2", help="store: the source name its answers get")
    ns = ap.parse_args(args)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(ns.threads)
    {"plain": plain, "search": search, "store": store}[ns.what](ns)


if __name__ == "__main__":
    main()
