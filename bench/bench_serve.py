"""`igcritic serve` under 1, 4 and 16 concurrent clients vs `guard.generate` in-process on the same prompts.

    python bench/bench_serve.py                          # checkpoints/embedded, max_tokens 16, 1 thread
    python bench/bench_serve.py --max_tokens 32 --requests 4 --levels 1 4 16 --max_batch_size 4

Both sides run the same guard (the critic's recorded policy, fully latent mode: no cost scorer), the same
search defaults and prompts (the shipped set's held-out split, plain user turns), ``--threads`` torch threads.
In-process: ``guard.generate`` one prompt at a time (what one client gets without HTTP), then all prompts
in one call (the batched upper bound). Served: the server in a subprocess (``igcritic serve``), ``--levels``
client threads with the real ``openai`` client sharing a level's ``--requests`` requests (at least one
each), each client sending its next request when the last is answered; requests/s over the level's wall
time, latency p50/p95 per request as the client sees it. Each request has its own seed, so the
served answers are the in-process ones (checked and printed). Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--critic", default=str(ROOT / "checkpoints" / "embedded"))
    ap.add_argument("--max_tokens", type=int, default=16)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=8, help="requests per level (at least one per client)")
    ap.add_argument("--max_batch_size", type=int, default=4)
    ap.add_argument("--batch_timeout", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: 2 shared cores under load)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    from openai import OpenAI

    from igcritic.guard import load_guard
    from igcritic.prompts import PromptSource, load_prompts

    torch.set_num_threads(args.threads)
    per_level = {n: max(n, args.requests) for n in args.levels}
    most = max(per_level.values())
    prompts = [p.prompt for p in load_prompts(PromptSource(split="heldout", limit=most))[0]]
    prompts = (prompts * (most // len(prompts) + 1))[:most]
    guard = load_guard(args.critic)
    kw = {"max_new_tokens": args.max_tokens}

    # in-process: one prompt per call (as one client), then all prompts in one call
    guard.generate(prompts[0], seeds=[0], **kw)  # warm-up
    t0 = time.perf_counter()
    alone = [guard.generate(p, seeds=[i], **kw)[0] for i, p in enumerate(prompts[: args.requests])]
    seq_s = (time.perf_counter() - t0) / len(alone)
    print(f"in-process one by one: {seq_s:.2f} s/request", flush=True)
    t0 = time.perf_counter()
    guard.generate(prompts, seeds=list(range(len(prompts))), **kw)
    one_call = len(prompts) / (time.perf_counter() - t0)
    print(f"in-process one call of {len(prompts)}: {one_call:.2f} req/s", flush=True)

    port = _port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "igcritic", "serve", args.critic, "--port", str(port)]
    cmd += ["--max_batch_size", str(args.max_batch_size), "--batch_timeout", str(args.batch_timeout)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)

        def ask(i: int):
            msg = [{"role": "user", "content": prompts[i]}]
            return client.chat.completions.create(model="x", messages=msg, max_tokens=args.max_tokens, seed=i)

        ask(0)  # warm-up
        same = sum(ask(i).choices[0].message.content == r.text for i, r in enumerate(alone[:2]))
        print(f"served == in-process: {same}/2", flush=True)
        for n in args.levels:
            lat: list[float] = []
            batch: list[int] = []
            lock = threading.Lock()

            def client_loop(c: int) -> None:
                for i in range(c, per_level[n], n):  # the level's requests dealt over its clients
                    t = time.perf_counter()
                    out = ask(i)
                    with lock:
                        lat.append(time.perf_counter() - t)
                        batch.append(out.model_extra["igcritic"]["batch"])

            threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(n)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            rows.append((n, len(lat) / wall, _pct(lat, 0.5), _pct(lat, 0.95), statistics.mean(batch)))
            print(f"{n} clients: {rows[-1]}", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    print(
        f"critic {args.critic}, max_tokens {args.max_tokens}, {args.threads} threads, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    print(f"in-process guard.generate, one prompt per call: {seq_s:.2f} s/request ({1 / seq_s:.2f} req/s)")
    print(f"served answers equal to in-process ones (same seed): {same}/2")
    print()
    print(
        "| clients | requests | served req/s | p50 s | p95 s | mean batch | served / in-process one by one |"
        " served / in-process one call |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, rps, p50, p95, mb in rows:
        print(
            f"| {n} | {per_level[n]} | {rps:.2f} | {p50:.2f} | {p95:.2f} | {mb:.1f} | {rps * seq_s:.2f}x"
            f" | {rps / one_call:.2f}x |"
        )
    print(f"\nin-process: one by one {1 / seq_s:.2f} req/s, one call of {len(prompts)} {one_call:.2f} req/s")


if __name__ == "__main__":
    main()
