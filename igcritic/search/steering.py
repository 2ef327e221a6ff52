"""What edits a block's sampling: the resample penalty on rejected tokens and EOS suppression as logits
processors, and the token-level baselines of :mod:`igcritic.baselines` (ARGS as a processor, on the policy's
own layers when its scorers read them; RE-Control's latent edit)."""

from __future__ import annotations

import time

import torch

from igcritic.baselines import ArgsProcessor, LatentGuide, ReControl, guidance_needs
from igcritic.decoding import LogitsProcessorList, RejectedTokenPenalty, StaticKV, SuppressTokens
from igcritic.scorers.latent import MAX_ANSWER_TOKENS, MAX_PROMPT_TOKENS
from igcritic.search.context import _Ctx


def _args(ctx: _Ctx, cands) -> ArgsProcessor | None:
    """ARGS' processor of one block (``method: args``), scoring through :meth:`_Ctx.score`'s bookkeeping."""
    cfg = ctx.cfg
    if cfg.method != "args":
        return None

    def scorer(s):
        return None if s is None else (lambda idx, texts: ctx.score(s, idx, texts))

    return ArgsProcessor(
        ctx.policy,
        [list(t) for t in cands.tokens],
        cands.prompt,
        scorer(ctx.reward),
        scorer(ctx.cost),
        cfg.args_top_k,
        cfg.args_weight,
        cfg.guidance,
        cfg.lagrange_lambda,
        latent=_args_latent(ctx, cands),
    )


def _args_latent(ctx: _Ctx, cands) -> LatentGuide | None:
    """ARGS' scorers on the policy's own layers (:class:`LatentGuide`) when every scorer its guidance reads
    has them tapped, the rows start at the prompt's end (ARGS' one block), no prompt is longer than the
    text path reads and the cache is the dynamic one; None: the text path."""
    want_r, want_c = guidance_needs(ctx.cfg.guidance)
    used = {"reward": ctx.reward if want_r else None, "cost": ctx.cost if want_c else None}
    cols = {r: getattr(s, "decode_columns", lambda _: None)(ctx.policy) for r, s in used.items() if s}
    fresh = not any(cands.tokens)
    too_long = bool((cands.mask.sum(1) > MAX_PROMPT_TOKENS).any())
    if not cols or None in cols.values() or not fresh or too_long or isinstance(cands.cache, StaticKV):
        return None

    def score(role: str):
        scorer = used[role]

        def run(idx, first, last, mean) -> torch.Tensor:
            t0 = time.perf_counter()
            out = torch.from_numpy(scorer.decode_values(cols[role], first, last, mean)).float()
            ctx.account(idx.tolist(), time.perf_counter() - t0)
            return out

        return run if role in cols else None

    layers = [layer for r in cols for layer in used[r].head.layers]
    return LatentGuide(cands, score("reward"), score("cost"), max(layers), MAX_ANSWER_TOKENS)


def _recontrol(ctx: _Ctx) -> ReControl | None:
    cfg = ctx.cfg
    if cfg.method != "recontrol":
        return None
    return ReControl(
        ctx.policy,
        ctx.critic,
        cfg.recontrol_steps,
        cfg.recontrol_step_size,
        cfg.guidance,
        cfg.lagrange_lambda,
    )


def _processor(
    ctx: _Ctx, banned: torch.Tensor, prompt: torch.Tensor, args: ArgsProcessor | None = None
) -> LogitsProcessorList | None:
    procs = LogitsProcessorList()
    if bool(banned.any()):
        procs.append(RejectedTokenPenalty(banned[prompt.to(banned.device)], ctx.cfg.resample_penalty))
    if ctx.cfg.ignore_eos:
        procs.append(SuppressTokens(tuple(ctx.policy.eos_token_ids)))
    if args is not None:  # last: ARGS picks among the tokens the other processors leave
        procs.append(args)
    return procs or None
