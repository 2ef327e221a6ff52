"""One method of ``igcritic eval``: its name and search overrides, its answers to every prompt, and every
final answer scored again by the cost and reward scorers.

The final cost S_T of an answer is the cost scorer's own definition over the answer's token prefixes
(:func:`final_costs`, e.g. the embedded probe's running max, what ``collect`` stores) or one score of the
text; the record says which (``cost_eval_from``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from igcritic.decoding import prefix_texts
from igcritic.eval import (
    RECORD_COST,
    RECORD_COST_FROM,
    RECORD_METHOD,
    RECORD_PROMPT_INDEX,
    RECORD_REWARD,
    RECORD_SAFE,
    EvalError,
)
from igcritic.eval.stats import finite
from igcritic.guard import Guard
from igcritic.prompts import Prompt
from igcritic.scorers import Scorer
from igcritic.search import GuardRecord, SearchOverrides, as_overrides, overrides


@dataclass
class MethodSpec:
    """One row of the comparison: a table name and the search overrides passed to ``Guard.generate``."""

    name: str
    """Label in the table, the CSV and the figures."""
    overrides: SearchOverrides = field(default_factory=SearchOverrides)
    """Search overrides, e.g. ``{method: best_of_n, score: augmented}``; they win over ``search``."""

    def __post_init__(self):
        self.overrides = as_overrides(self.overrides, f"method {self.name!r}")  # a config list item's dict

    def to_dict(self) -> dict:
        """As a config file writes it: the overrides that are set."""
        return {"name": self.name, "overrides": overrides(self.overrides)}


def default_methods() -> list[MethodSpec]:
    """The six methods of the embedded demo (docs/design.md section 6 baselines plus InferenceGuard); the one
    list of them (configs/eval/embedded.yaml names them in a comment, so the two cannot disagree).

    The baselines use no critic: best-of-N ranks by the reward and cost scorers (``r - λ·S`` or the
    augmented safety state), as in the paper; only the InferenceGuard rows differ in critic and mode.
    """
    return [
        MethodSpec("plain sampling", SearchOverrides(method="plain", critic=False, mode="exact")),
        MethodSpec(
            "best-of-N lagrangian",
            SearchOverrides(method="best_of_n", score="lagrangian", critic=False, mode="exact"),
        ),
        MethodSpec(
            "best-of-N augmented",
            SearchOverrides(method="best_of_n", score="augmented", critic=False, mode="exact"),
        ),
        MethodSpec("IG no critic", SearchOverrides(method="inferenceguard", critic=False, mode="exact")),
        MethodSpec("IG critic latent", SearchOverrides(method="inferenceguard", critic=True, mode="latent")),
        MethodSpec("IG critic exact", SearchOverrides(method="inferenceguard", critic=True, mode="exact")),
    ]


def method_overrides(search: SearchOverrides, seed: int, spec: MethodSpec) -> dict[str, Any]:
    """What ``generate`` receives for one method: the shared search, then the seed, then the method's own."""
    return {**overrides(search), "seed": seed, **overrides(spec.overrides)}


def precheck_methods(
    guard: Guard, methods: Sequence[MethodSpec], search: SearchOverrides, seed: int, budget: float
) -> None:
    """Refuse a method the guard cannot run before anything is generated (unknown override, exact mode
    without a cost scorer, RE-Control on a critic of another layer, ...)."""
    for spec in methods:
        try:
            guard.check(budget, **method_overrides(search, seed, spec))
        except (ValueError, TypeError) as e:
            raise EvalError(f"method {spec.name!r} cannot run: {e}") from None


def text_scores(scorer: Scorer, role: str, prompts: list[str], texts: list[str]) -> np.ndarray:
    """One score per (prompt, full response text), checked for count and finiteness."""
    return finite(scorer.score(prompts, texts), f"the {role} scorer", len(texts), "response")


def final_costs(
    cost: Scorer, prompts: list[str], records: Sequence[GuardRecord], tokenizer: Any, prefix: bool = True
) -> tuple[np.ndarray, list[str]]:
    """S_T of every answer and where it came from (``prefix`` or ``text``).

    With ``prefix`` (docs/design.md section 2: ``S_0..S_T`` over the decoded prefixes ``y_<=t``, as
    ``collect`` stores them), S_T is the cost scorer's last prefix score, e.g. the running max of the
    embedded probe. Refusals (no tokens) and answers whose decoded tokens differ from their text: one score
    of the text.
    """
    n = len(records)
    out = np.full(n, np.nan)
    source = ["text"] * n
    by_prefix: list[tuple[int, list[str]]] = []
    for k, r in enumerate(records):
        if prefix and r.token_ids and not r.refused:
            texts = prefix_texts(tokenizer, r.token_ids)
            if texts[-1] == r.text:
                by_prefix.append((k, texts))
    if by_prefix:
        vals = cost.prefix_scores([prompts[k] for k, _ in by_prefix], [t for _, t in by_prefix])
        if len(vals) != len(by_prefix):
            raise EvalError(
                f"the cost scorer returned {len(vals)} prefix-score arrays for {len(by_prefix)} answers"
            )
        last = finite(
            [np.asarray(v, dtype=float).reshape(-1)[-1] for v in vals], "the cost scorer", len(vals)
        )
        for (k, _), v in zip(by_prefix, last, strict=True):
            out[k], source[k] = v, "prefix"
    if rest := [k for k in range(n) if source[k] == "text"]:
        out[rest] = text_scores(cost, "cost", [prompts[k] for k in rest], [records[k].text for k in rest])
    return out, source


def run_method(
    guard: Guard,
    spec: MethodSpec,
    prompts: list[Prompt],
    overrides: dict[str, Any],
    budget: float,
    cost: Scorer,
    reward: Scorer,
    batch_size: int = 0,
    prefix_cost: bool = True,
    advance: Callable[..., Any] | None = None,
) -> tuple[list[dict], float]:
    """Answer every prompt with one method (``overrides`` to :meth:`~igcritic.guard.Guard.generate`,
    ``batch_size`` prompts a call, 0: all), then score every final answer; returns (rows, wall seconds).
    ``advance(n)`` hears of every n prompts answered (a progress bar)."""
    texts = [p.prompt for p in prompts]
    step = batch_size or len(texts)
    records: list[GuardRecord] = []
    wall = 0.0
    for i in range(0, len(texts), step):
        t0 = time.perf_counter()
        records += guard.generate(texts[i : i + step], budget, progress=advance, **overrides)
        wall += time.perf_counter() - t0
    if advance is not None:
        advance(0, description=f"{spec.name!r}: scoring its answers")
    costs, sources = final_costs(cost, texts, records, guard.policy.tokenizer, prefix=prefix_cost)
    rewards = text_scores(reward, "reward", texts, [r.text for r in records])
    rows = []
    for k, (p, rec) in enumerate(zip(prompts, records, strict=True)):
        row = {
            RECORD_METHOD: spec.name,
            RECORD_PROMPT_INDEX: k,
            "prompt": p.prompt,
            "category": p.category,
            "harmful": p.harmful,
            RECORD_COST: float(costs[k]),
            RECORD_REWARD: float(rewards[k]),
            RECORD_SAFE: bool(costs[k] <= budget),
            RECORD_COST_FROM: sources[k],
        }
        rows.append({**row, **{key: v for key, v in rec.to_dict().items() if key not in row}})
    return rows, wall
