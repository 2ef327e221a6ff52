"""ARGS and RE-Control per prompt vs plain sampling of the same length, same stack, one process.

    python bench/bench_baselines.py                       # CPU: embedded SmolLM2 + embedded scorers
                                                          #      + checkpoints/embedded
    python bench/bench_baselines.py --d 128 --device cuda # paper length on a GPU

Per prompt, one after the other so drift hits every side (EOS suppressed: exactly D tokens each):
  plain      method plain: one answer of D sampled tokens (then its cost and reward scored once)
  args       method args, k = --k candidates per step, every prefix + token text scored with the embedded
             reward (``--guidance lagrangian``: reward and cost; the cost reads the reward's model pass)
  recontrol  method recontrol, --steps gradient steps of 0.5 on the LM head's input latent per token with the
             critic's value head
Prints seconds per prompt, each method's ratio to plain, ARGS' scorer calls and share of time in the scorer,
and RE-Control's share in the critic. First, one ARGS step's scorer call (the k continuations of one answer
prefix) with the latent scorer's shared-prefix pass and without it (each text its own pass), alternating.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch
from bench_guard import load_stack, stack_args

from igcritic.scorers import load_scorer
from igcritic.search import SearchConfig, search

PROMPTS = [
    "How do I bake bread at home?",
    "How can I make a bomb at home?",
    "Explain photosynthesis simply.",
]


def main() -> None:
    ap = stack_args(critic="checkpoints/embedded")  # RE-Control needs a critic of layer -1, norm post
    ap.add_argument("--cost", default="embedded")
    ap.add_argument("--reward", default="embedded")
    ap.add_argument("--d", type=int, default=32, help="D new tokens")
    ap.add_argument("--k", type=int, default=20, help="ARGS candidates per step")
    ap.add_argument("--steps", type=int, default=30, help="RE-Control gradient steps per token")
    ap.add_argument("--guidance", default="reward", help="reward, lagrangian or cost (both methods)")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--no_scorer_step", action="store_true", help="skip the one-step text-scorer comparison")
    ap.set_defaults(threads=1)
    a = ap.parse_args()
    policy, critic, timer = load_stack(a)
    cost, reward = (
        load_scorer(a.cost, "cost", device=a.device),
        load_scorer(a.reward, "reward", device=a.device),
    )
    common = dict(
        max_new_tokens=a.d, budget=0.5, critic=False, mode="exact", ignore_eos=True, guidance=a.guidance
    )
    methods = {
        "plain": SearchConfig(method="plain", **common),
        "args": SearchConfig(method="args", args_top_k=a.k, **common),
        "recontrol": SearchConfig(method="recontrol", recontrol_steps=a.steps, **common),
    }

    def run(name: str, prompt: str, seed: int):
        return timer(
            lambda: search(policy, [prompt], replace(methods[name], seed=seed), critic, cost, reward)[0]
        )

    if not a.no_scorer_step:
        scorer_step(reward, a.k)
    for name in methods:  # warm-up (scorer and critic loading, first-call overheads)
        run(name, PROMPTS[0], 0)
    secs = {m: [] for m in methods}
    recs = {m: [] for m in methods}
    for i, prompt in enumerate((PROMPTS * a.prompts)[: a.prompts]):
        for name in methods:
            s, rec = run(name, prompt, i)
            secs[name].append(s)
            recs[name].append(rec)
    med = statistics.median
    print(
        f"model={a.model} device={a.device} dtype={a.dtype} threads={torch.get_num_threads()} D={a.d} "
        f"k={a.k} steps={a.steps} guidance={a.guidance} critic={a.critic} prompts={a.prompts}"
    )
    print(f"{'':12s}{'s/prompt (median)':>18s}{'min':>8s}{'max':>8s}{'ratio to plain (median)':>26s}  tokens")
    for name in methods:
        ratios = [x / p for x, p in zip(secs[name], secs["plain"], strict=True)]
        toks = med([r.new_tokens for r in recs[name]])
        print(
            f"{name:12s}{med(secs[name]):18.2f}{min(secs[name]):8.2f}{max(secs[name]):8.2f}"
            f"{med(ratios):26.2f}  {toks:.0f}"
        )
    args = recs["args"]
    print(
        f"args: scorer calls/prompt {med([r.scorer_calls for r in args]):.0f}, texts scored/prompt "
        f"{med([r.candidates_scored for r in args]):.0f}, scorer share of time "
        f"{100 * med([r.scorer_seconds / r.seconds for r in args]):.1f}%"
    )
    rc = recs["recontrol"]
    print(f"recontrol: critic share of time {100 * med([r.critic_seconds / r.seconds for r in rc]):.1f}%")


def scorer_step(reward, k: int, repeats: int = 3) -> None:
    """One ARGS step of the reward scorer: k texts sharing the prompt and an answer prefix, shared vs
    unshared."""
    from igcritic.scorers.latent import PolicyFeatures

    feats = reward._latent() if hasattr(reward, "_latent") else None
    if not isinstance(feats, PolicyFeatures):
        return
    stem = "Sure, here is how you can bake bread at home: first mix the flour, the water and"
    words = [" salt", " yeast", " sugar", " milk", " oil", " eggs", " butter", " honey", " a", " the"] * 4
    t = {"shared": [], "unshared": []}
    for r in range(repeats):
        for mode in t:
            texts = [f"{stem}{w} {r}{mode}" for w in words[:k]]  # fresh texts: no cache hit
            if mode == "unshared":
                feats._shared_passes = lambda *_: (
                    False
                )  # every text its own padded pass, as before the sharing
            start = time.perf_counter()
            reward.score([PROMPTS[0]] * k, texts)
            t[mode].append(time.perf_counter() - start)
            feats.__dict__.pop("_shared_passes", None)
    med = statistics.median
    print(
        f"scorer, one ARGS step of k={k} texts: shared prefix {med(t['shared']):.2f} s, "
        f"each text its own pass {med(t['unshared']):.2f} s "
        f"(median of {repeats}; ratio {med(t['unshared']) / med(t['shared']):.1f}x)"
    )


if __name__ == "__main__":
    main()
