"""Guarded block-wise search (InferenceGuard, docs/design.md section 6) and its baselines in one runtime.

Every method runs the same loop over the block sampler of :mod:`igcritic.decoding`: the prompts of a batch
are prefilled once, each live beam samples its share of N candidates of one block from its own KV cache,
the candidates are scored, and the best K are kept.

- ``inferenceguard``: safety state ``z = budget - S`` per candidate, S from the cost scorer on the candidate
  text (``mode="exact"``) or from the critic's latent cost head ``Ŝ(h)`` (``mode="latent"``: no cost-scorer
  call at all); admissible iff ``z >= margin`` and ``q(h, z - margin) >= tau`` (``critic=False``:
  ``z >= margin`` only; ``margin`` defaults to 0); the top K admissible by critic value (``critic=False``: by
  the reward scorer). With ``refusal_candidate`` the refusal text is scored like a complete candidate of
  the first block (its own S, value and q) and competes with the others. Nothing admissible: resample the
  block with :class:`RejectedTokenPenalty`, up to ``retries`` times, then fail closed (``refused=True``)
  or, with ``on_violation="best_effort"``, go on with the least bad candidates (``safe=False``).
- ``beam``: block beam search ranking by ``score``: ``lagrangian`` r - λ·S, ``augmented`` r among candidates
  with z >= 0 first (then the least over budget).
- ``best_of_n``: N full answers (one block of width D), the best by ``score``.
- ``plain``: one sampled answer per prompt (N = K = 1, one block of width D).
- ``args`` and ``recontrol`` (:mod:`igcritic.baselines`): plain sampling whose every token step is steered,
  ARGS by the scorers on the top k next tokens, RE-Control by gradient steps on the LM head's input latent
  with the critic's heads (``guidance``: reward, Lagrangian or cost).

r is the critic value ``V(h)`` (``critic=True``) or the reward scorer; S is tracked as above. Candidates
that emit EOS (or reach D tokens) are complete and carry over as beams without a cache row.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, NamedTuple, get_type_hints

import numpy as np
import torch

from igcritic import IgcriticError, to_json
from igcritic.baselines import (
    GUIDANCE,
    ArgsProcessor,
    LatentGuide,
    ReControl,
    guidance_needs,
    recontrol_problems,
)
from igcritic.critic import Critic
from igcritic.decoding import (
    Generators,
    LogitsProcessorList,
    RejectedTokenPenalty,
    RunningPrefix,
    SamplingConfig,
    StaticKV,
    SuppressTokens,
    prefill,
    rewind,
    sample_block,
)
from igcritic.policy import Policy, PolicyError
from igcritic.scorers import Scorer
from igcritic.scorers.latent import MAX_ANSWER_TOKENS, MAX_PROMPT_TOKENS, same_tokens

log = logging.getLogger(__name__)

Method = Literal["inferenceguard", "plain", "best_of_n", "beam", "args", "recontrol"]
METHODS = ("inferenceguard", "plain", "best_of_n", "beam", "args", "recontrol")
TOKEN_METHODS = ("plain", "args", "recontrol")
"""One answer per prompt in one block of D tokens (N = K = 1)."""
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."
SEARCH_CONFIG_NAME = "search_config.json"
"""File of a critic artifact holding its default :class:`SearchConfig` (written by ``igcritic export``)."""
AUTO_BATCH_ROWS = {"cpu": 32, "gpu": 1024}
"""``prompt_batch=0`` batches prompts until N x prompts reaches this many rows on the policy's device: 32 on
a CPU (where 2 cores reach their decode throughput), 1024 on an accelerator (a small model's step stays
launch-bound far beyond that)."""


OnBlock = Callable[[int, list[int]], None]
"""``on_block(prompt index, agreed answer tokens)``: see :func:`search`."""


class SearchPlan(NamedTuple):
    """The shape of a method's search (:attr:`SearchConfig.plan`)."""

    candidates: int
    """N: candidates sampled per block and prompt."""
    beams: int
    """K: beams kept per prompt after each block."""
    width: int
    """Tokens per block (D for one-block methods)."""
    retries: int
    """Resamples of a block with no admissible candidate before the search fails closed or falls back."""


class SearchConfigError(IgcriticError):
    """Search parameters or prompts the runtime cannot honour."""


