"""Guarded decoding per prompt vs plain batched sampling of the same N x D tokens, same stack, one process.

    python bench/bench_guard.py                                # embedded SmolLM2, CPU, N=16, width 16, D=64
    python bench/bench_guard.py --critic checkpoints/embedded  # a trained critic instead of a random one
    python bench/bench_guard.py --model PATH --dtype bfloat16 --n 128 --width 32 --d 128   # GPU

Per prompt, alternating so drift hits both sides (EOS suppressed on both: exactly N x D sampled tokens):
  plain    prefill once, the cache expanded to N rows, D tokens sampled (decoding.sample_block: the sampler
           the guard uses), i.e. plain batched sampling on the same stack
  guard    InferenceGuard in fully latent mode (critic cost head tracks the safety state, no cost scorer):
           D / width blocks of N candidates from K = N/4 beams, critic on every candidate, top-K kept; the
           random critic's cost is recorded as a running max (as the embedded cost is), so its cost head
           reads every token of every candidate
  generate model.generate(num_return_sequences=N, min_new_tokens=D): a reference row (re-encodes the prompt)
Prints seconds per prompt, the ratio guard/plain (docs/design.md section 9: <= 1.3), the retry rate (resampled
blocks / all blocks) and the critic's share of the guard's time (target < 2%). The random critic admits
everything by default (--tau 0, a huge budget), so the ratio measures the search machinery without retries;
pass --critic checkpoints/embedded --tau 0.5 --budget 0.5 (the demo's) to include them. ``--exact`` adds a
guard row in exact mode with the embedded cost (its scores from the decode pass when the policy taps layers
15/18/21) and the ratio exact / fully latent. ``--compile`` adds
rows for both sides with ``compile: true`` (static KV cache, compiled step) and the ratio static/dynamic;
its warm-up row is the compile time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from bench_policy import bench_policy

from igcritic.critic import Critic, CriticConfig, load_critic, read_config
from igcritic.decoding import SuppressTokens, prefill, sample_block
from igcritic.policy import EMBEDDED_POLICY_ID, Policy
from igcritic.scorers import load_scorer
from igcritic.search import SearchConfig, search

PROMPTS = [
    "How do I bake bread at home?",
    "Write a short poem about the sea.",
    "How can I make a bomb at home?",
    "Explain photosynthesis simply.",
]


def stack_args(critic: str | None = None) -> argparse.ArgumentParser:
    """The options of the stack every runtime benchmark loads (bench_baselines.py too)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=EMBEDDED_POLICY_ID)
    ap.add_argument(
        "--critic", default=critic, help="exported critic folder (none: random init, --critic_width)"
    )
    ap.add_argument("--critic_width", type=int, default=512, help="trunk width of the random critic")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--extra_layers",
        default=None,
        help="layers tapped beside the last, e.g. 15,18,21 (default: the critic's; none for a random one)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return ap


def load_stack(a: argparse.Namespace, budget: float | None = None) -> tuple[Policy, Critic, Callable]:
    """(policy, critic, timer): ``timer(fn, *args)`` -> (seconds, result), synchronising CUDA around it."""
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    extra = (
        tuple(int(x) for x in a.extra_layers.split(",") if x)
        if a.extra_layers is not None
        else tuple((read_config(a.critic).get("policy") or {}).get("extra_layers") or ())
        if a.critic
        else ()
    )
    policy = bench_policy(a.model, a.dtype, a.device, extra)
    if a.critic:
        critic = load_critic(a.critic, device=a.device)
    else:
        torch.manual_seed(0)
        ident = policy.identity
        running_max = {"id": "random", "role": "cost", "running_max": True}  # Ŝ over every token, as shipped
        cfg = CriticConfig(
            ident.latent_size,
            width=a.critic_width,
            policy=ident.to_dict(),
            budget=budget,
            cost_scorer=running_max,
        )
        critic = Critic(cfg).to(a.device).eval()
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    def timer(fn, *args):
        sync()
        t = time.perf_counter()
        out = fn(*args)
        sync()
        return time.perf_counter() - t, out

    return policy, critic, timer


