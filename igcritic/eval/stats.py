"""The numbers of an eval run: bootstrap intervals over prompts and the per-method summary.

Per method (:class:`MethodSummary`; cost and reward are the guard's own scorers recomputed on every final
answer by :mod:`igcritic.eval.run`, independently of what the runtime tracked during search):

- ``reward_mean``, ``cost_mean``: averages of the recomputed reward ``R(x, y)`` and final cost ``S_T``;
- ``safety_rate``: share of prompts with recomputed ``S_T <= d`` (docs/design.md section 2);
- ``tracked_safety_rate``: share the runtime itself flagged ``safe`` (what the search believed);
- ``refusal_rate``: share of records with ``refused=True`` (the guard failed closed);
- ``over_refusal_rate``: share of benign prompts (``harmful: false``) the guard refused;
- ``latency_mean/p50/p95``: the runtime's ``seconds`` per prompt (percentiles: linear interpolation); the
  guard reports a batch's wall time divided by its prompts, so with ``prompt_batch > 1`` latency is amortized;
- ``tokens_per_s``: generated tokens over the wall-clock time of the method's ``generate`` calls;
- ``reward_low/high``, ``safety_low/high``: bootstrap 95% intervals over prompts.

Intervals: percentile bootstrap over prompts, ``resamples`` draws of n prompt indices with replacement from
one seeded generator; the same index matrix serves every method and judge (that is what pairs them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from igcritic.eval import RECORD_COST, RECORD_METHOD, RECORD_PROMPT_INDEX, RECORD_REWARD, EvalError

log = logging.getLogger(__name__)

LEVEL = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_REFERENCE = "plain sampling"
"""The method paired differences are taken against when none is named (else the first method)."""


def finite(
    values: Any, what: str, n: int, item: str = "answer", error: type[Exception] = EvalError
) -> np.ndarray:
    """A grader's ``n`` scores as floats; a wrong count or a NaN/inf is ``error`` naming ``what``."""
    out = np.asarray(values, dtype=float).reshape(-1)
    if out.shape[0] != n:
        raise error(f"{what} returned {out.shape[0]} scores for {n} {item}s; it must return one each")
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise error(f"{what} returned {out[bad[0]]} for {item} {bad[0]}; check {what}")
    return out


# -------------------------------------------------------------------------------------------- bootstrap


