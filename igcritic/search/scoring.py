"""Every candidate's scores: the tracked cost S (exact from the cost scorer, read from the decode pass when
the scorer reads the policy's own layers, or the critic's latent Ŝ), the value (critic V or reward), the
calibrated q and the admission test ``z >= margin and q(h, z - margin) >= tau``; the refusal candidate is
scored the same way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import torch

from igcritic.critic import Critic
from igcritic.decoding import RunningPrefix
from igcritic.scorers.base import is_running_max
from igcritic.scorers.latent import MAX_ANSWER_TOKENS, MAX_PROMPT_TOKENS, same_tokens
from igcritic.search.context import _Ctx


class Scores(NamedTuple):
    """The scores of a set of candidates, each (B,) on CPU."""

    cost: torch.Tensor
    """S: the exact cost (running max over prefixes) or the critic's latent Ŝ."""
    value: torch.Tensor
    """The critic's V(h), or the reward scorer's R; NaN when neither is bound."""
    q: torch.Tensor
    """The calibrated q(h, z - margin) (ones for methods without admission)."""
    admissible: torch.Tensor
    """bool: z - margin >= 0 and q >= tau (all True for methods without admission)."""


@dataclass
class _Entry:
    """A scored candidate: a row of the current block, or (``row`` None) a complete answer kept earlier."""

    tokens: list[int]
    cost: float
    value: float
    q: float
    admissible: bool
    complete: bool = True
    row: int | None = None
    refusal: bool = False
    """The refusal text scored as a candidate (``refusal_candidate``)."""


def _entries(
    tokens: list[list[int]], rows: list[int], cols: dict[str, list], complete: list[bool]
) -> list[_Entry]:
    """The candidates ``rows`` of a block as entries, each field by name from ``cols`` (:class:`Scores` as
    lists)."""
    return [
        _Entry(tokens[j], **{k: v[j] for k, v in cols.items()}, complete=complete[j], row=j) for j in rows
    ]


def _decode_scoring(ctx: _Ctx, beams) -> None:
    """Score from the decode pass when every scorer the search calls reads the policy's own layers (and no
    prompt is longer than the text path reads): fill ``ctx.cols`` and start ``beams.prefix``."""
    cfg = ctx.cfg
    used = {"cost": ctx.cost if cfg.mode == "exact" else None, "reward": None if cfg.critic else ctx.reward}
    cols = {r: getattr(s, "decode_columns", lambda _: None)(ctx.policy) for r, s in used.items() if s}
    too_long = bool((beams.mask.sum(1) > MAX_PROMPT_TOKENS).any())
    if cols and None not in cols.values() and not too_long:
        ctx.cols = cols
        beams.prefix = RunningPrefix.start(beams.h)


def _decoded_empty_cost(ctx: _Ctx, beams) -> torch.Tensor:
    """S_0 (the empty answer's p) of each prompt from its prefill latent."""
    t0 = time.perf_counter()
    h0 = beams.prefix.first
    out = torch.from_numpy(ctx.cost.decode_values(ctx.cols["cost"], h0, h0, h0)).float()
    ctx.account(beams.prompt.tolist(), time.perf_counter() - t0)
    return out


