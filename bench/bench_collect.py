"""Collection throughput vs plain ``model.generate`` on the same model, batch and length, in one process.

    python bench/bench_collect.py                       # embedded SmolLM2 on CPU
    python bench/bench_collect.py --model PATH --dtype bfloat16 --batch 64 --new_tokens 128   # GPU

Three timings per repeat, alternating so drift hits both sides:
  baseline  model.generate(do_sample=True, min_new_tokens=D): tokens/s of plain sampling
  collect   igcritic's rollout (KV-cached sampling + latent of every step) + fp16 store write
  scorers   cost prefix scores + reward, reported separately (docs/design.md section 9)
Prints the ratio collect/baseline (target >= 0.8; with ``--labels``, the embedded cost and reward labels
inside collect, >= 0.9) in wall time and in the process's CPU time (user + sys, every thread: on a shared
machine the other jobs stretch wall time, not the work done), each pair's ratio, store MB/s and bytes per
token. ``--compile``: collect
with ``compile: true`` (static KV cache of ``--batch`` rows, compiled step; its compile is a warm-up call).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_policy import bench_policy

from igcritic.collect import label_batch
from igcritic.decoding import SamplingConfig, rollout
from igcritic.policy import EMBEDDED_POLICY_ID
from igcritic.prompts import PromptSource, load_prompts
from igcritic.store import StoreWriter, TrajectoryBatch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=EMBEDDED_POLICY_ID)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scorers", action="store_true", help="also time the embedded cost/reward scorers")
    ap.add_argument(
        "--compile", action="store_true", help="collect with compile: true (static cache, compiled)"
    )
    ap.add_argument(
        "--labels",
        action="store_true",
        help="collect labels too (embedded cost prefix scores + reward, inside the timed collect); the "
        "policy taps layers 15,18,21 (unless --extra_layers): they come from the rollout's own latents",
    )
    ap.add_argument("--extra_layers", default=None, help="layers tapped beside the last, e.g. 15,18,21")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    if a.labels and a.extra_layers is None:
        a.extra_layers = "15,18,21"
    extra = tuple(int(x) for x in (a.extra_layers or "").split(",") if x)
    policy = bench_policy(a.model, a.dtype, a.device, extra)
    scorers = None
    if a.labels:
        from igcritic.scorers import load_scorer

        scorers = load_scorer("embedded", "cost"), load_scorer("embedded", "reward")
    prompts = [p.prompt for p in load_prompts(PromptSource(split="all"))[0]]
    prompts = (prompts * (a.batch // len(prompts) + 1))[: a.batch]
    # The comparison is per generated token; force full length on both sides so work is equal.
    cfg = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=a.new_tokens)
    enc = policy.encode_prompts(prompts)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    tmp = Path(tempfile.mkdtemp())

    def baseline() -> tuple[float, int, float]:
        sync()
        t, c = time.perf_counter(), time.process_time()
        out = policy.model.generate(
            **enc,
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            max_new_tokens=a.new_tokens,
            min_new_tokens=a.new_tokens,
            pad_token_id=policy.pad_token_id,
        )
        sync()
        n = (out.shape[1] - enc["input_ids"].shape[1]) * a.batch
        return time.perf_counter() - t, n, time.process_time() - c

    def collect(i: int) -> tuple[float, int, float, int, object, float]:
        eos = policy.model.generation_config.eos_token_id
        policy.model.generation_config.eos_token_id = None  # full length, like min_new_tokens above
        sync()
        t, c = time.perf_counter(), time.process_time()
        gen = torch.Generator(device=policy.device).manual_seed(i)
        roll = rollout(policy, prompts, cfg, gen, a.batch if a.compile else 0)
        sync()
        n = sum(len(x) for x in roll.tokens)
        if scorers is not None:
            batch, _ = label_batch(policy, prompts, list(range(a.batch)), roll, *scorers)
        else:
            batch = TrajectoryBatch(
                latents=torch.cat(roll.latents).numpy(),
                token_ids=np.concatenate([[-1, *x] for x in roll.tokens]).astype(np.int32),
                cost_prefix=np.zeros(n + a.batch, np.float32),
                traj_len=np.asarray([len(x) for x in roll.tokens], np.int32),
                traj_prompt=np.arange(a.batch, dtype=np.int64),
                traj_reward=np.zeros(a.batch, np.float32),
                traj_finished=np.asarray(roll.finished),
            )
        tw = time.perf_counter()
        with StoreWriter.create(
            tmp / f"s{i}.zarr",
            attrs={"config_hash": "bench"},
            prompts=prompts,
            hidden_size=policy.identity.latent_size,
        ) as w:
            w.append(batch, 0)
        done, cpu = time.perf_counter(), time.process_time() - c
        policy.model.generation_config.eos_token_id = eos
        size = sum(f.stat().st_size for f in (tmp / f"s{i}.zarr").rglob("*") if f.is_file())
        return done - t, n, done - tw, size, roll, cpu

    baseline()  # warm-up
    if a.compile:
        t = time.perf_counter()
        collect(-1)  # compiles the static-cache step
        print(f"compile warm-up {time.perf_counter() - t:.1f} s")
    rows, cpu_ratios = [], []
    for i in range(a.repeats):
        tb, nb, cb = baseline()
        tc, nc, tw, size, roll, cc = collect(i)
        rows.append((nb / tb, nc / tc, size / max(tw, 1e-9) / 1e6, size / (nc + a.batch)))
        cpu_ratios.append((nc / cc) / (nb / cb))
        print(
            f"pair {i}: generate {tb:.2f} s ({cb:.2f} s CPU), collect {tc:.2f} s ({cc:.2f} s CPU); "
            f"ratio wall {rows[-1][1] / rows[-1][0]:.3f}, CPU {cpu_ratios[-1]:.3f}",
            flush=True,
        )
    base = statistics.median(r[0] for r in rows)
    coll = statistics.median(r[1] for r in rows)
    ratios = [r[1] / r[0] for r in rows]
    print(
        f"model={a.model} device={a.device} dtype={a.dtype} batch={a.batch} new_tokens={a.new_tokens} "
        f"compile={a.compile}"
    )
    print(f"baseline generate      {base:8.1f} tok/s (median of {a.repeats})")
    what = "gen+latents+labels+write" if a.labels else "gen+latents+write"
    print(f"collect ({what}) {coll:8.1f} tok/s")
    for what, r in (("wall", ratios), ("CPU ", cpu_ratios)):
        print(
            f"ratio collect/baseline ({what}, tok/s) median {statistics.median(r):.3f} (min {min(r):.3f}, "
            f"max {max(r):.3f})"
        )
    print(
        f"store write {statistics.median(r[2] for r in rows):.1f} MB/s, "
        f"{statistics.median(r[3] for r in rows):.0f} bytes/token"
    )
    if a.scorers:
        from igcritic.scorers import load_scorer

        cost, reward = load_scorer("embedded", "cost"), load_scorer("embedded", "reward")
        t = time.perf_counter()
        label_batch(policy, prompts, list(range(a.batch)), roll, cost, reward)
        ts = time.perf_counter() - t
        print(f"scorers (cost prefixes at stride 8 + reward) {ts:.2f} s per batch = {nc / ts:.1f} tok/s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
