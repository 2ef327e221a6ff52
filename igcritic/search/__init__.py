"""Guarded block-wise search (InferenceGuard, docs/design.md section 6) and its baselines in one runtime.

Every method runs the same loop over the block sampler of :mod:`igcritic.decoding`: the prompts of a batch
are prefilled once, each live beam samples its share of N candidates of one block from its own KV cache,
the candidates are scored, and the best K are kept.

- ``inferenceguard``: safety state ``z = budget - S`` per candidate, S from the cost scorer on the candidate
  text (``mode="exact"``) or from the critic's latent cost head ``Ŝ(h)`` (``mode="latent"``: no cost-scorer
  call at all; its running max over every token when the critic's cost is a running max); admissible iff
  ``z >= margin`` and ``q(h, z - margin) >= tau`` (``critic=False``: ``z >= margin`` only; ``margin``
  defaults to 0); the top K admissible by critic value (``critic=False``: by the reward scorer). With
  ``refusal_candidate`` the refusal text is scored like a complete candidate of the first block (its own S,
  value and q) and competes with the others. Nothing admissible: resample the block with
  :class:`RejectedTokenPenalty`, up to ``retries`` times, then fail closed (``refused=True``) or, with
  ``on_violation="best_effort"``, go on with the least bad candidates (``safe=False``).
- ``beam``: block beam search ranking by ``score``: ``lagrangian`` r - λ·S, ``augmented`` r among candidates
  with z >= 0 first (then the least over budget).
- ``best_of_n``: N full answers (one block of width D), the best by ``score``.
- ``plain``: one sampled answer per prompt (N = K = 1, one block of width D).
- ``args`` and ``recontrol`` (:mod:`igcritic.baselines`): plain sampling whose every token step is steered,
  ARGS by the scorers on the top k next tokens, RE-Control by gradient steps on the LM head's input latent
  with the critic's heads (``guidance``: reward, Lagrangian or cost).

r is the critic value ``V(h)`` (``critic=True``) or the reward scorer; S is tracked as above. Candidates
that emit EOS (or reach D tokens) are complete and carry over as beams without a cache row.

Modules, in the order a reader needs them: :mod:`~igcritic.search.config` (:class:`SearchConfig`, its file
and :data:`SearchOverrides`), :mod:`~igcritic.search.checks` (the config checked against what is bound, before
any token), :mod:`~igcritic.search.context` (a batch's bound policy, critic and scorers, their calls timed),
:mod:`~igcritic.search.scoring` (each candidate's S, value, q and admissibility; the refusal candidate),
:mod:`~igcritic.search.decision` (the K kept, or retry / refuse), :mod:`~igcritic.search.record` (the
:class:`GuardRecord` of a prompt), :mod:`~igcritic.search.steering` (the logits processors and the token-level
baselines' hooks) and :mod:`~igcritic.search.loop` (:func:`search`: the block-wise loop). This file only
re-exports their public names.
"""

from igcritic.search.checks import check_budget, check_prompts, checked_config, cost_bounds
from igcritic.search.config import (
    AUTO_BATCH_ROWS,
    DEFAULT_REFUSAL,
    METHODS,
    SEARCH_CONFIG_NAME,
    TOKEN_METHODS,
    Method,
    SearchConfig,
    SearchConfigError,
    SearchOverrides,
    SearchPlan,
    as_overrides,
    overrides,
)
from igcritic.search.decision import Verdict
from igcritic.search.loop import OnBlock, search
from igcritic.search.record import GuardRecord
from igcritic.search.scoring import Scores, refusal_tokens

__all__ = [
    "AUTO_BATCH_ROWS",
    "DEFAULT_REFUSAL",
    "METHODS",
    "SEARCH_CONFIG_NAME",
    "TOKEN_METHODS",
    "GuardRecord",
    "Method",
    "OnBlock",
    "Scores",
    "refusal_tokens",
    "SearchConfig",
    "SearchConfigError",
    "SearchOverrides",
    "SearchPlan",
    "Verdict",
    "as_overrides",
    "check_budget",
    "check_prompts",
    "checked_config",
    "cost_bounds",
    "overrides",
    "search",
]