def _decoded_scores(
    ctx: _Ctx, cands, block, texts: list[str], parent_cost: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The exact cost (running max over every new prefix and ``parent_cost``) and the reward of every
    candidate from the block's latents, advancing ``cands.prefix``. A candidate whose text does not
    re-tokenise to its tokens is scored by the text path, so both paths give the same scores."""
    t0 = time.perf_counter()
    start = cands.prefix
    counted = (block.new - block.eos.long()).clamp(min=0)  # an EOS decodes to no text
    counted = torch.minimum(counted, (MAX_ANSWER_TOKENS + 1 - start.count).clamp(min=0))
    after, last, mean, valid = start.advance(block.latents, counted)
    cands.prefix = after
    out = {}
    if "cost" in ctx.cols:
        r, j = valid.nonzero(as_tuple=True)
        p = ctx.cost.decode_values(ctx.cols["cost"], start.first[r], last[r, j], mean[r, j])
        s = parent_cost.double().scatter_reduce(0, r, torch.from_numpy(p).double(), "amax")
        out["cost"] = s.float()
    if "reward" in ctx.cols:
        mean_now = after.total / after.count[:, None]
        out["reward"] = torch.from_numpy(
            ctx.reward.decode_values(ctx.cols["reward"], after.first, after.last, mean_now)
        ).float()
    ctx.account(cands.prompt.tolist(), time.perf_counter() - t0)
    same = same_tokens(ctx.policy.tokenizer, texts, cands.tokens, ctx.policy.eos_token_ids)
    rows = torch.tensor([j for j, ok in enumerate(same) if not ok], dtype=torch.long)
    if len(rows):
        sub = [texts[j] for j in rows.tolist()]
        for role, vals in out.items():
            scorer, prev = (ctx.cost, parent_cost[rows]) if role == "cost" else (ctx.reward, None)
            vals[rows] = ctx.score(scorer, cands.prompt[rows], sub, previous=prev)
    return out


def _latent_empty_cost(ctx: _Ctx, beams) -> torch.Tensor:
    """Ŝ_0 of each prompt from its prefill latent; a ``cost_context`` critic's rows start their
    ``RunningPrefix`` here."""
    if not ctx.latent_context:
        return ctx.critic_cost(beams.h)
    beams.prefix = RunningPrefix.start(beams.h)
    h0 = beams.prefix.first
    return ctx.critic_context_cost(h0, h0, h0)


def _latent_cost(ctx: _Ctx, cands, parent_cost: torch.Tensor, block=None) -> torch.Tensor:
    """Ŝ of every candidate from the critic's cost head: at its last token, or (a running-max cost,
    ``ctx.latent_running_max``) the running max over ``parent_cost`` and every token the block added (the
    decode pass keeps their latents) of Ŝ averaged over the last ``latent_window`` tokens, the window reaching
    back into earlier blocks through ``cands.cost_tail`` (updated here). Without ``block`` (the refusal
    candidate): the max of ``parent_cost`` and its last token's Ŝ. A ``cost_context`` critic reads each
    token with h_0 and the running mean (``cands.prefix``, advanced here; an EOS is no token, as for the
    exact cost)."""
    steps, new = None, None
    if ctx.latent_context:
        steps, last, new = _context_costs(ctx, cands, block)
    else:
        if ctx.latent_running_max and block is not None and block.latents is not None and block.steps:
            new = block.new  # (R,) tokens each row added
            r, j = (torch.arange(block.steps)[None] < new[:, None]).nonzero(as_tuple=True)
            steps = torch.full((len(new), block.steps), float("nan"))
            if len(r):
                steps[r, j] = ctx.critic_cost(block.latents[r, j + 1])
        last = ctx.critic_cost(cands.h)  # last: value and q reuse this trunk pass
    if not ctx.latent_running_max:
        return last
    if steps is None:  # the refusal candidate (or a block that added nothing): its last token
        return torch.maximum(last, parent_cost.float())
    windowed, cands.cost_tail = window_means(cands.cost_tail, steps, new)
    return torch.maximum(windowed, parent_cost.float())


def _context_costs(
    ctx: _Ctx, cands, block
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """A ``cost_context`` critic's Ŝ at every token the block added ((R, S), NaN where a row added none), at
    the candidate's last token (R,; None where a running max over the steps needs no such value), and the
    tokens each row counted (R,); without ``block`` (the refusal candidate, whose ``prefix`` is built whole)
    the steps and counts are None."""
    if block is None or block.latents is None or not block.steps:
        p = cands.prefix
        return None, ctx.critic_context_cost(p.last, p.first, p.total / p.count[:, None]), None
    start = cands.prefix
    counted = (block.new - block.eos.long()).clamp(min=0)  # an EOS decodes to no text
    after, h, mean, valid = start.advance(block.latents, counted)
    cands.prefix = after
    steps = torch.full(valid.shape, float("nan"))
    r, j = valid.nonzero(as_tuple=True)
    if len(r):
        steps[r, j] = ctx.critic_context_cost(h[r, j], start.first[r], mean[r, j])
    if ctx.latent_running_max:
        return steps, None, counted
    last = ctx.critic_context_cost(after.last, after.first, after.total / after.count[:, None])
    return steps, last, counted


def answer_latent_cost(critic: Critic, h: torch.Tensor) -> float:
    """The S fully latent mode tracks for a whole answer (``latent_window`` 1), from its teacher-forced
    latents h_0..h_T ((T + 1, H), no EOS): the running max of Ŝ over every token when the critic's cost is a
    running max, else Ŝ(h_T); a ``cost_context`` critic reads each h_t with h_0 and the mean of h_0..h_t."""
    mean = h.double().cumsum(0) / torch.arange(1, len(h) + 1, dtype=torch.float64)[:, None]
    with torch.inference_mode():
        s = critic.cost(h, h[:1].expand_as(h), mean.to(h.dtype))
    return float(s.max() if is_running_max(critic.config.cost_scorer or {}) else s[-1])


def window_means(
    tail: torch.Tensor, steps: torch.Tensor, new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's max, over the ``new[r]`` steps of a block, of the mean of Ŝ over the window of w tokens
    ending there (fewer at the answer's start: NaN in ``tail`` is no token), and its tail after the block.

    ``tail`` (R, w - 1): Ŝ of the tokens before the block; ``steps`` (R, S): Ŝ of the block's tokens (NaN
    past ``new[r]``). Rows with no new token get -inf and keep their tail."""
    w = tail.shape[1] + 1
    seq = torch.cat([tail, steps], 1)  # (R, w - 1 + S)
    win = seq.unfold(1, w, 1)  # (R, S, w): the window ending at each step
    known = ~win.isnan()
    means = win.nan_to_num(0.0).sum(-1) / known.sum(-1).clamp(min=1)
    valid = torch.arange(steps.shape[1])[None] < new[:, None]
    best = means.masked_fill(~valid, float("-inf")).amax(1)
    at = new[:, None] + torch.arange(w - 1)[None]  # the last w - 1 positions of seq each row reached
    return best, seq.gather(1, at)


