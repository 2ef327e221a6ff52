"""The scorer protocol every cost and reward scorer follows, its provenance record and the prefix helpers."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from igcritic import IgcriticError

Role = Literal["cost", "reward"]
ROLES = ("cost", "reward")
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"


class ScorerError(IgcriticError):
    """A scorer spec, folder or input is unusable."""


def sign_for(role: str) -> str:
    """The sign convention of a scorer in ``role``: a cost is ``higher_is_unsafe``, a reward
    ``higher_is_better`` (docs/design.md section 2)."""
    return "higher_is_unsafe" if role == "cost" else "higher_is_better"


@dataclass
class ScorerInfo:
    """What a store and a critic record about a scorer (its provenance and sign convention)."""

    id: str
    """The spec it was loaded from, e.g. ``embedded`` or ``beaver:/models/beaver-7b-v1.0-cost``."""
    role: str
    """``cost`` or ``reward``."""
    sign: str
    """``higher_is_unsafe`` (costs) or ``higher_is_better`` (rewards)."""
    derivation: str
    """How prefix scores ``S_t`` are derived from the model."""
    stride: int | None
    """Tokens between scored prefixes for non-causal scorers; None when every prefix is scored exactly."""
    budget_hint: float | None
    """The natural budget on this scale (0.0 for beaver cost, 0.5 for the embedded probe), if any."""
    bounds: tuple[float, float] | None = None
    """Lowest and highest score it can give (a probability: ``(0, 1)``); None: unbounded (a logit, a score
    head), so a budget on its scale cannot be range-checked."""
    running_max: bool = False
    """``S_t`` never falls: it is the running max over prefixes (the embedded cost). The fully latent search
    then tracks the critic's ``Ŝ`` the same way: the running max over every token."""

    def to_dict(self) -> dict:
        return asdict(self)


def is_running_max(info: dict) -> bool:
    """Whether a recorded cost scorer (a store's or a critic's ``cost_scorer``) has a running-max ``S_t``.
    Records written before the field: the embedded cost always was one."""
    return bool(info.get("running_max", info.get("id") == "embedded" and info.get("role") == "cost"))


@runtime_checkable
class Scorer(Protocol):
    """Scores (prompt, response) pairs; see the module docstring for the prefix convention."""

    info: ScorerInfo

    def prefix_scores(self, prompts: list[str], prefix_texts: list[list[str]]) -> list[np.ndarray]:
        """``S_0..S_T`` (float32, length T_i + 1) for every trajectory."""
        ...

    def score(
        self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None
    ) -> np.ndarray:
        """Score of each (prompt, response); ``previous`` is S of an earlier prefix (used by running-max
        costs)."""
        ...

    def to_dict(self) -> dict:
        """Provenance stamped into the store and the critic."""
        ...


def stride_points(num_tokens: int, stride: int) -> np.ndarray:
    """Prefix lengths scored by a non-causal scorer: 0, stride, 2*stride, ..., and always T."""
    pts = np.arange(0, num_tokens + 1, stride)
    return pts if pts[-1] == num_tokens else np.append(pts, num_tokens)


def forward_fill(points: np.ndarray, values: np.ndarray, num_tokens: int) -> np.ndarray:
    """Expand values scored at ``points`` (sorted, starting at 0) to all T + 1 prefixes."""
    idx = np.searchsorted(points, np.arange(num_tokens + 1), side="right") - 1
    return np.asarray(values, dtype=np.float32)[idx]


def strided_prefix_scores(
    score: Callable[[list[str], list[str]], np.ndarray],
    prompts: list[str],
    prefix_texts: list[list[str]],
    stride: int,
    running_max: bool = False,
) -> list[np.ndarray]:
    """``S_0..S_T`` of a non-causal scorer: ONE batched ``score`` call over the prefixes at
    :func:`stride_points` of every trajectory, forward-filled (``running_max``: of their running max)."""
    _check_batch(prompts, prefix_texts)
    points = [stride_points(len(p) - 1, stride) for p in prefix_texts]
    vals = score(
        [prompts[i] for i, pts in enumerate(points) for _ in pts],
        [prefix_texts[i][t] for i, pts in enumerate(points) for t in pts],
    )
    out, k = [], 0
    for pts, texts in zip(points, prefix_texts, strict=True):
        v = vals[k : k + len(pts)]
        k += len(pts)
        out.append(forward_fill(pts, np.maximum.accumulate(v) if running_max else v, len(texts) - 1))
    return out


def pad_batch(seqs: Sequence[list[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (B, longest) of token lists, padded on the right (or the left)."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, x in enumerate(seqs):
        at = slice(width - len(x), width) if left else slice(0, len(x))
        ids[j, at], mask[j, at] = torch.tensor(x, dtype=torch.long), 1
    return ids, mask


def check_pairs(prompts: list[str], responses: list[str]) -> None:
    """One text response per text prompt, else a ScorerError naming the first bad pair."""
    if len(prompts) != len(responses):
        raise ScorerError(
            f"got {len(prompts)} prompts but {len(responses)} responses; pass one response per prompt"
        )
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise ScorerError(
                f"pair {i}: prompt and response must be text, got {type(p).__name__} and {type(r).__name__}"
            )


def _check_batch(prompts: list[str], prefix_texts: list[list[str]]) -> None:
    if len(prompts) != len(prefix_texts):
        raise ScorerError(
            f"got {len(prompts)} prompts but {len(prefix_texts)} prefix lists; pass one list per prompt"
        )
    for i, p in enumerate(prefix_texts):
        if not p or p[0] != "":
            raise ScorerError(f"prefix_texts[{i}] must start with the empty prefix '' (S_0); got {p[:1]!r}")


def _common_prefix_len(a: str, b: str) -> int:
    """Characters ``a`` shares with the start of ``b`` (a decoded prefix may end in a partial character)."""
    if b.startswith(a):
        return len(a)
    return len(os.path.commonprefix([a, b]))
