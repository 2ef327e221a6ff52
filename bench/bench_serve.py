"""`igcritic serve` against `guard.generate` in-process on the same prompts, in the same run: one client's
latency in paired repeats, then 1, 4 and 16 concurrent clients.

    python bench/bench_serve.py                          # checkpoints/embedded, max_tokens 16, 1 thread
    python bench/bench_serve.py --pairs 4 --rounds 3 --levels        # the paired one-client ratio only
    python bench/bench_serve.py --max_tokens 32 --requests 4 --levels 1 4 16 --max_batch_size 4

Both sides run the same guard (the critic's recorded policy, fully latent mode: no cost scorer), the same
search defaults and prompts (the shipped set's held-out split, plain user turns), ``--threads`` torch threads.
The server runs in a subprocess (``igcritic serve``) and is asked with the real ``openai`` client.

Paired (one client): for ``--rounds`` rounds, each of the first ``--pairs`` prompts is answered in-process
(``guard.generate``, one prompt per call) and by the server back to back, which first alternating by round
and prompt, so load that drifts on a shared machine hits both sides alike. Each request has its own seed, so
the two answers must be equal (checked for every pair). Reported for each side: wall seconds per request
(what the client waits) and CPU seconds per request (this process plus the server's process tree, both
sides: on a shared machine the wall time swings with other jobs, the CPU time much less; the parts are
printed too, since an idle server still polls), min and median, and the per-pair ratios served /
in-process.

Concurrent (``--levels``): then all prompts in one in-process call (the batched upper bound), and per level,
that many client threads sharing the level's ``--requests`` requests (at least one each), each sending its
next request when the last is answered; requests/s over the level's wall time, latency p50/p95 per request
as the client sees it. Prints markdown tables for BENCHMARKS.md.
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


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (the server and its workers)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--critic", default=str(ROOT / "checkpoints" / "embedded"))
    ap.add_argument("--max_tokens", type=int, default=16)
    ap.add_argument("--levels", type=int, nargs="*", default=[1, 4, 16], help="none: the paired part only")
    ap.add_argument("--pairs", type=int, default=4, help="prompts in the paired one-client part")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds over those prompts")
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
    most = max([args.pairs, *per_level.values()])
    prompts = [p.prompt for p in load_prompts(PromptSource(split="heldout", limit=most))[0]]
    prompts = (prompts * (most // len(prompts) + 1))[:most]
    guard = load_guard(args.critic)
    kw = {"max_new_tokens": args.max_tokens}
    guard.generate(prompts[0], seeds=[0], **kw)  # warm-up

    port = _port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "igcritic", "serve", args.critic, "--port", str(port)]
    cmd += ["--max_batch_size", str(args.max_batch_size), "--batch_timeout", str(args.batch_timeout)]
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
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
        pairs: list[tuple[float, float]] = []  # wall s: (in-process, served)
        cpus: list[tuple[float, float]] = []  # CPU s, this process + the server's tree: (in-process, served)
        parts: list[tuple[float, float, float, float]] = []  # CPU s: (self, server) in-process, then served

        same = 0
        for r in range(args.rounds):
            for i in range(args.pairs):
                first_local = (r + i) % 2 == 0
                for local in (first_local, not first_local):
                    c0, s0, t = time.process_time(), _tree_cpu(server.pid), time.perf_counter()
                    if local:
                        text_local = guard.generate(prompts[i], seeds=[i], **kw)[0].text
                    else:
                        text_served = ask(i).choices[0].message.content
                    wall = time.perf_counter() - t
                    c, s = time.process_time() - c0, _tree_cpu(server.pid) - s0
                    if local:
                        t_local, self_local, server_local = wall, c, s
                    else:
                        t_served, self_served, server_served = wall, c, s
                pairs.append((t_local, t_served))
                cpus.append((self_local + server_local, self_served + server_served))
                parts.append((self_local, server_local, self_served, server_served))
                same += text_local == text_served
                print(
                    f"round {r} prompt {i}: in-process {t_local:.2f} s (CPU {self_local:.2f} here + "
                    f"{server_local:.2f} idle server), served {t_served:.2f} s (CPU {self_served:.2f} here + "
                    f"{server_served:.2f} server)",
                    flush=True,
                )
        seq_s = statistics.median(p[0] for p in pairs)
        if args.levels:
            t0 = time.perf_counter()
            guard.generate(prompts, seeds=list(range(len(prompts))), **kw)
            one_call = len(prompts) / (time.perf_counter() - t0)
            print(f"in-process one call of {len(prompts)}: {one_call:.2f} req/s", flush=True)
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
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its own session: the server and its workers
            server.wait()

    print(
        f"critic {args.critic}, max_tokens {args.max_tokens}, {args.threads} threads, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"served answers equal to in-process ones (same seed): {same}/{len(pairs)}")
    print()
    print("| one client, paired | pairs | wall min s | wall median s | CPU min s | CPU median s |")
    print("|---|---|---|---|---|---|")
    for k, name in ((0, "in-process `guard.generate`"), (1, "served (`openai` client)")):
        w, c = [p[k] for p in pairs], [p[k] for p in cpus]
        print(
            f"| {name} | {len(pairs)} | {min(w):.2f} | {statistics.median(w):.2f} | {min(c):.2f} "
            f"| {statistics.median(c):.2f} |"
        )
    med = [statistics.median(p[k] for p in parts) for k in range(4)]
    print(
        f"CPU medians: in-process {med[0]:.2f} s here + {med[1]:.2f} s of the idle server; served "
        f"{med[3]:.2f} s in the server + {med[2]:.2f} s here (the client); the server's work / the "
        f"in-process generation, per pair: median {statistics.median(p[3] / p[0] for p in parts):.3f}x"
    )
    for what, xs in (("wall", pairs), ("CPU", cpus)):
        ratios = [b / a for a, b in xs]
        lo, hi = min(p[1] for p in xs) / min(p[0] for p in xs), max(ratios)
        print(
            f"served / in-process, {what}: median of the per-pair ratios {statistics.median(ratios):.3f}x "
            f"(min {min(ratios):.3f}x, max {hi:.3f}x); ratio of the mins {lo:.3f}x"
        )
    if not rows:
        return
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
    print(
        f"\nin-process: one by one {1 / seq_s:.2f} req/s (paired median), "
        f"one call of {len(prompts)} {one_call:.2f} req/s"
    )


if __name__ == "__main__":
    main()