@dataclass
class SearchConfig(SamplingConfig):
    """How the guard searches; defaults are paper Table 1 (InferenceGuard). The sampling fields
    (``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``) are :class:`SamplingConfig`'s, flat like
    ``GenerationConfig``: ``--search.temperature 0``, ``generate(temperature=0)``."""

    method: Method = "inferenceguard"
    """``inferenceguard``, ``plain`` (one sample), ``best_of_n``, ``beam`` (block beam search), ``args`` or
    ``recontrol`` (token-level guidance, :mod:`igcritic.baselines`)."""
    score: Literal["lagrangian", "augmented"] = "augmented"
    """Ranking of the baselines: ``lagrangian`` r - λ·S, ``augmented`` r among z >= 0 first."""
    critic: bool | None = None
    """Use the critic (value ranks, q admits); False: the reward scorer ranks. None: True when one is
    bound."""
    mode: Literal["auto", "latent", "exact"] = "auto"
    """Where S comes from: ``exact`` cost scorer, ``latent`` critic cost head; ``auto``: exact if a cost
    scorer is bound."""
    block_width: int = 32
    """Tokens per block."""
    num_candidates: int = 128
    """N: candidates sampled per block per prompt (spread over the live beams)."""
    beams_kept: int | None = None
    """K: beams kept per block (None: N // 4, at least 1)."""
    retries: int = 2
    """M: resamples of a block with penalised logits when nothing is admissible."""
    tau: float = 0.5
    """Admissible iff q(h, z - margin) >= tau (and z >= margin)."""
    margin: float = 0.0
    """Safety margin of the admission test (inferenceguard): admissible iff z >= margin and
    q(h, z - margin) >= tau, so a candidate whose cost sits just under the budget is not admitted. 0: the
    paper's rule."""
    refusal_candidate: bool = False
    """inferenceguard: score ``refusal_text`` (ended by EOS, teacher-forced once per prompt) like a complete
    candidate of the first block, with its own S, value and q, so it competes with the sampled candidates
    (ties go to the sampled ones) instead of coming only after every retry failed. Chosen, it is a
    ``refused`` record with its own cost (``safe``: within budget)."""
    budget: float | None = None
    """d: safe iff S <= d. None: the guard's default (search_config.json, else the cost scorer's hint)."""
    lagrange_lambda: float = 1.0
    """λ of the Lagrangian score r - λ·S."""
    resample_penalty: float = 2.0
    """Logit units subtracted from tokens seen in rejected candidates when a block is resampled."""
    on_violation: Literal["refuse", "best_effort"] = "refuse"
    """Nothing admissible after M retries: ``refuse`` (the refusal text, refused=True) or ``best_effort``."""
    refusal_text: str = DEFAULT_REFUSAL
    """The answer of a refused prompt."""
    seed: int = 0
    """Seed of the sampling generator (results are reproducible for the same prompts and prompt_batch)."""
    prompt_batch: int = 0
    """Prompts searched together (their candidates share each forward); 0: as many as keep N x prompts <=
    32 on a CPU, 1024 on a GPU (``AUTO_BATCH_ROWS``)."""
    ignore_eos: bool = False
    """Never sample EOS (benchmarks: a fixed N x D tokens)."""
    compile: bool = False
    """Decode on a static KV cache of N x prompts-per-batch rows with a ``torch.compile``-d step (for GPUs;
    slower on CPU, BENCHMARKS.md); the first batch of each shape compiles (about a minute)."""
    guidance: Literal["reward", "lagrangian", "cost"] = "reward"
    """ARGS / RE-Control: what each token step raises: ``reward`` (ARGS: the reward scorer r; RE-Control:
    the critic's V(h)), ``lagrangian`` (r - λ·c; V(h) - λ·Ŝ(h)) or ``cost`` (-c; -Ŝ(h)); c: the cost scorer
    (ARGS), Ŝ: the critic's latent cost head (RE-Control). Paper Table 2: ARGS, ARGS + Lagrangian, ARGS +
    cost model, RE-Control, RE-Control + Lagrangian."""
    args_top_k: int = 20
    """ARGS: next-token candidates scored per step (paper Table 1: 20; width 1: one hypothesis)."""
    args_weight: float = 1.0
    """ARGS: w in logit + w·g (the ARGS reference code's example uses 1.0)."""
    recontrol_steps: int = 30
    """RE-Control: gradient-ascent steps on the latent per token (paper Table 1: 30)."""
    recontrol_step_size: float = 0.5
    """RE-Control: step size η of h <- h + η·∇G(h) (paper Table 1: 0.5)."""

    @property
    def beams(self) -> int:
        return self.beams_kept if self.beams_kept is not None else max(1, self.num_candidates // 4)

    def prompts_per_batch(self, device: str = "cpu") -> int:
        """Prompts searched together on a policy of ``device`` type (``prompt_batch``, or automatic)."""
        rows = AUTO_BATCH_ROWS["cpu" if device == "cpu" else "gpu"]
        return self.prompt_batch or max(1, rows // self.plan.candidates)

    @property
    def plan(self) -> SearchPlan:
        """The candidates, beams, block width and retries the method actually uses."""
        d = self.max_new_tokens
        if self.method in TOKEN_METHODS:
            return SearchPlan(candidates=1, beams=1, width=d, retries=0)
        if self.method == "best_of_n":
            return SearchPlan(candidates=self.num_candidates, beams=1, width=d, retries=0)
        if self.method == "beam":
            return SearchPlan(self.num_candidates, self.beams, self.block_width, retries=0)
        return SearchPlan(self.num_candidates, self.beams, self.block_width, self.retries)

    def resolve(self, has_critic: bool, has_cost: bool, has_reward: bool) -> SearchConfig:
        """Fill ``critic``/``mode`` from what is bound and raise one error listing every problem."""
        cfg = replace(
            self,
            critic=has_critic if self.critic is None else self.critic,
            mode=("exact" if has_cost else "latent") if self.mode == "auto" else self.mode,
        )
        bad = cfg._problems(has_critic, has_cost, has_reward)
        if bad:
            raise SearchConfigError("; ".join(bad))
        return cfg

    def _problems(self, has_critic: bool, has_cost: bool, has_reward: bool) -> list[str]:
        """Each names the field as ``search.FIELD``: the flag ``--search.FIELD`` of generate/eval/collect
        and the keyword ``FIELD=`` of ``Guard.generate``."""
        bad = []
        if self.method not in METHODS:
            bad.append(f"search.method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.score not in ("lagrangian", "augmented"):
            bad.append(f"search.score {self.score!r} is unknown; use lagrangian or augmented")
        if self.mode not in ("latent", "exact"):
            bad.append(f"search.mode {self.mode!r} is unknown; use auto, latent or exact")
        if self.on_violation not in ("refuse", "best_effort"):
            bad.append(f"search.on_violation {self.on_violation!r} is unknown; use refuse or best_effort")
        if self.budget is None or not isinstance(self.budget, (int, float)) or not math.isfinite(self.budget):
            bad.append(f"search.budget {self.budget!r} is not a finite number; set one, e.g. 0.5")
        n, k = self.plan.candidates, self.plan.beams
        d = self.max_new_tokens
        if d < 1:
            bad.append(f"search.max_new_tokens {d} must be >= 1")
        if n < 1 or k < 1:
            bad.append(f"search.num_candidates {n} / search.beams_kept {k} must be >= 1")
        elif self.method in ("inferenceguard", "beam") and (k > n or n % k):
            bad.append(
                f"search.num_candidates {n} is not divisible across search.beams_kept {k}; use a multiple "
                f"of {k}"
            )
        if self.method in ("inferenceguard", "beam") and not 1 <= self.block_width <= d:
            bad.append(f"search.block_width {self.block_width} must be in 1..max_new_tokens ({d}); lower it")
        if self.retries < 0:
            bad.append(f"search.retries {self.retries} must be >= 0")
        if not 0.0 <= self.tau <= 1.0:
            bad.append(f"search.tau {self.tau} must be a probability in [0, 1]")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            bad.append(f"search.margin {self.margin!r} must be a finite number >= 0 (0: no margin)")
        if self.refusal_candidate and not str(self.refusal_text).strip():
            bad.append("search.refusal_candidate needs a refusal text; set search.refusal_text")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
            bad.append(
                f"search.temperature {self.temperature} / top_p {self.top_p} / top_k {self.top_k} is invalid;"
                " use temperature >= 0, 0 < top_p <= 1, top_k >= 0"
            )
        if self.prompt_batch < 0:
            bad.append(f"search.prompt_batch {self.prompt_batch} must be >= 0 (0: automatic)")
        bad += self._token_problems(has_critic, has_cost, has_reward)
        if self.mode == "exact" and not has_cost:
            bad.append(
                f"search.mode exact ({self.method}) needs a cost scorer; pass --cost (cost=...) or use "
                "search.mode latent"
            )
        if self.mode == "latent" and not has_critic:
            bad.append(
                "search.mode latent needs a critic (its latent cost head); bind one or use search.mode exact"
            )
        if self.critic and not has_critic:
            bad.append("search.critic true needs a critic; bind one or set search.critic false")
        if not self.critic and self.method not in TOKEN_METHODS and not has_reward:
            bad.append(
                f"search.method {self.method} with search.critic false ranks by reward; pass --reward "
                "(reward=...) or use the critic"
            )
        return bad

    def _token_problems(self, has_critic: bool, has_cost: bool, has_reward: bool) -> list[str]:
        if self.method not in ("args", "recontrol"):
            return []
        if self.guidance not in GUIDANCE:
            return [f"search.guidance {self.guidance!r} is unknown; use one of {', '.join(GUIDANCE)}"]
        want_r, want_c = guidance_needs(self.guidance)
        bad = []
        if self.method == "args":
            if self.args_top_k < 1:
                bad.append(f"search.args_top_k {self.args_top_k} must be >= 1")
            if not math.isfinite(self.args_weight):
                bad.append(f"search.args_weight {self.args_weight} must be a finite number")
            if want_r and not has_reward:
                bad.append(f"search.method args, guidance {self.guidance} scores the reward; pass --reward")
            if want_c and not has_cost:
                bad.append(f"search.method args, guidance {self.guidance} scores the cost; pass --cost")
        else:
            if self.recontrol_steps < 0:
                bad.append(f"search.recontrol_steps {self.recontrol_steps} must be >= 0")
            if not (math.isfinite(self.recontrol_step_size) and self.recontrol_step_size >= 0):
                bad.append(
                    f"search.recontrol_step_size {self.recontrol_step_size} must be a finite number >= 0"
                )
            if not has_critic:
                bad.append("search.method recontrol ascends the critic's heads; bind a critic")
        return bad

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        """Build from a plain dict (``search_config.json``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SearchConfigError(f"unknown search parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def save(self, folder: str | Path) -> Path:
        """Write every field to ``folder/search_config.json``; returns the file."""
        path = Path(folder) / SEARCH_CONFIG_NAME
        path.write_text(to_json(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def from_file(cls, path: str | Path) -> SearchConfig:
        """Read a ``search_config.json`` (or the one in an artifact folder); a bad file is a
        SearchConfigError."""
        return cls.from_dict(cls.file_dict(path))

    @staticmethod
    def file_dict(path: str | Path) -> dict:
        """The object a ``search_config.json`` (or the one in an artifact folder) holds, as written (a store
        of ``collect --guard`` records it); a file that is not a JSON object is a SearchConfigError."""
        path = Path(path)
        path = path / SEARCH_CONFIG_NAME if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SearchConfigError(f"{path} is not a readable search config ({e})") from None
        if not isinstance(data, dict):
            raise SearchConfigError(f"{path} holds {type(data).__name__}, not a search config object")
        return data


def _overrides_class(cls: type) -> type:
    """``cls`` with every field optional and None by default: the fields a command line sets, and no
    others."""
    hints = get_type_hints(cls)
    items = [(f.name, hints[f.name] | None, field(default=None)) for f in fields(cls)]
    doc = f"Fields of {cls.__name__} to override; unset ones keep the critic artifact's defaults."
    try:  # the fields' help: the attribute docstrings of cls and its bases as an Args section (jsonargparse)
        from docstring_parser import parse_from_object

        params = [p for c in reversed(cls.__mro__[:-1]) for p in parse_from_object(c).params]
        args = [f"    {p.arg_name}: {' '.join(p.description.split())}" for p in params]
        doc += "\n\nArgs:\n" + "\n".join(args)
    except Exception:  # noqa: BLE001 - help text only
        pass
    out = make_dataclass(f"{cls.__name__.removesuffix('Config')}Overrides", items, namespace={"__doc__": doc})
    out.__module__ = __name__  # importable by its name, igcritic.search.SearchOverrides
    return out


SearchOverrides = _overrides_class(SearchConfig)
"""Search parameters to override, every field optional: the ``--search.FIELD`` group of ``generate``,
``serve`` and ``eval``, each eval method's ``overrides`` and collect's ``--guard_search``. A config type, so a
misspelt key fails when the command line is parsed; only the fields given override (:func:`overrides`)."""


def as_overrides(value: SearchOverrides | dict, flag: str = "--search") -> SearchOverrides:
    """``value`` as :data:`SearchOverrides` (a notebook's or a config list item's dict); a misspelt key is a
    one-line SearchConfigError naming ``flag``."""
    if not isinstance(value, dict):
        return value
    if bad := sorted(set(value) - {f.name for f in fields(SearchOverrides)}):
        raise SearchConfigError(f"{flag}: unknown search fields {bad}; use the fields of SearchConfig")
    return SearchOverrides(**value)


def overrides(search: Any) -> dict[str, Any]:
    """The fields of a :data:`SearchOverrides` that are set (what ``Guard.generate`` takes as keywords)."""
    return {k: v for k, v in asdict(search).items() if v is not None}


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

    def to_dict(self) -> dict:
        return asdict(self)


class Verdict(Enum):
    """What a prompt's block comes to when none of its candidates is admissible (else: the entries kept)."""

    RETRY = "retry"
    """Rewind the block and resample it, penalising the rejected tokens."""
    REFUSE = "refuse"
    """Out of retries with ``on_violation: refuse``: fail closed."""


class Scores(NamedTuple):
    """The scores of a set of candidates, each (B,) on CPU."""

    cost: torch.Tensor
    """S: the exact cost (running max over prefixes) or the critic's latent Ŝ."""
    value: torch.Tensor
    """The critic's V(h), or the reward scorer's R; NaN when neither is bound."""
    q: torch.Tensor
    """The calibrated q(h, z - margin) (ones for methods without admission)."""
    admissible: torch.Tensor
    """bool: z - margin >= 0 and q >= tau (all True for methods without admission)."""


@dataclass
class _Entry:
    """A scored candidate: a row of the current block, or (``row`` None) a complete answer kept earlier."""

    tokens: list[int]
    cost: float
    value: float
    q: float
    admissible: bool
    complete: bool = True
    row: int | None = None
    refusal: bool = False
    """The refusal text scored as a candidate (``refusal_candidate``)."""


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

    def critic_cost(self, h: torch.Tensor) -> torch.Tensor:
        """The critic's latent cost Ŝ(h) of every candidate (B,)."""
        return self._critic_head(h, self.critic.cost_from_features)

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
    if cfg.method == "recontrol" and (bad := recontrol_problems(policy, critic)):
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


@torch.inference_mode()
def search(
    policy: Policy,
    prompts: list[str],
    cfg: SearchConfig,
    critic: Critic | None = None,
    cost: Scorer | None = None,
    reward: Scorer | None = None,
    seeds: list[int] | None = None,
    on_block: OnBlock | None = None,
    progress: Callable[[int], Any] | None = None,
) -> list[GuardRecord]:
    """Answer every prompt with ``cfg.method``; batches of ``cfg.prompts_per_batch`` prompts share each
    forward (automatic: sized for the policy's device).

    ``seeds``: one seed per prompt instead of ``cfg.seed`` for all: each prompt then samples from its own
    generator, so its answer is the one it gets alone, whatever shares its batch (up to float rounding of
    the batched forward). ``on_block(i, tokens)`` is called after each accepted block of prompt ``i`` with
    the answer tokens every surviving candidate of that prompt agrees on (what can be shown already).
    ``progress(n)`` is called after each batch with its number of prompts (a progress bar)."""
    cfg = checked_config(policy, cfg, critic, cost, reward)
    check_prompts(policy, prompts, cfg)
    if seeds is not None and len(seeds) != len(prompts):
        raise SearchConfigError(f"got {len(seeds)} seeds for {len(prompts)} prompts; pass one per prompt")
    dev = policy.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    out: list[GuardRecord] = []
    step = cfg.prompts_per_batch(policy.device.type)
    for i in range(0, len(prompts), step):
        ctx = _Ctx(
            policy,
            cfg,
            critic,
            cost,
            reward,
            prompts[i : i + step],
            cfg.plan.candidates * min(step, len(prompts)),
        )
        if on_block is not None:
            ctx.on_block = lambda p, tokens, i=i: on_block(i + p, tokens)
        gens = (
            [torch.Generator(device=dev).manual_seed(int(x)) for x in seeds[i : i + step]] if seeds else gen
        )
        out += _search_batch(ctx, gens)
        if progress is not None:
            progress(len(ctx.prompts))
    if not check_budget(cfg.budget, cost, critic):
        out = [replace(r, budget_checked=False) for r in out]
    return out


def _search_batch(ctx: _Ctx, gen: Generators) -> list[GuardRecord]:
    cfg, policy = ctx.cfg, ctx.policy
    t0 = time.perf_counter()
    plan = cfg.plan
    n_cand, width = plan.candidates, plan.width
    d = cfg.max_new_tokens
    # check_prompts has validated every prompt; the static cache has room for every block and its retries
    steps = math.ceil(d / width) * (plan.retries + 1) * width
    static = (ctx.cache_rows, steps) if cfg.compile else None
    beams = prefill(policy, ctx.prompts, static=static)
    _decode_scoring(ctx, beams)
    if cfg.mode == "exact":  # S_0 of the empty answer
        beams.cost = (
            _decoded_empty_cost(ctx, beams)
            if ctx.cols
            else ctx.score(ctx.cost, beams.prompt, [""] * len(beams))
        )
    tracks = [_Track() for _ in ctx.prompts]
    if cfg.refusal_candidate and cfg.method == "inferenceguard":  # joins the first block's candidates
        for tr, e in zip(tracks, _refusal_entries(ctx, beams.cost), strict=True):
            tr.pool, tr.scored = [e], 1
    recontrol = _recontrol(ctx)
    vocab = beams.logits.shape[-1]
    banned = torch.zeros(len(ctx.prompts), vocab, dtype=torch.bool, device=beams.logits.device)
    while len(beams):
        # 1. each live beam takes its share of N candidates (cache rows indexed, never re-encoded)
        counts = _shares(beams.prompt, n_cand)
        parent = torch.repeat_interleave(torch.arange(len(beams)), counts)
        cands = beams.select(parent)
        parent_cost = cands.cost.clone()
        limits = torch.tensor([min(width, d - len(t)) for t in cands.tokens])
        args = _args(ctx, cands)
        proc = _processor(ctx, banned, cands.prompt, args)
        block = sample_block(
            policy, cands, limits, cfg, gen, proc, keep_latents=bool(ctx.cols), latent_logits=recontrol
        )
        for p, n in (args.scored if args is not None else {}).items():
            tracks[p].scored += n
        # 2. safety state (exact S or latent Ŝ), value and admissibility of every candidate
        scores = _score_candidates(ctx, cands, parent_cost, block)
        s = scores.cost
        complete = (block.eos | torch.tensor([len(t) >= d for t in cands.tokens])).tolist()
        cols = {k: v.tolist() for k, v in scores._asdict().items()}
        # 3. keep the top K per prompt; nothing admissible: rewind the block (retry) or fail closed
        keep: list[int] = []
        rewound: list[bool] = []
        for p, tr in enumerate(tracks):
            rows = torch.nonzero(cands.prompt == p).flatten().tolist()
            if not rows:
                continue
            tr.scored += len(rows)
            entries = _entries(cands.tokens, rows, cols, complete) + tr.pool
            chosen = _choose(cfg, tr, entries, plan.beams, plan.retries)
            if chosen is Verdict.RETRY:  # resample from each beam's state at the block start, penalised
                tr.retries += 1
                tr.block_retries += 1
                for j in rows:
                    banned[p, cands.tokens[j][len(cands.tokens[j]) - int(block.new[j]) :]] = True
                firsts = sorted({int(parent[j]): j for j in reversed(rows)}.values())
                keep += firsts
                rewound += [True] * len(firsts)
            elif chosen is Verdict.REFUSE:
                tr.refused, tr.pool = True, []
            else:
                tr.block_retries = 0
                banned[p] = False
                tr.steps += 1
                tr.pool = [replace(e, row=None) for e in chosen if e.complete]
                keep += [e.row for e in chosen if not e.complete]
                rewound += [False] * (len(chosen) - len(tr.pool))
                if ctx.on_block is not None:
                    ctx.on_block(p, _agreed([e.tokens for e in chosen]))
        order = sorted(range(len(keep)), key=lambda i: (int(cands.prompt[keep[i]]), keep[i]))
        keep_idx = torch.tensor([keep[i] for i in order], dtype=torch.long)
        was_rewound = torch.tensor([rewound[i] for i in order], dtype=torch.bool)
        if recontrol is not None:
            ctx.critic_seconds += recontrol.seconds
            recontrol.seconds = 0.0
        beams = cands.select(keep_idx)
        beams.cost = torch.where(was_rewound, parent_cost[keep_idx], s[keep_idx]) if len(keep_idx) else s[:0]
        rewind(beams, was_rewound, block, keep_idx)
    seconds = (time.perf_counter() - t0) / len(ctx.prompts)
    return [_record(ctx, p, tr, seconds) for p, tr in enumerate(tracks)]


def _entries(
    tokens: list[list[int]], rows: list[int], cols: dict[str, list], complete: list[bool]
) -> list[_Entry]:
    """The candidates ``rows`` of a block as entries, each field by name from ``cols`` (:class:`Scores` as
    lists)."""
    return [
        _Entry(tokens[j], **{k: v[j] for k, v in cols.items()}, complete=complete[j], row=j) for j in rows
    ]


def _agreed(answers: list[list[int]]) -> list[int]:
    """The longest token prefix all ``answers`` share."""
    first = answers[0]
    n = min(len(a) for a in answers)
    for a in answers[1:]:
        n = next((k for k in range(n) if a[k] != first[k]), n)
    return first[:n]


def _shares(prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Candidates per beam: N spread evenly over each prompt's live beams (beams of a prompt are
    contiguous)."""
    counts = torch.zeros(len(prompt), dtype=torch.long)
    for p in prompt.unique().tolist():
        rows = torch.nonzero(prompt == p).flatten()
        share = torch.full((len(rows),), n // len(rows), dtype=torch.long)
        share[: n % len(rows)] += 1
        counts[rows] = share
    return counts


def _args(ctx: _Ctx, cands) -> ArgsProcessor | None:
    """ARGS' processor of one block (``method: args``), scoring through :meth:`_Ctx.score`'s bookkeeping."""
    cfg = ctx.cfg
    if cfg.method != "args":
        return None

    def scorer(s):
        return None if s is None else (lambda idx, texts: ctx.score(s, idx, texts))

    return ArgsProcessor(
        ctx.policy,
        [list(t) for t in cands.tokens],
        cands.prompt,
        scorer(ctx.reward),
        scorer(ctx.cost),
        cfg.args_top_k,
        cfg.args_weight,
        cfg.guidance,
        cfg.lagrange_lambda,
        latent=_args_latent(ctx, cands),
    )


def _args_latent(ctx: _Ctx, cands) -> LatentGuide | None:
    """ARGS' scorers on the policy's own layers (:class:`LatentGuide`) when every scorer its guidance reads
    has them tapped, the rows start at the prompt's end (ARGS' one block), no prompt is longer than the
    text path reads and the cache is the dynamic one; None: the text path."""
    want_r, want_c = guidance_needs(ctx.cfg.guidance)
    used = {"reward": ctx.reward if want_r else None, "cost": ctx.cost if want_c else None}
    cols = {r: getattr(s, "decode_columns", lambda _: None)(ctx.policy) for r, s in used.items() if s}
    fresh = not any(cands.tokens)
    too_long = bool((cands.mask.sum(1) > MAX_PROMPT_TOKENS).any())
    if not cols or None in cols.values() or not fresh or too_long or isinstance(cands.cache, StaticKV):
        return None

    def score(role: str):
        scorer = used[role]

        def run(idx, first, last, mean) -> torch.Tensor:
            t0 = time.perf_counter()
            out = torch.from_numpy(scorer.decode_values(cols[role], first, last, mean)).float()
            ctx.account(idx.tolist(), time.perf_counter() - t0)
            return out

        return run if role in cols else None

    layers = [layer for r in cols for layer in used[r].head.layers]
    return LatentGuide(cands, score("reward"), score("cost"), max(layers), MAX_ANSWER_TOKENS)


def _recontrol(ctx: _Ctx) -> ReControl | None:
    cfg = ctx.cfg
    if cfg.method != "recontrol":
        return None
    return ReControl(
        ctx.policy,
        ctx.critic,
        cfg.recontrol_steps,
        cfg.recontrol_step_size,
        cfg.guidance,
        cfg.lagrange_lambda,
    )


def _processor(
    ctx: _Ctx, banned: torch.Tensor, prompt: torch.Tensor, args: ArgsProcessor | None = None
) -> LogitsProcessorList | None:
    procs = LogitsProcessorList()
    if bool(banned.any()):
        procs.append(RejectedTokenPenalty(banned[prompt.to(banned.device)], ctx.cfg.resample_penalty))
    if ctx.cfg.ignore_eos:
        procs.append(SuppressTokens(tuple(ctx.policy.eos_token_ids)))
    if args is not None:  # last: ARGS picks among the tokens the other processors leave
        procs.append(args)
    return procs or None


def _decode_scoring(ctx: _Ctx, beams) -> None:
    """Score from the decode pass when every scorer the search calls reads the policy's own layers (and no
    prompt is longer than the text path reads): fill ``ctx.cols`` and start ``beams.prefix``."""
    cfg = ctx.cfg
    used = {"cost": ctx.cost if cfg.mode == "exact" else None, "reward": None if cfg.critic else ctx.reward}
    cols = {r: getattr(s, "decode_columns", lambda _: None)(ctx.policy) for r, s in used.items() if s}
    too_long = bool((beams.mask.sum(1) > MAX_PROMPT_TOKENS).any())
    if cols and None not in cols.values() and not too_long:
        ctx.cols = cols
        beams.prefix = RunningPrefix.start(beams.h)


def _decoded_empty_cost(ctx: _Ctx, beams) -> torch.Tensor:
    """S_0 (the empty answer's p) of each prompt from its prefill latent."""
    t0 = time.perf_counter()
    h0 = beams.prefix.first
    out = torch.from_numpy(ctx.cost.decode_values(ctx.cols["cost"], h0, h0, h0)).float()
    ctx.account(beams.prompt.tolist(), time.perf_counter() - t0)
    return out


def _decoded_scores(
    ctx: _Ctx, cands, block, texts: list[str], parent_cost: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The exact cost (running max over every new prefix and ``parent_cost``) and the reward of every
    candidate from the block's latents, advancing ``cands.prefix``. A candidate whose text does not
    re-tokenise to its tokens is scored by the text path, so both paths give the same scores."""
    t0 = time.perf_counter()
    start = cands.prefix
    counted = (block.new - block.eos.long()).clamp(min=0)  # an EOS decodes to no text
    counted = torch.minimum(counted, (MAX_ANSWER_TOKENS + 1 - start.count).clamp(min=0))
    after, last, mean, valid = start.advance(block.latents, counted)
    cands.prefix = after
    out = {}
    if "cost" in ctx.cols:
        r, j = valid.nonzero(as_tuple=True)
        p = ctx.cost.decode_values(ctx.cols["cost"], start.first[r], last[r, j], mean[r, j])
        s = parent_cost.double().scatter_reduce(0, r, torch.from_numpy(p).double(), "amax")
        out["cost"] = s.float()
    if "reward" in ctx.cols:
        mean_now = after.total / after.count[:, None]
        out["reward"] = torch.from_numpy(
            ctx.reward.decode_values(ctx.cols["reward"], after.first, after.last, mean_now)
        ).float()
    ctx.account(cands.prompt.tolist(), time.perf_counter() - t0)
    same = same_tokens(ctx.policy.tokenizer, texts, cands.tokens, ctx.policy.eos_token_ids)
    rows = torch.tensor([j for j, ok in enumerate(same) if not ok], dtype=torch.long)
    if len(rows):
        sub = [texts[j] for j in rows.tolist()]
        for role, vals in out.items():
            scorer, prev = (ctx.cost, parent_cost[rows]) if role == "cost" else (ctx.reward, None)
            vals[rows] = ctx.score(scorer, cands.prompt[rows], sub, previous=prev)
    return out


def _score_candidates(ctx: _Ctx, cands, parent_cost: torch.Tensor, block=None) -> Scores:
    """The scores of every candidate, on CPU. ``block`` (the decode pass's running state)
    lets the policy-layer scorers read it; without it (the refusal candidate) they score the text."""
    cfg = ctx.cfg
    texts = (
        ctx.texts(cands.tokens)
        if (cfg.mode == "exact" or ctx.reward is not None and not cfg.critic)
        else None
    )
    decoded = _decoded_scores(ctx, cands, block, texts, parent_cost) if ctx.cols and block is not None else {}
    if "cost" in decoded:
        s = decoded["cost"]
    elif cfg.mode == "exact":
        s = ctx.score(ctx.cost, cands.prompt, texts, previous=parent_cost)
    else:  # fully latent: the critic's cost head, no cost-scorer call
        s = ctx.critic_cost(cands.h)
    z = cfg.budget - s
    if cfg.critic:
        value = ctx.critic_value(cands.h)
    elif "reward" in decoded:
        value = decoded["reward"]
    elif ctx.reward is not None:
        value = ctx.score(ctx.reward, cands.prompt, texts)
    else:  # plain sampling with neither: nothing to report
        value = torch.full_like(z, float("nan"))
    if cfg.method != "inferenceguard":
        return Scores(s, value, q=torch.ones_like(z), admissible=torch.ones_like(z, dtype=torch.bool))
    zm = z - cfg.margin
    q = ctx.critic_safe_prob(cands.h, zm) if cfg.critic else torch.ones_like(z)
    return Scores(s, value, q, admissible=(zm >= 0) & (q >= cfg.tau))


def _refusal_entries(ctx: _Ctx, s0: torch.Tensor) -> list[_Entry]:
    """``refusal_text`` + EOS as a complete candidate of each prompt, scored by :func:`_score_candidates`
    from the latent of its last token (one teacher-forced forward of the batch's prompts)."""
    policy = ctx.policy
    ids = policy.tokenizer(ctx.cfg.refusal_text, add_special_tokens=False)["input_ids"]
    ids = ids + policy.eos_token_ids[:1]
    n = len(ctx.prompts)
    enc = policy.encode_prompts(ctx.prompts, new_tokens=len(ids))
    tail = torch.tensor([ids] * n, dtype=torch.long, device=enc["input_ids"].device)  # (P, T_r)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(tail)], 1)
    _, lat, _ = policy.forward(torch.cat([enc["input_ids"], tail], 1), mask)  # (P, T, H)
    rows = SimpleNamespace(tokens=[list(ids) for _ in range(n)], prompt=torch.arange(n), h=lat[:, -1].float())
    cols = {k: v.tolist() for k, v in _score_candidates(ctx, rows, s0)._asdict().items()}
    return [
        _Entry(list(ids), **{k: v[p] for k, v in cols.items()}, complete=True, refusal=True) for p in range(n)
    ]


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
        return (z >= 0, e.q, e.value) if fallback else (e.admissible, e.value, not e.refusal)
    if cfg.score == "lagrangian":
        return (e.value - cfg.lagrange_lambda * e.cost,)
    return (1, e.value) if z >= 0 else (0, z)


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
