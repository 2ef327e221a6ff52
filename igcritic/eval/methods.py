"""One method of ``igcritic eval``: its name and search overrides, its answers to every prompt, and every
final answer scored again by the cost and reward scorers.

The final cost S_T of an answer is the cost scorer's own definition over the answer's token prefixes
(:func:`final_costs`, e.g. the embedded probe's running max, what ``collect`` stores) or one score of the
text; the record says which (``cost_eval_from``).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

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
from igcritic.prompts import Prompt


@runtime_checkable
class Generator(Protocol):
    """Anything that answers prompts with records: :class:`igcritic.guard.Guard` or a test stand-in.

    A record exposes ``text``, ``refused``, ``seconds``, ``new_tokens`` (attributes or dict keys) and
    ideally ``to_dict()``.
    """

    def generate(
        self, prompts: list[str], budget: float | None = None, **overrides: Any
    ) -> Sequence[Any]: ...


@runtime_checkable
class Scorer(Protocol):
    """A cost or reward model: one score per (prompt, full response) pair."""

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray: ...


@dataclass
class MethodSpec:
    """One row of the comparison: a table name and the search overrides passed to ``Guard.generate``."""

    name: str
    """Label in the table, the CSV and the figures."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Search overrides, e.g. ``{"method": "best_of_n", "score": "augmented"}``; they win over ``search``."""


def default_methods() -> list[MethodSpec]:
    """The six methods of the embedded demo (docs/design.md section 6 baselines plus InferenceGuard); the one
    list of them (configs/eval/embedded.yaml names them in a comment, so the two cannot disagree).

    The baselines use no critic: best-of-N ranks by the reward and cost scorers (``r - λ·S`` or the
    augmented safety state), as in the paper; only the InferenceGuard rows differ in critic and mode.
    """
    return [
        MethodSpec("plain sampling", {"method": "plain", "critic": False, "mode": "exact"}),
        MethodSpec(
            "best-of-N lagrangian",
            {"method": "best_of_n", "score": "lagrangian", "critic": False, "mode": "exact"},
        ),
        MethodSpec(
            "best-of-N augmented",
            {"method": "best_of_n", "score": "augmented", "critic": False, "mode": "exact"},
        ),
        MethodSpec("IG no critic", {"method": "inferenceguard", "critic": False, "mode": "exact"}),
        MethodSpec("IG critic latent", {"method": "inferenceguard", "critic": True, "mode": "latent"}),
        MethodSpec("IG critic exact", {"method": "inferenceguard", "critic": True, "mode": "exact"}),
    ]


def _record_dict(rec: Any) -> dict:
    if isinstance(rec, dict):
        d = dict(rec)
    elif hasattr(rec, "to_dict"):
        d = dict(rec.to_dict())
    elif dataclasses.is_dataclass(rec):
        d = asdict(rec)
    else:
        raise EvalError(
            f"the guard returned a {type(rec).__name__}; it must return records with to_dict() or dicts"
        )
    missing = [k for k in ("text", "refused", "seconds", "new_tokens") if k not in d]
    if missing:
        raise EvalError(
            f"guard records lack {missing}; the guard must report text, refused, seconds and new_tokens"
        )
    return d


def text_scores(scorer: Scorer, role: str, prompts: list[str], texts: list[str]) -> np.ndarray:
    """One score per (prompt, full response text), checked for count and finiteness."""
    return finite(scorer.score(prompts, texts), f"the {role} scorer", len(texts), "response", EvalError)


def final_costs(
    cost: Scorer, prompts: list[str], records: list[dict], tokenizer: Any = None, prefix: bool = True
) -> tuple[np.ndarray, list[str]]:
    """S_T of every answer and where it came from (``prefix`` or ``text``).

    With ``prefix`` and a scorer that has ``prefix_scores`` (docs/design.md section 2: ``S_0..S_T`` over the
    decoded prefixes ``y_<=t``, as ``collect`` stores them), S_T is the last prefix score, e.g. the running
    max of the embedded probe. Refusals (no tokens), answers whose decoded tokens differ from their text,
    or no tokenizer: one score of the text.
    """
    n = len(records)
    out = np.full(n, np.nan)
    source = ["text"] * n
    by_prefix: list[tuple[int, list[str]]] = []
    if prefix and tokenizer is not None and hasattr(cost, "prefix_scores"):
        for k, r in enumerate(records):
            ids = list(r.get("token_ids") or [])
            if r.get("refused") or not ids:
                continue
            texts = prefix_texts(tokenizer, ids)
            if texts[-1] == r["text"]:
                by_prefix.append((k, texts))
    if by_prefix:
        vals = cost.prefix_scores([prompts[k] for k, _ in by_prefix], [t for _, t in by_prefix])
        if len(vals) != len(by_prefix):
            raise EvalError(
                f"the cost scorer returned {len(vals)} prefix-score arrays for {len(by_prefix)} answers"
            )
        last = [np.asarray(v, dtype=float).reshape(-1)[-1] for v in vals]
        last = finite(last, "the cost scorer", len(by_prefix), "response", EvalError)
        for (k, _), v in zip(by_prefix, last):
            out[k], source[k] = v, "prefix"
    rest = [k for k in range(n) if source[k] == "text"]
    if rest:
        out[rest] = text_scores(
            cost, "cost", [prompts[k] for k in rest], [str(records[k]["text"]) for k in rest]
        )
    return out, source


def run_method(
    guard: Generator,
    spec: MethodSpec,
    prompts: list[Prompt],
    overrides: dict[str, Any],
    budget: float,
    cost: Scorer,
    reward: Scorer,
    batch_size: int = 0,
    prefix_cost: bool = True,
    advance: Any = None,
) -> tuple[list[dict], float]:
    """Answer every prompt with one method (``overrides`` to ``generate``, ``batch_size`` prompts a call, 0:
    all), then score every response; returns (rows, wall seconds). ``advance(n)`` hears of every n prompts
    answered (a progress bar), through the guard when it takes ``progress``
    (:meth:`igcritic.guard.Guard.generate`), else after each call."""
    overrides = dict(overrides)
    by_guard = advance is not None and "progress" in inspect.signature(guard.generate).parameters
    if by_guard:
        overrides["progress"] = advance
    texts = [p.prompt for p in prompts]
    step = batch_size or len(texts)
    records: list[dict] = []
    wall = 0.0
    for i in range(0, len(texts), step):
        batch = texts[i : i + step]
        t0 = time.perf_counter()
        out = list(guard.generate(batch, budget=budget, **overrides))
        wall += time.perf_counter() - t0
        if len(out) != len(batch):
            raise EvalError(
                f"method {spec.name!r}: the guard returned {len(out)} records for {len(batch)} prompts"
            )
        records += [_record_dict(r) for r in out]
        if advance is not None and not by_guard:
            advance(len(batch))
    if advance is not None:
        advance(0, description=f"{spec.name!r}: scoring its answers")
    tokenizer = getattr(getattr(guard, "policy", None), "tokenizer", None)
    costs, sources = final_costs(cost, texts, records, tokenizer, prefix=prefix_cost)
    rewards = text_scores(reward, "reward", texts, [str(r["text"]) for r in records])
    rows = []
    for k, (p, rec) in enumerate(zip(prompts, records)):
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
        rows.append({**row, **{key: v for key, v in rec.items() if key not in row}})
    return rows, wall