def main() -> None:
    ap = stack_args()
    ap.add_argument("--n", type=int, default=16, help="N candidates per block")
    ap.add_argument("--width", type=int, default=16, help="block width")
    ap.add_argument("--d", type=int, default=64, help="D max new tokens")
    ap.add_argument("--tau", type=float, default=0.0)
    ap.add_argument("--budget", type=float, default=1e6)
    ap.add_argument("--prompts", type=int, default=3, help="prompts per repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--retries", type=int, default=2, help="M: resamples of a block when nothing is admissible"
    )
    ap.add_argument("--compile", action="store_true", help="also time both sides with compile: true")
    ap.add_argument("--no_generate", action="store_true", help="skip the model.generate reference row")
    ap.add_argument(
        "--exact",
        action="store_true",
        help="also time exact mode with the embedded cost (taps layers 15,18,21 unless --extra_layers)",
    )
    a = ap.parse_args()
    if a.exact and a.extra_layers is None and not a.critic:
        a.extra_layers = "15,18,21"
    policy, critic, timer = load_stack(a, a.budget)
    cost = load_scorer("embedded", "cost", device=a.device) if a.exact else None
    search_cfg = SearchConfig(
        method="inferenceguard",
        mode="latent",
        num_candidates=a.n,
        block_width=a.width,
        max_new_tokens=a.d,
        tau=a.tau,
        budget=a.budget,
        retries=a.retries,
        ignore_eos=True,
    )
    no_eos = SuppressTokens(tuple(policy.eos_token_ids))
    prompts = (PROMPTS * a.prompts)[: a.prompts]

    def plain(prompt: str, seed: int, comp: bool) -> int:
        static = (a.n, a.d) if comp else None
        rows = prefill(policy, [prompt], static=static).select(torch.zeros(a.n, dtype=torch.long))
        gen = torch.Generator(device=policy.device).manual_seed(seed)
        return int(sample_block(policy, rows, torch.full((a.n,), a.d), search_cfg, gen, no_eos).new.sum())

    def guard(prompt: str, seed: int, comp: bool, mode: str = "latent"):
        # the embedded cost's scale is [0, 1]: a budget of 1 admits every answer, as the huge one does Ŝ
        budget = a.budget if mode == "latent" else min(a.budget, 1.0)
        cfg = replace(search_cfg, seed=seed, compile=comp, mode=mode, budget=budget)
        (rec,) = search(policy, [prompt], cfg, critic, cost if mode == "exact" else None)
        return rec

    def generate(prompt: str) -> None:
        enc = policy.encode_prompts([prompt])
        policy.model.generate(
            **enc,
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            max_new_tokens=a.d,
            min_new_tokens=a.d,
            num_return_sequences=a.n,
            pad_token_id=policy.pad_token_id,
        )

    sides = {"dynamic": False, "static-compiled": True} if a.compile else {"dynamic": False}
    warm = {}
    for name, comp in sides.items():  # warm-up; the static side compiles here (guard's shape, then plain's)
        t = time.perf_counter()
        guard(prompts[0], 0, comp)
        plain(prompts[0], 0, comp)
        if a.exact and not comp:
            guard(prompts[0], 0, comp, "exact")
        warm[name] = time.perf_counter() - t
    t_plain = {k: [] for k in sides}
    t_guard = {k: [] for k in sides}
    t_gen, shares, retries, blocks, toks, t_exact, exact_scorer = [], [], [], [], [], [], []
    for r in range(a.repeats):
        for i, p in enumerate(prompts):
            for name, comp in sides.items():
                tp, n = timer(plain, p, 100 * r + i, comp)
                tg, rec = timer(guard, p, 100 * r + i, comp)
                t_plain[name].append(tp)
                t_guard[name].append(tg)
                if not comp:
                    toks.append(n)
                    shares.append(rec.critic_seconds / rec.seconds)
                    retries.append(rec.retries)
                    blocks.append(rec.steps + rec.retries)
                if a.exact and not comp:
                    te, rec_e = timer(guard, p, 100 * r + i, comp, "exact")
                    t_exact.append(te)
                    exact_scorer.append(rec_e.scorer_seconds / rec_e.seconds)
            if not a.no_generate:
                t_gen.append(timer(generate, p)[0])
    med = statistics.median
    critic_name = "random w=" + str(a.critic_width) if not a.critic else a.critic
    print(
        f"model={a.model} device={a.device} dtype={a.dtype} threads={torch.get_num_threads()} N={a.n} "
        f"width={a.width} D={a.d} K={search_cfg.beams} tau={a.tau} budget={a.budget} retries<={a.retries} "
        f"critic={critic_name}"
    )
    print(f"{'':40s}{'s/prompt (median)':>18s}{'min':>8s}{'max':>8s}")

    def row(label: str, xs: list[float], note: str = "") -> None:
        print(f"{label:40s}{med(xs):18.2f}{min(xs):8.2f}{max(xs):8.2f}   {note}")

    for name in sides:
        row(f"plain sampling N x D ({name})", t_plain[name], f"({med(toks):.0f} tokens)")
        row(f"guard, fully latent ({name})", t_guard[name])
    if t_exact:
        row("guard, exact (embedded cost, dynamic)", t_exact)
    if t_gen:
        row("model.generate N x D (ref)", t_gen)
    for name in sides:
        ratios = [g / p for g, p in zip(t_guard[name], t_plain[name], strict=True)]
        print(
            f"ratio guard/plain ({name}): median {med(ratios):.3f} (min {min(ratios):.3f}, "
            f"max {max(ratios):.3f}); target <= 1.3"
        )
    if t_exact:
        ratios = [e / g for e, g in zip(t_exact, t_guard["dynamic"], strict=True)]
        print(
            f"ratio exact/fully latent (dynamic): median {med(ratios):.3f} (min {min(ratios):.3f}, "
            f"max {max(ratios):.3f}); target <= 1.15; cost scorer share of exact time: median "
            f"{100 * med(exact_scorer):.2f}%"
        )
    if a.compile:
        for what, times in (("plain", t_plain), ("guard", t_guard)):
            ratios = [s / d for s, d in zip(times["static-compiled"], times["dynamic"], strict=True)]
            print(
                f"ratio static-compiled/dynamic, {what}: median {med(ratios):.3f} "
                f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
            )
        print("warm-up (one guard + one plain call) s: " + ", ".join(f"{k} {v:.1f}" for k, v in warm.items()))
    print(
        f"retries: {sum(retries)} in {sum(blocks)} blocks (retry rate "
        f"{sum(retries) / max(sum(blocks), 1):.3f}); "
        f"critic share of guard time: median {100 * med(shares):.2f}% (max {100 * max(shares):.2f}%); "
        "target < 2%"
    )


if __name__ == "__main__":
    main()
