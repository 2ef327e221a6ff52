"""The answer to one prompt: :class:`GuardRecord`, built from the prompt's pool when its search ends (the
best entry by the decision rule, the refusal text when it failed closed or the refusal candidate won)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from igcritic.search.context import _Ctx
from igcritic.search.decision import Verdict, _rank, _Track
from igcritic.search.scoring import _Entry


@dataclass
class GuardRecord:
    """The answer to one prompt and how the search got there."""

    prompt: str
    text: str
    """The answer (the refusal text when refused)."""
    token_ids: list[int]
    """Answer tokens (EOS included when sampled; empty when refused)."""
    method: str
    safe: bool
    """Tracked cost within budget (final z >= 0) and no best-effort fallback."""
    cost_source: str
    """``exact`` (cost scorer S) or ``latent`` (critic's Ŝ(h)): where ``cost`` comes from."""
    final_safety_state: float
    """z = budget - cost."""
    cost: float
    """Tracked S of the answer (nan when the search failed closed; the refusal candidate's own S when it
    won)."""
    value: float
    """Critic value V(h_T) or reward (see ``value_source``)."""
    value_source: str
    refused: bool
    steps: int
    """Blocks accepted."""
    retries: int
    """Blocks resampled because nothing was admissible."""
    candidates_scored: int
    seconds: float
    """Wall time of the prompt's batch divided by its prompts."""
    new_tokens: int
    budget: float
    fallback: bool = False
    """``best_effort`` went on without an admissible candidate."""
    truncated: bool = False
    """The answer stopped at ``max_new_tokens`` without an end-of-sequence token (it may be cut mid-way)."""
    critic_seconds: float = 0.0
    """Time in critic calls (the prompt's share of its batch), RE-Control's latent edits included."""
    scorer_calls: int = 0
    """Cost/reward scorer calls that scored this prompt's texts (ARGS: one per scorer per token step, shared
    by the batch's prompts; exact mode: one per block)."""
    scorer_seconds: float = 0.0
    """Time in those calls, the prompt's share (by the texts it had in each call)."""
    budget_checked: bool = True
    """False: the cost scale is unbounded (a logit, a score head), so ``budget`` was not range-checked."""
    trace: list[dict] | None = None
    """With ``SearchConfig.trace``: one entry per decision, in order: ``block`` (blocks accepted before it),
    ``retry`` (resamples of that block before it), ``verdict`` (``keep``, ``retry`` or ``refuse``) and
    ``candidates``, each with its ``text`` (the answer so far), ``cost`` (tracked S), ``value``, ``q``,
    ``admissible``, ``kept``, ``refusal`` (the refusal candidate), ``complete`` and ``pooled`` (a complete
    answer kept from an earlier block)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _record(ctx: _Ctx, p: int, tr: _Track, seconds: float) -> GuardRecord:
    cfg = ctx.cfg
    common = dict(
        prompt=ctx.prompts[p],
        method=cfg.method,
        cost_source=cfg.mode,
        budget=float(cfg.budget),
        value_source="critic" if cfg.critic else "reward",
        steps=tr.steps,
        retries=tr.retries,
        candidates_scored=tr.scored,
        seconds=seconds,
        critic_seconds=ctx.critic_seconds / len(ctx.prompts),
        scorer_calls=ctx.scorer_calls[p],
        scorer_seconds=ctx.scorer_seconds[p],
        trace=tr.trace if cfg.trace else None,
    )
    best = max(tr.pool, key=lambda e: _rank(e, cfg)) if tr.pool and not tr.refused else None
    if best is None or best.refusal:  # failed closed, or the refusal candidate won
        z = float("nan") if best is None else cfg.budget - best.cost
        return GuardRecord(
            text=cfg.refusal_text,
            token_ids=[],
            safe=bool(z >= 0 and not tr.fallback),
            final_safety_state=z,
            cost=float("nan") if best is None else best.cost,
            value=float("nan") if best is None else best.value,
            refused=True,
            new_tokens=0,
            fallback=tr.fallback,
            **common,
        )
    z = cfg.budget - best.cost
    return GuardRecord(
        text=ctx.texts([best.tokens])[0],
        token_ids=list(best.tokens),
        safe=bool(z >= 0 and not tr.fallback),
        final_safety_state=float(z),
        cost=best.cost,
        value=best.value,
        refused=False,
        new_tokens=len(best.tokens),
        fallback=tr.fallback,
        truncated=bool(best.tokens) and best.tokens[-1] not in ctx.policy.eos_token_ids,
        **common,
    )


def _trace_entry(ctx: _Ctx, tr: _Track, entries: list[_Entry], chosen: list[_Entry] | Verdict) -> dict:
    """One decision of a prompt for ``GuardRecord.trace`` (taken before ``tr`` moves on)."""
    kept = set() if isinstance(chosen, Verdict) else {id(e) for e in chosen}
    texts = ctx.texts([e.tokens for e in entries])
    return {
        "block": tr.steps,
        "retry": tr.block_retries,
        "verdict": chosen.value if isinstance(chosen, Verdict) else "keep",
        "candidates": [
            {
                "text": text,
                "cost": e.cost,
                "value": e.value,
                "q": e.q,
                "admissible": e.admissible,
                "kept": id(e) in kept,
                "refusal": e.refusal,
                "complete": e.complete,
                "pooled": e.row is None,
            }
            for e, text in zip(entries, texts, strict=True)
        ],
    }