def _score_candidates(ctx: _Ctx, cands, parent_cost: torch.Tensor, block=None) -> Scores:
    """The scores of every candidate, on CPU. ``block`` (the decode pass's running state)
    lets the policy-layer scorers read it; without it (the refusal candidate) they score the text."""
    cfg = ctx.cfg
    texts = (
        ctx.texts(cands.tokens)
        if (cfg.mode == "exact" or ctx.reward is not None and not cfg.critic)
        else None
    )
    decoded = _decoded_scores(ctx, cands, block, texts, parent_cost) if ctx.cols and block is not None else {}
    if "cost" in decoded:
        s = decoded["cost"]
    elif cfg.mode == "exact":
        s = ctx.score(ctx.cost, cands.prompt, texts, previous=parent_cost)
    else:  # fully latent: the critic's cost head, no cost-scorer call
        s = _latent_cost(ctx, cands, parent_cost, block)
    z = cfg.budget - s
    if cfg.critic:
        value = ctx.critic_value(cands.h)
    elif "reward" in decoded:
        value = decoded["reward"]
    elif ctx.reward is not None:
        value = ctx.score(ctx.reward, cands.prompt, texts)
    else:  # plain sampling with neither: nothing to report
        value = torch.full_like(z, float("nan"))
    if cfg.method != "inferenceguard":
        return Scores(s, value, q=torch.ones_like(z), admissible=torch.ones_like(z, dtype=torch.bool))
    zm = z - cfg.margin
    q = ctx.critic_safe_prob(cands.h, zm) if cfg.critic else torch.ones_like(z)
    return Scores(s, value, q, admissible=(zm >= 0) & (q >= cfg.tau))


def refusal_tokens(policy, text: str) -> list[int]:
    """The tokens of a refusal as an answer: ``text`` + EOS (the refusal candidate's, and a refused answer's
    rollout in ``collect --guard``)."""
    return policy.tokenizer(text, add_special_tokens=False)["input_ids"] + policy.eos_token_ids[:1]


def _refusal_entries(ctx: _Ctx, s0: torch.Tensor) -> list[_Entry]:
    """``refusal_text`` + EOS as a complete candidate of each prompt, scored by :func:`_score_candidates`
    from the latent of its last token (one teacher-forced forward of the batch's prompts)."""
    policy = ctx.policy
    ids = refusal_tokens(policy, ctx.cfg.refusal_text)
    n = len(ctx.prompts)
    enc = policy.encode_prompts(ctx.prompts, new_tokens=len(ids))
    tail = torch.tensor([ids] * n, dtype=torch.long, device=enc["input_ids"].device)  # (P, T_r)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(tail)], 1)
    _, lat, _ = policy.forward(torch.cat([enc["input_ids"], tail], 1), mask)  # (P, T, H)
    rows = SimpleNamespace(tokens=[list(ids) for _ in range(n)], prompt=torch.arange(n), h=lat[:, -1].float())
    if ctx.latent_context:  # h_0 at the prompt's end (left-padded), then the refusal's tokens but EOS
        answer = lat[:, enc["input_ids"].shape[1] - 1 :].float().cpu()
        counted = torch.full((n,), len(ids) - 1, dtype=torch.long)
        rows.prefix = RunningPrefix.start(answer[:, 0]).advance(answer, counted)[0]
    cols = {k: v.tolist() for k, v in _score_candidates(ctx, rows, s0)._asdict().items()}
    return [
        _Entry(list(ids), **{k: v[p] for k, v in cols.items()}, complete=True, refusal=True) for p in range(n)
    ]
