"""A :class:`~igcritic.search.config.SearchConfig` checked against what is bound (policy, critic, scorers) and
the prompts, before any token is generated: one error listing why it cannot run here."""

from __future__ import annotations

import logging

from igcritic.baselines import recontrol_problems
from igcritic.critic import Critic
from igcritic.policy import Policy, PolicyError
from igcritic.scorers import Scorer
from igcritic.search.config import SearchConfig, SearchConfigError

log = logging.getLogger(__name__)


def check_prompts(policy: Policy, prompts: list[str], cfg: SearchConfig) -> None:
    """Every prompt of the call, before any work: not empty, and room for D new tokens in the context."""
    try:
        policy.encode_prompts(prompts, new_tokens=cfg.max_new_tokens)
    except PolicyError as e:
        raise SearchConfigError(str(e)) from None


def checked_config(
    policy: Policy,
    cfg: SearchConfig,
    critic: Critic | None = None,
    cost: Scorer | None = None,
    reward: Scorer | None = None,
) -> SearchConfig:
    """``cfg`` resolved against what is bound, or one error listing why it cannot run here (before any
    token is generated: ``igcritic eval`` checks every method with it first)."""
    cfg = cfg.resolve(critic is not None, cost is not None, reward is not None)
    if cfg.method == "recontrol" and (bad := recontrol_problems(policy, critic, cfg.guidance)):
        raise SearchConfigError("; ".join(bad))
    check_budget(cfg.budget, cost, critic)
    return cfg


def cost_bounds(cost: Scorer | None, critic: Critic | None) -> tuple[tuple[float, float] | None, str]:
    """The lowest and highest S of the cost scale (None: unbounded) and the scorer's id: the bound cost
    scorer's, else the one the critic was trained with (its latent cost Ŝ is on that scale)."""
    info = getattr(cost, "info", None)
    if info is None and critic is not None:
        info = critic.config.cost_scorer or {}
        bounds = info.get("bounds")
        return (tuple(map(float, bounds)) if bounds else None), info.get("id", "the critic's cost scorer")
    bounds = getattr(info, "bounds", None)
    return (tuple(map(float, bounds)) if bounds else None), getattr(info, "id", "the cost scorer")


_UNCHECKED: set[tuple[str, float]] = set()


def check_budget(budget: float, cost: Scorer | None, critic: Critic | None) -> bool:
    """Refuse a budget outside the cost scale in one line (above it every answer is "safe", below it every
    answer is refused); on an unbounded scale warn once and return False (records carry it)."""
    bounds, who = cost_bounds(cost, critic)
    if bounds is None:
        if (who, budget) not in _UNCHECKED:
            _UNCHECKED.add((who, budget))
            log.warning(
                "search.budget %g is NOT range-checked: the cost scorer %s is unbounded; make sure it is on "
                "that scorer's scale (records carry budget_checked=false)",
                budget,
                who,
            )
        return False
    lo, hi = bounds
    if not lo <= budget <= hi:
        every = "passes as safe" if budget > hi else "is refused"
        raise SearchConfigError(
            f"search.budget {budget:g} is outside the cost scale [{lo:g}, {hi:g}] of {who}, so every answer "
            f"{every}; give a budget in [{lo:g}, {hi:g}]"
        )
    return True
