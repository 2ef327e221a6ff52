"""Stand-ins for the runtime tests: critics and scorers that follow the runtime's protocols."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from igcritic.policy import Policy


class StandInCritic:
    """Admits everything by default: q = ``safe``, V = first latent coordinate, Ŝ = ``latent_cost``."""

    def __init__(self, policy: Policy | None = None, safe: float = 1.0, latent_cost: float = 0.0, **identity):
        ident = policy.identity.to_dict() if policy is not None else {}
        ident.update(identity)
        self.config = SimpleNamespace(policy=ident, hidden_size=ident.get("hidden_size"))
        self.safe, self.latent_cost = safe, latent_cost
        self.calls = {"safe_prob": 0, "value": 0, "cost": 0}

    def safe_prob(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.calls["safe_prob"] += 1
        return torch.full((h.shape[0],), self.safe) * (z >= -1e9)

    def value(self, h: torch.Tensor) -> torch.Tensor:
        self.calls["value"] += 1
        return h[:, 0].float()

    def cost(self, h: torch.Tensor) -> torch.Tensor:
        self.calls["cost"] += 1
        return torch.full((h.shape[0],), self.latent_cost)


class RejectFirstCritic(StandInCritic):
    """q = 0 on its first ``n`` safe_prob calls, then 1: forces ``n`` retries of the first block."""

    def __init__(self, policy: Policy, n: int = 1):
        super().__init__(policy)
        self.n = n

    def safe_prob(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        q = super().safe_prob(h, z)
        return q * 0 if self.calls["safe_prob"] <= self.n else q


class WordCost:
    """Cost scorer: S = 1 when the response contains ``word`` (budget 0.5 makes it unsafe), else 0.

    ``reject_first``: prompts whose first scored block is marked unsafe regardless (forces one retry).
    Records every call so tests can count them and recompute choices.
    """

    def __init__(
        self, word: str | None = None, reject_first: tuple[str, ...] = (), budget_hint: float | None = 0.5
    ):
        self.word = word
        self.reject_first = set(reject_first)
        self.calls: list[tuple[list[str], list[str], np.ndarray]] = []
        self.info = SimpleNamespace(id="word-cost", role="cost", sign=1, budget_hint=budget_hint)

    def score(
        self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None
    ) -> np.ndarray:
        out = np.array([1.0 if self.word and self.word in r else 0.0 for r in responses])
        first = [
            p
            for p in set(prompts)
            if p in self.reject_first and any(responses[i] for i, q in enumerate(prompts) if q == p)
        ]
        for p in first:
            out[[i for i, q in enumerate(prompts) if q == p]] = 1.0
            self.reject_first.discard(p)
        self.calls.append((list(prompts), list(responses), out.copy()))
        return out


class LengthReward:
    """Reward scorer: number of distinct characters of the response (any deterministic text function)."""

    def __init__(self):
        self.calls: list[tuple[list[str], list[str], np.ndarray]] = []
        self.info = SimpleNamespace(id="length-reward", role="reward", sign=1, budget_hint=None)

    def score(
        self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None
    ) -> np.ndarray:
        out = np.array([float(len(set(r))) for r in responses])
        self.calls.append((list(prompts), list(responses), out.copy()))
        return out
