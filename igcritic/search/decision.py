"""The decision rule of one block: per prompt, the K entries kept (admissible ones, best by value), or, with
nothing admissible, retry the block or fail closed (or go on best-effort); and the ranking it sorts by."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from igcritic.search.config import SearchConfig
from igcritic.search.scoring import _Entry


class Verdict(Enum):
    """What a prompt's block comes to when none of its candidates is admissible (else: the entries kept)."""

    RETRY = "retry"
    """Rewind the block and resample it, penalising the rejected tokens."""
    REFUSE = "refuse"
    """Out of retries with ``on_violation: refuse``: fail closed."""


@dataclass
class _Track:
    """Per-prompt bookkeeping across blocks."""

    pool: list[_Entry] = field(default_factory=list)
    retries: int = 0
    block_retries: int = 0
    steps: int = 0
    scored: int = 0
    refused: bool = False
    fallback: bool = False
    trace: list[dict] = field(default_factory=list)
    """Every decision's candidates (``SearchConfig.trace``)."""


def _choose(
    cfg: SearchConfig, tr: _Track, entries: list[_Entry], k: int, max_retries: int
) -> list[_Entry] | Verdict:
    """The K entries kept (best last), or a :class:`Verdict` when nothing is admissible."""
    ok = [e for e in entries if e.admissible]  # every entry for the baselines
    if ok:
        return sorted(ok, key=lambda e: _rank(e, cfg))[-k:]
    if tr.block_retries < max_retries:
        return Verdict.RETRY
    if cfg.on_violation == "refuse":
        return Verdict.REFUSE
    tr.fallback = True
    return sorted(entries, key=lambda e: _rank(e, cfg, fallback=True))[-k:]


def _rank(e: _Entry, cfg: SearchConfig, fallback: bool = False) -> tuple:
    """Sort key, larger is better."""
    z = cfg.budget - e.cost
    if cfg.method == "inferenceguard":
        if fallback:
            return (z >= 0, e.q, e.value)
        if cfg.refusal_rank == "last":
            return (e.admissible, not e.refusal, e.value)
        return (e.admissible, e.value, not e.refusal)
    if cfg.score == "lagrangian":
        return (e.value - cfg.lagrange_lambda * e.cost,)
    return (1, e.value) if z >= 0 else (0, z)