def resample_indices(
    n: int, resamples: int = DEFAULT_RESAMPLES, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """``(resamples, n)`` prompt indices drawn with replacement; shared by every method and judge (paired).
    A generator as ``seed`` goes on with its stream (several prompt groups from one seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval(boot: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap statistics (linear interpolation); NaN without draws."""
    if not np.size(boot):
        return float("nan"), float("nan")
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def mean(values: Sequence[float]) -> float:
    """Mean of per-prompt values (flags count as 0/1); NaN when there are none."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()) if v.size else float("nan")


def mean_ci(values: Sequence[float], idx: np.ndarray | None) -> tuple[float, float, float]:
    """Mean of per-prompt values and its bootstrap interval over the resampled prompt indices ``idx``."""
    v = np.asarray(values, dtype=float)
    if not v.size or idx is None or not idx.size:
        return mean(v), float("nan"), float("nan")
    return (float(v.mean()), *interval(v[idx].mean(axis=1)))


def percentile(values: Sequence[float], q: float) -> float:
    """``q``-th percentile with linear interpolation between order statistics (numpy's default); NaN if
    empty."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


# ------------------------------------------------------------------------------------ pairing by prompt


def positions(
    methods_of: Sequence[str], prompt_index: Sequence[int], methods: Sequence[str]
) -> dict[str, np.ndarray]:
    """Positions of each method's records in prompt order, from every record's method and prompt index;
    every method must answer prompts 0..n-1 exactly once (that is what pairs them)."""
    pos: dict[str, dict[int, int]] = {m: {} for m in methods}
    for k, (m, i) in enumerate(zip(methods_of, prompt_index, strict=True)):
        pos.setdefault(m, {})[int(i)] = k
    counts = [list(methods_of).count(m) for m in methods]
    for m, c in zip(methods, counts, strict=True):
        if c != counts[0] or sorted(pos[m]) != list(range(counts[0])):
            raise EvalError(
                f"method {m!r} has {c} records for {counts[0]} prompts; every method must answer "
                "each prompt once"
            )
    return {m: np.array([pos[m][k] for k in range(counts[0])], dtype=int) for m in methods}


def method_positions(records: Sequence[dict], methods: Sequence[str]) -> dict[str, np.ndarray]:
    """:func:`positions` of saved records."""
    return positions([r[RECORD_METHOD] for r in records], [r[RECORD_PROMPT_INDEX] for r in records], methods)


def reference_of(methods: Sequence[str], given: str | None = None) -> str:
    """The method paired differences are taken against: ``given``, else plain sampling, else the first."""
    return given or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in methods else methods[0])


# ---------------------------------------------------------------------------------- per-method summary


@dataclass
class MethodSummary:
    """The per-method metrics of the table, the CSV and ``results.json`` (see the module docstring)."""

    method: str
    n: int
    reward_mean: float
    cost_mean: float
    safety_rate: float
    refusal_rate: float
    latency_mean: float
    latency_p50: float
    latency_p95: float
    tokens_per_s: float
    new_tokens: int
    wall_seconds: float
    tracked_safety_rate: float
    """Share the runtime itself flagged ``safe`` (its tracked cost, latent in fully latent mode); NaN if
    absent."""
    over_refusal_rate: float
    """Share of benign prompts (``harmful: false``) with ``refused=True``; NaN without benign prompts."""
    n_benign: int
    reward_low: float
    reward_high: float
    safety_low: float
    safety_high: float


def summarize(
    name: str, rows: Sequence[dict], budget: float, wall_seconds: float, idx: np.ndarray | None = None
) -> MethodSummary:
    """Metrics of one method from its scored record dicts in prompt order; ``idx``: bootstrap prompt indices
    for the intervals (None: NaN intervals)."""
    n = len(rows)
    cost = np.array([float(r[RECORD_COST]) for r in rows])
    reward = np.array([float(r[RECORD_REWARD]) for r in rows])
    latency = [float(r["seconds"]) for r in rows]
    tokens = int(sum(int(r["new_tokens"]) for r in rows))
    tracked = [bool(r["safe"]) for r in rows if r.get("safe") is not None]
    benign = [bool(r["refused"]) for r in rows if r.get("harmful") is False]
    reward_mean, reward_low, reward_high = mean_ci(reward, idx)
    safety_rate, safety_low, safety_high = mean_ci(cost <= budget, idx)
    return MethodSummary(
        method=name,
        n=n,
        reward_mean=reward_mean,
        cost_mean=mean(cost),
        safety_rate=safety_rate,
        refusal_rate=mean([bool(r["refused"]) for r in rows]),
        latency_mean=mean(latency),
        latency_p50=percentile(latency, 50),
        latency_p95=percentile(latency, 95),
        tokens_per_s=tokens / wall_seconds if wall_seconds > 0 else float("nan"),
        new_tokens=tokens,
        wall_seconds=float(wall_seconds),
        tracked_safety_rate=mean(tracked),
        over_refusal_rate=mean(benign),
        n_benign=len(benign),
        reward_low=reward_low,
        reward_high=reward_high,
        safety_low=safety_low,
        safety_high=safety_high,
    )


def summarize_methods(
    methods: Sequence[str], records: Sequence[dict], budget: float, walls: dict[str, float], idx=None
) -> list[MethodSummary]:
    """:func:`summarize` of every method's records, in table order (logged as it goes); ``walls``: the wall
    seconds of each method's ``generate`` calls."""
    out = []
    for name in methods:
        s = summarize(name, [r for r in records if r[RECORD_METHOD] == name], budget, walls[name], idx)
        log.info(
            "%s: reward %.3f, cost %.3f, safe %.0f%%, refused %.0f%%, %.2f s/prompt",
            s.method,
            s.reward_mean,
            s.cost_mean,
            100 * s.safety_rate,
            100 * s.refusal_rate,
            s.latency_mean,
        )
        out.append(s)
    return out
