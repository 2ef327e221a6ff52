"""What a search does: :class:`SearchConfig` (paper Table 1 defaults, every problem in one error), its file
``search_config.json`` and :data:`SearchOverrides`, the fields a command line or a caller sets over an
artifact's defaults."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_type_hints

from igcritic import IgcriticError, to_json
from igcritic.baselines import GUIDANCE, guidance_needs
from igcritic.decoding import SamplingConfig

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
    latent_window: int = 1
    """Fully latent mode with a running-max cost: Ŝ is averaged over the last ``latent_window`` tokens
    before its running max is taken (1: the plain running max of Ŝ). A wider window refuses fewer harmless
    dual-use answers (the max of a noisy head over every token reaches the budget on harmless words) but
    sees less: 8, chosen on the read corpus, was worse on the held-out source (docs/results.md)."""
    refusal_candidate: bool = False
    """inferenceguard: score ``refusal_text`` (ended by EOS, teacher-forced once per prompt) like a complete
    candidate of the first block, with its own S, value and q, so it competes with the sampled candidates
    (ties go to the sampled ones) instead of coming only after every retry failed. Chosen, it is a
    ``refused`` record with its own cost (``safe``: within budget)."""
    refusal_rank: Literal["value", "last"] = "value"
    """Where the refusal candidate ranks among the admissible candidates. ``value``: by its value, like the
    others (the critic's V of the refusal's latent, learnt from what the reward model calls a refusal: a
    critic fit on stores holding the guard's refusals can rank it above every answer); ``last``: below every
    admissible sampled candidate, so it wins only when none is admissible (with a margin: none clears it)."""
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
    trace: bool = False
    """Keep every block's scored candidates on the record (``GuardRecord.trace``): each candidate's answer so
    far with its S, value, q, admissibility and whether it was kept, so a user can read why the guard chose
    what it did. Off by default: N x blocks entries per prompt."""
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
        if not (isinstance(self.latent_window, int) and self.latent_window >= 1):
            bad.append(
                f"search.latent_window {self.latent_window!r} must be an integer >= 1 (1: no averaging)"
            )
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            bad.append(f"search.margin {self.margin!r} must be a finite number >= 0 (0: no margin)")
        if self.refusal_rank not in ("value", "last"):
            bad.append(f"search.refusal_rank {self.refusal_rank!r} is unknown; use value or last")
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
    out.__module__ = __name__  # importable by its name, igcritic.search.config.SearchOverrides
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
