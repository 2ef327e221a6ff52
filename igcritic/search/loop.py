"""The block-wise loop every method runs: :func:`search` batches the prompts; each batch is prefilled once,
each live beam samples its share of N candidates of one block from its own KV cache, the candidates are
scored, the decision rule keeps K per prompt (or rewinds the block), until every answer is complete."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from igcritic.critic import Critic
from igcritic.decoding import Generators, prefill, rewind, sample_block
from igcritic.policy import Policy
from igcritic.scorers import Scorer
from igcritic.search.checks import check_budget, check_prompts, checked_config
from igcritic.search.config import SearchConfig, SearchConfigError
from igcritic.search.context import _Ctx
from igcritic.search.decision import Verdict, _choose, _Track
from igcritic.search.record import GuardRecord, _record, _trace_entry
from igcritic.search.scoring import (
    _decode_scoring,
    _decoded_empty_cost,
    _entries,
    _latent_empty_cost,
    _refusal_entries,
    _score_candidates,
)
from igcritic.search.steering import _args, _processor, _recontrol

OnBlock = Callable[[int, list[int]], None]
"""``on_block(prompt index, agreed answer tokens)``: see :func:`search`."""


@torch.inference_mode()
def search(
    policy: Policy,
    prompts: list[str],
    cfg: SearchConfig,
    critic: Critic | None = None,
    cost: Scorer | None = None,
    reward: Scorer | None = None,
    seeds: list[int] | None = None,
    on_block: OnBlock | None = None,
    progress: Callable[[int], Any] | None = None,
) -> list[GuardRecord]:
    """Answer every prompt with ``cfg.method``; batches of ``cfg.prompts_per_batch`` prompts share each
    forward (automatic: sized for the policy's device).

    ``seeds``: one seed per prompt instead of ``cfg.seed`` for all: each prompt then samples from its own
    generator, so its answer is the one it gets alone, whatever shares its batch (up to float rounding of
    the batched forward). ``on_block(i, tokens)`` is called after each accepted block of prompt ``i`` with
    the answer tokens every surviving candidate of that prompt agrees on (what can be shown already).
    ``progress(n)`` is called after each batch with its number of prompts (a progress bar)."""
    cfg = checked_config(policy, cfg, critic, cost, reward)
    check_prompts(policy, prompts, cfg)
    if seeds is not None and len(seeds) != len(prompts):
        raise SearchConfigError(f"got {len(seeds)} seeds for {len(prompts)} prompts; pass one per prompt")
    dev = policy.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    out: list[GuardRecord] = []
    step = cfg.prompts_per_batch(policy.device.type)
    for i in range(0, len(prompts), step):
        ctx = _Ctx(
            policy,
            cfg,
            critic,
            cost,
            reward,
            prompts[i : i + step],
            cfg.plan.candidates * min(step, len(prompts)),
        )
        if on_block is not None:
            ctx.on_block = lambda p, tokens, i=i: on_block(i + p, tokens)
        gens = (
            [torch.Generator(device=dev).manual_seed(int(x)) for x in seeds[i : i + step]] if seeds else gen
        )
        out += _search_batch(ctx, gens)
        if progress is not None:
            progress(len(ctx.prompts))
    if not check_budget(cfg.budget, cost, critic):
        out = [replace(r, budget_checked=False) for r in out]
    return out


def _search_batch(ctx: _Ctx, gen: Generators) -> list[GuardRecord]:
    cfg, policy = ctx.cfg, ctx.policy
    t0 = time.perf_counter()
    plan = cfg.plan
    n_cand, width = plan.candidates, plan.width
    d = cfg.max_new_tokens
    # check_prompts has validated every prompt; the static cache has room for every block and its retries
    steps = math.ceil(d / width) * (plan.retries + 1) * width
    static = (ctx.cache_rows, steps) if cfg.compile else None
    beams = prefill(policy, ctx.prompts, static=static)
    _decode_scoring(ctx, beams)
    if cfg.mode == "exact":  # S_0 of the empty answer
        beams.cost = (
            _decoded_empty_cost(ctx, beams)
            if ctx.cols
            else ctx.score(ctx.cost, beams.prompt, [""] * len(beams))
        )
    elif ctx.latent_running_max or ctx.latent_context:  # Ŝ_0 of the empty answer: every window's first token
        beams.cost = _latent_empty_cost(ctx, beams)
        beams.cost_tail = torch.full((len(beams), cfg.latent_window - 1), float("nan"))
        if cfg.latent_window > 1:
            beams.cost_tail[:, -1] = beams.cost
    tracks = [_Track() for _ in ctx.prompts]
    if cfg.refusal_candidate and cfg.method == "inferenceguard":  # joins the first block's candidates
        for tr, e in zip(tracks, _refusal_entries(ctx, beams.cost), strict=True):
            tr.pool, tr.scored = [e], 1
    recontrol = _recontrol(ctx)
    vocab = beams.logits.shape[-1]
    banned = torch.zeros(len(ctx.prompts), vocab, dtype=torch.bool, device=beams.logits.device)
    while len(beams):
        # 1. each live beam takes its share of N candidates (cache rows indexed, never re-encoded)
        counts = _shares(beams.prompt, n_cand)
        parent = torch.repeat_interleave(torch.arange(len(beams)), counts)
        cands = beams.select(parent)
        parent_cost = cands.cost.clone()
        parent_tail = None if cands.cost_tail is None else cands.cost_tail.clone()
        limits = torch.tensor([min(width, d - len(t)) for t in cands.tokens])
        args = _args(ctx, cands)
        proc = _processor(ctx, banned, cands.prompt, args)
        block = sample_block(
            policy,
            cands,
            limits,
            cfg,
            gen,
            proc,
            keep_latents=bool(ctx.cols) or ctx.latent_running_max or ctx.latent_context,
            latent_logits=recontrol,
        )
        for p, n in (args.scored if args is not None else {}).items():
            tracks[p].scored += n
        # 2. safety state (exact S or latent Ŝ), value and admissibility of every candidate
        scores = _score_candidates(ctx, cands, parent_cost, block)
        s = scores.cost
        complete = (block.eos | torch.tensor([len(t) >= d for t in cands.tokens])).tolist()
        cols = {k: v.tolist() for k, v in scores._asdict().items()}
        # 3. keep the top K per prompt; nothing admissible: rewind the block (retry) or fail closed
        keep: list[int] = []
        rewound: list[bool] = []
        for p, tr in enumerate(tracks):
            rows = torch.nonzero(cands.prompt == p).flatten().tolist()
            if not rows:
                continue
            tr.scored += len(rows)
            entries = _entries(cands.tokens, rows, cols, complete) + tr.pool
            chosen = _choose(cfg, tr, entries, plan.beams, plan.retries)
            if cfg.trace:
                tr.trace.append(_trace_entry(ctx, tr, entries, chosen))
            if chosen is Verdict.RETRY:  # resample from each beam's state at the block start, penalised
                tr.retries += 1
                tr.block_retries += 1
                for j in rows:
                    banned[p, cands.tokens[j][len(cands.tokens[j]) - int(block.new[j]) :]] = True
                firsts = sorted({int(parent[j]): j for j in reversed(rows)}.values())
                keep += firsts
                rewound += [True] * len(firsts)
            elif chosen is Verdict.REFUSE:
                tr.refused, tr.pool = True, []
            else:
                tr.block_retries = 0
                banned[p] = False
                tr.steps += 1
                tr.pool = [replace(e, row=None) for e in chosen if e.complete]
                keep += [e.row for e in chosen if not e.complete]
                rewound += [False] * (len(chosen) - len(tr.pool))
                if ctx.on_block is not None:
                    ctx.on_block(p, _agreed([e.tokens for e in chosen]))
        order = sorted(range(len(keep)), key=lambda i: (int(cands.prompt[keep[i]]), keep[i]))
        keep_idx = torch.tensor([keep[i] for i in order], dtype=torch.long)
        was_rewound = torch.tensor([rewound[i] for i in order], dtype=torch.bool)
        if recontrol is not None:
            ctx.critic_seconds += recontrol.seconds
            recontrol.seconds = 0.0
        beams = cands.select(keep_idx)
        beams.cost = torch.where(was_rewound, parent_cost[keep_idx], s[keep_idx]) if len(keep_idx) else s[:0]
        if parent_tail is not None:  # a rewound row's window is its parent's again
            beams.cost_tail = torch.where(was_rewound[:, None], parent_tail[keep_idx], beams.cost_tail)
        rewind(beams, was_rewound, block, keep_idx)
    seconds = (time.perf_counter() - t0) / len(ctx.prompts)
    return [_record(ctx, p, tr, seconds) for p, tr in enumerate(tracks)]


def _agreed(answers: list[list[int]]) -> list[int]:
    """The longest token prefix all ``answers`` share."""
    first = answers[0]
    n = min(len(a) for a in answers)
    for a in answers[1:]:
        n = next((k for k in range(n) if a[k] != first[k]), n)
    return first[:n]


def _shares(prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Candidates per beam: N spread evenly over each prompt's live beams (beams of a prompt are
    contiguous)."""
    counts = torch.zeros(len(prompt), dtype=torch.long)
    for p in prompt.unique().tolist():
        rows = torch.nonzero(prompt == p).flatten()
        share = torch.full((len(rows),), n // len(rows), dtype=torch.long)
        share[: n % len(rows)] += 1
        counts[rows] = share
    return counts
