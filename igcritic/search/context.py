"""What one batch's search binds (policy, config, critic, scorers, its prompts) and the calls it makes on
them: the critic's heads over one shared trunk pass, the scorers on texts, each timed and charged to its
prompts."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from igcritic.critic import Critic
from igcritic.policy import Policy
from igcritic.scorers import Scorer
from igcritic.scorers.base import is_running_max
from igcritic.search.config import SearchConfig, SearchConfigError


@dataclass
class _Ctx:
    """What the batch loop needs besides the rows."""

    policy: Policy
    cfg: SearchConfig
    critic: Critic | None
    cost: Scorer | None
    reward: Scorer | None
    prompts: list[str]
    cache_rows: int = 0
    """Rows of the static cache (``compile``): N x the most prompts of one batch of the call."""
    critic_seconds: float = 0.0
    scorer_calls: Counter[int] = field(default_factory=Counter)
    """Per prompt of the batch: scorer calls that scored its texts."""
    scorer_seconds: Counter[int] = field(default_factory=Counter)
    """Per prompt of the batch: its share of the scorer time."""
    on_block: Callable[[int, list[int]], None] | None = None
    """Called with (prompt of the batch, agreed answer tokens) after each accepted block."""
    cols: dict[str, list[slice]] = field(default_factory=dict)
    """Scorer roles read from the decode pass (``Rows.prefix``), each with where its layers sit in the
    policy's latent; empty: every score comes from the text path."""
    _trunk: tuple[torch.Tensor, torch.Tensor] | None = None
    """(latents, trunk features) of the last candidate set: cost, value and q share one trunk pass."""

    @property
    def latent_running_max(self) -> bool:
        """Fully latent mode with a running-max cost: Ŝ is tracked as the running max of the critic's cost
        head (averaged over ``latent_window`` tokens) over every token from Ŝ(h_0), as the exact S is."""
        return (
            self.cfg.mode == "latent"
            and self.critic is not None
            and is_running_max(self.critic.config.cost_scorer or {})
        )

    @property
    def latent_context(self) -> bool:
        """Fully latent mode with a critic whose cost head reads the answer so far (``cost_context``): the
        rows carry a ``RunningPrefix`` of their latents."""
        return self.cfg.mode == "latent" and self.critic is not None and self.critic.config.cost_context

    def critic_cost(self, h: torch.Tensor) -> torch.Tensor:
        """The critic's latent cost Ŝ(h) of every candidate (B,)."""
        return self._critic_head(h, self.critic.cost_from_features)

    def critic_context_cost(self, h: torch.Tensor, first: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Ŝ (B,) of a ``cost_context`` critic from h_t, h_0 and the mean of h_0..h_t (its own MLP, no
        trunk pass)."""
        t0 = time.perf_counter()
        dev = self.critic.h_mean.device
        with torch.inference_mode():
            out = self.critic.cost(*(x.to(dev, torch.float32) for x in (h, first, mean)))
        self.critic_seconds += time.perf_counter() - t0
        return out.detach().float().reshape(-1).cpu()

    def critic_value(self, h: torch.Tensor) -> torch.Tensor:
        """The critic's value V(h) of every candidate (B,)."""
        return self._critic_head(h, self.critic.value_from_features)

    def critic_safe_prob(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The calibrated q(h, z) of every candidate (B,): the admission test ``q >= tau`` reads it."""
        return self._critic_head(
            h, lambda feat: self.critic.safe_prob_from_features(feat, z.to(feat.device), calibrated=True)
        )

    def _critic_head(self, h: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        t0 = time.perf_counter()
        dev = self.critic.h_mean.device
        with torch.inference_mode():  # the heads share one trunk pass over the candidates
            if self._trunk is None or self._trunk[0] is not h:
                self._trunk = (h, self.critic.encode(h.to(dev, torch.float32)))
            out = head(self._trunk[1])
        out = out.detach().float().reshape(-1).cpu()
        self.critic_seconds += time.perf_counter() - t0
        return out

    def texts(self, tokens: list[list[int]]) -> list[str]:
        return self.policy.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    def score(
        self, scorer: Scorer, prompt_idx: torch.Tensor, texts: list[str], previous=None
    ) -> torch.Tensor:
        t0 = time.perf_counter()
        idx = prompt_idx.tolist()
        prompts = [self.prompts[i] for i in idx]
        kw = {} if previous is None else {"previous": previous.numpy().astype(np.float64)}
        out = np.asarray(scorer.score(prompts, texts, **kw), dtype=np.float64).reshape(-1)
        self.account(idx, time.perf_counter() - t0)
        if out.shape[0] != len(texts):
            raise SearchConfigError(
                f"a scorer returned {out.shape[0]} scores for {len(texts)} responses; fix the scorer"
            )
        return torch.from_numpy(out).float()

    def account(self, idx: list[int], seconds: float) -> None:
        """One scorer call over texts of the prompts ``idx`` (one entry per text) that took ``seconds``."""
        for p, n in Counter(idx).items():
            self.scorer_calls[p] += 1
            self.scorer_seconds[p] += seconds * n / len(idx)
