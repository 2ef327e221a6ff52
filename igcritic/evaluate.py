"""Compare decoding methods side by side on a prompt set.

    igcritic eval --config configs/eval/embedded.yaml

Each method (plain sampling, best-of-N, beam, InferenceGuard with or without critic, ...) is one set of
search overrides for the same guard. Every method answers every prompt; then EVERY final response
(refusals included) is scored again with the cost and reward scorers, independently of what the runtime
tracked during search (in fully latent mode it never ran the cost model): the table's reward, cost and
safety rate (definitions in :mod:`igcritic.report`). Those scorers are the ones the search steered by.

Then every **judge** (``--judges``, :mod:`igcritic.judges`) grades the final answers, once all methods have
answered: it is never bound to the guard, so the search cannot optimise against it. Its table sets its
harmful rate and the paired difference to the reference method (bootstrap intervals over prompts) beside
what the search believed (``record.safe``). Judge and scorer quality (AUROC, ECE on labelled held-out
answers) is printed above the tables.

Outputs (:func:`igcritic.report.write_results`): ``records.jsonl``, ``results.csv``, ``judges.csv``, the two
figures of :mod:`igcritic.plots` and ``results.json`` in ``out_dir``. ``--reading_out DIR`` also exports the
answers for blind reading (:mod:`igcritic.reading`); ``--reading_in labels.jsonl --run RUN_DIR`` re-reads a
finished run with people's labels as one more judge, ``reading``.

Nothing finished is lost: ``out_dir`` is checked writable before any work, each method's records are saved as
it finishes, and Ctrl-C or SIGTERM stops with one line naming the command that continues the run
(``--resume true``: finished methods are kept, a run whose settings or prompts changed is refused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from igcritic import Interrupted, to_json
from igcritic.decoding import prefix_texts
from igcritic.guard import progress_bar
from igcritic.judges import (
    DEFAULT_QUALITY_SET,
    DEFAULT_RESAMPLES,
    Judge,
    JudgeSpec,
    QualityRow,
    as_judge_spec,
    attach,
    check_judges,
    finite,
    grade,
    load_judges,
    load_quality_set,
    name_problems,
    quality_of,
    resample_indices,
    summarize_judge,
)
from igcritic.policy import cache_dir
from igcritic.prompts import Prompt, PromptSource, load_prompts
from igcritic.reading import ANSWERS_FILE
from igcritic.report import (
    RECORD_COST,
    RECORD_COST_FROM,
    RECORD_METHOD,
    RECORD_REWARD,
    RECORD_SAFE,
    EvalError,
    EvalResult,
    MethodSummary,
    check_out,
    eval_errors,
    export_reading,
    method_positions,
    open_progress,
    reference_of,
    reread_run,
    save_progress,
    summarize,
    write_results,
)
from igcritic.scorers import load_scorer
from igcritic.store import check_writable

log = logging.getLogger(__name__)


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


def default_search() -> dict[str, Any]:
    """CPU-sized search shared by all methods: N = 8 candidates (K = 2 beams), 16-token blocks, D = 48; the
    prompts are batched across the search for the device (``prompt_batch: 0``: 4 prompts, 32 sequences per
    forward on a CPU, where 2 cores reach their throughput; 128 on a GPU)."""
    return {"num_candidates": 8, "block_width": 16, "max_new_tokens": 48, "prompt_batch": 0}


@dataclass
class EvalConfig:
    """Compare decoding methods on a prompt set: reward, cost, safety rate, refusals, latency, tokens/s, and
    independent judges' harmful rates with bootstrap intervals and paired differences. Prints the tables and
    writes records.jsonl, results.csv, judges.csv, results.json and two PNG figures to out_dir. With --run
    RUN_DIR: --reading_in labels.jsonl merges people's labels into that run's tables (the judge "reading"),
    --reading_out DIR exports its answers for blind reading, neither prints its tables again; nothing is
    generated."""

    critic: str = "checkpoints/embedded"
    """Exported critic folder (``igcritic export``); the guard is loaded from it."""
    prompts: PromptSource = field(default_factory=lambda: PromptSource(split="heldout", limit=16))
    """The prompt set (``--prompts.source``, ``--prompts.split``, ``--prompts.limit``): by default the first
    16 held-out prompts of the shipped set; JSONL rows may carry ``category``, ``harmful`` and ``split``."""
    budget: float | None = None
    """Budget d for the guard and the safety rate; None: the guard's default, else the cost scorer's hint."""
    methods: list[MethodSpec] = field(default_factory=default_methods)
    """Methods to compare, in table order."""
    search: dict[str, Any] = field(default_factory=default_search)
    """Search overrides shared by every method (a method's own overrides win)."""
    batch_size: int = 0
    """Prompts per ``generate`` call; 0 passes all prompts at once and lets the guard batch them."""
    model: str | None = None
    """Policy id or path; None: the one recorded in the critic."""
    cost: str | None = None
    """Cost scorer spec (``embedded``, ``beaver:<folder>``, ...) bound to the guard and used to score every
    answer; None: the cost scorer the critic was trained with (recorded in its artifact)."""
    reward: str | None = None
    """Reward scorer spec bound to the guard and used to score every answer; None: the critic's recorded
    one."""
    prefix_cost: bool = True
    """Final cost S_T as the scorer defines it over the answer's token prefixes (e.g. the embedded probe's
    running max, the store's definition) when the scorer has ``prefix_scores``; False: one score of the
    text."""
    device: str = "cpu"
    """Device of the policy, critic and scorers."""
    out_dir: str = "runs/eval/embedded"
    """Output folder; must be empty or missing unless ``overwrite``."""
    seed: int = 0
    """Seed passed to every method, so all methods sample from the same random stream."""
    overwrite: bool = False
    """Allow writing into a non-empty ``out_dir`` (its eval files are replaced)."""
    resume: bool = False
    """Continue the interrupted run in ``out_dir``: its finished methods are kept, the rest run; refused if
    a setting that shapes the answers or the prompts changed."""
    plots: bool = True
    """Write the two PNG figures."""
    judges: list[JudgeSpec | str] = field(default_factory=list)
    """Judges grading the final answers (never the search): ``{name, spec, threshold?, reward?}`` or a bare
    scorer spec; each is loaded afresh with role cost (:mod:`igcritic.judges`)."""
    reference: str | None = None
    """Method the paired differences are taken against; None: ``plain sampling`` if present, else the
    first."""
    bootstrap: int = DEFAULT_RESAMPLES
    """Bootstrap resamples over prompts for the 95% intervals (seeded by ``seed``); 0: no intervals."""
    quality_set: str | None = DEFAULT_QUALITY_SET
    """Labelled held-out answers (``{"prompt", "response", "harmful", "helpful", "label"}`` JSONL) for each
    judge's and scorer's AUROC/ECE; ``default``: ``igcritic/assets/labelled_heldout.jsonl`` (not reported,
    with a warning, while it is missing); None: not reported."""
    reading_out: str | None = None
    """Also write every answer shuffled, without method names, for blind reading into this empty folder."""
    reading_in: str | None = None
    """People's labels (``{"id", "label", "helpfulness"}`` JSONL, data_prep/LABELLING.md) to merge into the
    finished run ``run`` as the judge ``reading``; nothing is generated."""
    run: str | None = None
    """A finished eval ``out_dir``: its tables printed again; with ``reading_in`` re-read with people's
    labels, with ``reading_out`` exported for blind reading (nothing is generated)."""

    def problems(self) -> list[str]:
        """Every invalid field, each as a one-line message with the fix."""
        out = []
        if self.prompts.limit is not None and self.prompts.limit < 1:
            out.append(f"--prompts.limit {self.prompts.limit} must be >= 1 (or null for all prompts)")
        if self.budget is not None and not math.isfinite(float(self.budget)):
            out.append(f"--budget {self.budget} must be a finite number (or null for the default)")
        if self.batch_size < 0:
            out.append(f"--batch_size {self.batch_size} must be >= 0 (0: all prompts in one call)")
        if not self.methods:
            out.append("--methods is empty; give at least one method")
        names = [m.name for m in self.methods]
        out += name_problems(names, "--methods", "method")
        if self.reference is not None and self.reference not in names:
            out.append(f"--reference {self.reference!r} is not a method; use one of {names}")
        if self.resume and self.overwrite:
            out.append("--resume and --overwrite exclude each other; pick one")
        if self.bootstrap < 0:
            out.append(f"--bootstrap {self.bootstrap} must be >= 0 (0: no intervals)")
        try:
            judges = [as_judge_spec(j) for j in self.judges]
        except TypeError as e:
            return [*out, f"--judges: {e}; give {{name, spec, threshold?, reward?}} or a scorer spec"]
        out += name_problems([j.name for j in judges])
        out += [
            f"--judges {j.name!r} has no spec; give a scorer spec" for j in judges if not str(j.spec).strip()
        ]
        return out

    def validate(self) -> None:
        if probs := self.problems():
            raise EvalError("; ".join(probs))


RESUME_FREE = ("out_dir", "resume", "overwrite", "plots", "judges", "reference", "bootstrap", "quality_set")
"""Settings a resumed run may change: they act only after the methods answered (or where files go)."""


def run_key(cfg: EvalConfig, prompts: list[Prompt], budget: float) -> dict:
    """What a resumed run must share with the interrupted one: every setting that shapes the answers, the
    prompts' hash and the budget used."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE and not k.startswith("read")}
    text = json.dumps([asdict(p) for p in prompts], sort_keys=True, default=str)
    return {**settings, "prompts_sha256": hashlib.sha256(text.encode()).hexdigest(), "budget_used": budget}


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


def critic_graders(guard: Any) -> list:
    """The guard's critic as two graders of the labelled answers: its value ``V(h_T)`` against ``helpful``
    (does it rank answers as well as the reward scorer?) and its latent cost ``Ŝ(h_T)``, the fully latent
    mode's S, against ``harmful`` (does it see what the exact cost sees?). ``h_T``: the teacher-forced latent
    of the re-tokenised answer (cut to the policy's context). Empty without a critic (a stand-in guard)."""
    critic, policy = getattr(guard, "critic", None), getattr(guard, "policy", None)
    if not (hasattr(critic, "value") and hasattr(critic, "cost") and hasattr(policy, "tokenizer")):
        return []
    import torch

    from igcritic.decoding import teacher_forced_latents

    seen: dict[tuple, torch.Tensor] = {}  # value and cost grade the same answers: one pass serves both

    def last_latents(prompts: list[str], responses: list[str]) -> torch.Tensor:
        key = (tuple(prompts), tuple(responses))
        if key in seen:
            return seen[key]
        out = []
        for i in range(0, len(prompts), 16):
            answers = [  # cut to what the context leaves after the prompt
                policy.tokenizer(r, add_special_tokens=False)["input_ids"][
                    : policy.max_context - policy.encode_prompts([p])["input_ids"].shape[1]
                ]
                for p, r in zip(prompts[i : i + 16], responses[i : i + 16])
            ]
            lat = teacher_forced_latents(policy, prompts[i : i + 16], answers)
            out += [h[-1] for h in lat]
        seen.clear()
        seen[key] = torch.stack(out).to(next(critic.parameters()).device)
        return seen[key]

    def head(name: str):  # the critic's value or cost head on the answers' last latents, clipped to [0, 1]
        @torch.inference_mode()
        def grade(prompts, responses):
            return getattr(critic, name)(last_latents(prompts, responses)).clamp(0, 1).cpu().numpy()

        return grade

    return [
        ("critic", "critic value", "helpful", head("value"), None),
        ("critic", "critic cost", "harmful", head("cost"), None),
    ]


QUALITY_CACHE = "quality"
"""Folder under :func:`igcritic.policy.cache_dir` of the quality tables already computed."""
QUALITY_CACHE_VERSION = 1
"""Bumped when the quality numbers are computed differently (old cache files then never match)."""


def _scorer_identity(scorer: Any) -> dict | None:
    """What makes a scorer's scores what they are: its class, its info and the fingerprint of its weight
    files; None when its weights cannot be fingerprinted (then nothing it grades is cached)."""
    from igcritic.collect import scorer_fingerprint

    weights = scorer_fingerprint(scorer) if scorer is not None else None
    if weights is None:
        return None
    info = getattr(scorer, "info", None)
    return {
        "class": type(scorer).__qualname__,
        "info": info.to_dict() if hasattr(info, "to_dict") else None,
        "weights": weights,
    }


def quality_key(source: str | None, cost: Any, reward: Any, judges: Sequence[Any], guard: Any) -> str | None:
    """The cache key of a quality table: a hash of the labelled file's bytes and of every grader's identity
    (scorers and judges by their weights, the critic by its tensors and its policy's fingerprint); None when
    any of them cannot be identified."""
    import hashlib

    from igcritic.judges import ScorerJudge

    if source is None or not Path(source).is_file():
        return None
    parts: list[Any] = [QUALITY_CACHE_VERSION, hashlib.sha256(Path(source).read_bytes()).hexdigest()]
    if any(not isinstance(j, ScorerJudge) for j in judges):
        return None
    ids = [_scorer_identity(cost), _scorer_identity(reward)]
    ids += [_scorer_identity(j.scorer) for j in judges]
    ids += [_scorer_identity(j.reward_scorer) for j in judges if j.reward_scorer is not None]
    if None in ids:
        return None
    parts += [ids, [[j.name, j.threshold, j.spec, j.reward_scorer is not None] for j in judges]]
    if critic_graders(guard):
        import torch

        from igcritic.policy import weights_fingerprint

        h = hashlib.sha256()
        for name, t in sorted(guard.critic.state_dict().items()):
            data = (
                t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                if isinstance(t, torch.Tensor)
                else to_json(t, sort_keys=True).encode()
            )
            h.update(name.encode() + data)
        policy = weights_fingerprint(guard.policy.model)
        parts.append([h.hexdigest(), guard.critic.calibration.to_dict(), policy])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_quality(
    rows: list[dict] | None, source: str | None, cost: Any, reward: Any, judges: Sequence[Any], guard: Any
) -> list[QualityRow] | None:
    """:func:`igcritic.judges.quality_of` of the labelled answers, from the cache when the same file was
    graded by the same scorers, judges and critic before (the same numbers every run: minutes saved)."""
    if not rows:
        return None
    key = quality_key(source, cost, reward, judges, guard)
    path = cache_dir() / QUALITY_CACHE / f"{key}.json" if key else None
    if path is not None and path.is_file():
        try:
            out = [QualityRow(**r) for r in json.loads(path.read_text())]
            log.info("quality table of %s: from the cache (%s)", source, path)
            return out
        except (OSError, ValueError, TypeError):
            log.warning("ignoring the unreadable quality cache %s", path)
    log.info("quality table: grading %d labelled answers of %s (cached afterwards)", len(rows), source)
    out = quality_of(rows, cost, reward, judges, critic_graders(guard))
    if path is not None and out is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(to_json([asdict(q) for q in out]))
            tmp.replace(path)
        except OSError as e:
            log.warning("could not cache the quality table in %s (%s)", path, e)
    return out


def _guard_scorer(guard: Any, role: str) -> Scorer | None:
    """The scorer bound to the guard for ``role`` (``Guard.cost`` / ``Guard.reward``), if any."""
    s = getattr(guard, role, None)
    return s if isinstance(s, Scorer) else None


def _resolve_budget(cfg: EvalConfig, guard: Any, cost: Scorer) -> float:
    if cfg.budget is not None:
        return float(cfg.budget)
    candidates = [getattr(guard, "budget", None), getattr(getattr(cost, "info", None), "budget_hint", None)]
    for b in candidates:
        if isinstance(b, (int, float)) and math.isfinite(b):
            return float(b)
    raise EvalError("no budget: pass --budget (the guard and the cost scorer give no default)")


def scorer_specs(cfg: EvalConfig) -> dict[str, str | None]:
    """The cost/reward scorer specs: the config's, else the ids the critic artifact recorded."""
    specs: dict[str, str | None] = {"cost": cfg.cost, "reward": cfg.reward}
    if None in specs.values():
        from igcritic.critic import read_config

        meta = read_config(cfg.critic)
        for role in specs:
            recorded = meta.get(f"{role}_scorer") or {}
            specs[role] = specs[role] or recorded.get("id")
    return specs


def _load_guard(cfg: EvalConfig) -> Generator:
    from igcritic.guard import load_guard

    specs = scorer_specs(cfg)
    return load_guard(
        cfg.critic, model=cfg.model, cost=specs["cost"], reward=specs["reward"], device=cfg.device
    )


def method_overrides(cfg: EvalConfig, spec: MethodSpec) -> dict[str, Any]:
    """What ``generate`` receives for one method: shared search, then the seed, then the method's own."""
    return {**cfg.search, "seed": cfg.seed, **spec.overrides}


def precheck_methods(guard: Any, cfg: EvalConfig, budget: float) -> None:
    """Refuse a method the guard cannot run before anything is generated (unknown override, exact mode
    without a cost scorer, RE-Control on a critic of another layer, ...), when the guard exposes ``check()``
    (:class:`igcritic.guard.Guard` does)."""
    check = getattr(guard, "check", None)
    if not callable(check):
        return
    for spec in cfg.methods:
        try:
            check(budget, **method_overrides(cfg, spec))
        except (ValueError, TypeError) as e:
            raise EvalError(f"method {spec.name!r} cannot run: {e}") from None


def run_method(
    guard: Generator,
    spec: MethodSpec,
    prompts: list[Prompt],
    cfg: EvalConfig,
    budget: float,
    cost: Scorer,
    reward: Scorer,
    advance: Any = None,
) -> tuple[list[dict], float]:
    """Answer every prompt with one method, then score every response; returns (rows, wall seconds).
    ``advance(n)`` hears of every n prompts answered (a progress bar), through the guard when it takes
    ``progress`` (:meth:`igcritic.guard.Guard.generate`), else after each call."""
    overrides = method_overrides(cfg, spec)
    by_guard = advance is not None and "progress" in inspect.signature(guard.generate).parameters
    if by_guard:
        overrides["progress"] = advance
    texts = [p.prompt for p in prompts]
    step = cfg.batch_size or len(texts)
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
    costs, sources = final_costs(cost, texts, records, tokenizer, prefix=cfg.prefix_cost)
    rewards = text_scores(reward, "reward", texts, [str(r["text"]) for r in records])
    rows = []
    for k, (p, rec) in enumerate(zip(prompts, records)):
        row = {
            RECORD_METHOD: spec.name,
            "prompt_index": k,
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


@eval_errors
def run_eval(
    cfg: EvalConfig,
    guard: Generator | None = None,
    cost: Scorer | None = None,
    reward: Scorer | None = None,
    judges: Sequence[Judge] | None = None,
) -> EvalResult:
    """Run every method of ``cfg`` on its prompts, score, judge, summarise and write the outputs.

    ``guard``, ``cost``, ``reward`` and ``judges`` may be passed already built (tests, notebooks); otherwise
    the guard is loaded from ``cfg.critic`` with the ``cfg.cost``/``cfg.reward`` scorers (default: the
    critic's recorded ones), the evaluation scores with the guard's scorers (or ``cfg.cost``/``cfg.reward`` if
    it has none) and the judges are loaded from ``cfg.judges``. Judges are called only after every method
    answered.
    """
    cfg.validate()
    out = Path(cfg.out_dir)
    check_out(out, cfg.overwrite, resume=cfg.resume)
    if cfg.reading_out:
        check_out(Path(cfg.reading_out), cfg.overwrite, "--reading_out")
    check_writable(out, "--out_dir", EvalError)
    prompts, _ = load_prompts(cfg.prompts)
    if guard is None:
        log.info("loading the critic %s, its policy and scorers", cfg.critic)
        guard = _load_guard(cfg)
    scorers = {}
    for role, given, spec in (("cost", cost, cfg.cost), ("reward", reward, cfg.reward)):
        s = given or _guard_scorer(guard, role) or (load_scorer(spec, role, cfg.device) if spec else None)
        if s is None:
            raise EvalError(f"no {role} scorer to evaluate with; pass --{role} (a scorer spec)")
        scorers[role] = s
    budget = _resolve_budget(cfg, guard, scorers["cost"])
    precheck_methods(guard, cfg, budget)
    if judges is None and cfg.judges:
        log.info("loading %d judges", len(cfg.judges))
    judges = list(judges) if judges is not None else load_judges(cfg.judges, cfg.device)
    check_judges(
        judges,
        [getattr(guard, "cost", None), scorers["cost"]],
        getattr(getattr(scorers["cost"], "info", None), "id", None),
    )
    quality_rows, quality_source = load_quality_set(cfg.quality_set)
    log.info(
        "eval: %d prompts x %d methods, %d judges, budget %g, out %s",
        len(prompts),
        len(cfg.methods),
        len(judges),
        budget,
        out,
    )

    idx = resample_indices(len(prompts), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None
    key = run_key(cfg, prompts, budget)
    records, done = open_progress(out, key, cfg.resume, len(prompts))
    if done:
        log.info("eval: resuming %s; %s already done", out, ", ".join(done))
    try:
        todo = [spec for spec in cfg.methods if spec.name not in done]
        with progress_bar(len(prompts) * len(todo), "answering") as advance:
            for k, spec in enumerate(todo):
                advance(0, description=f"method {k + 1}/{len(todo)} {spec.name!r}")
                rows, wall = run_method(
                    guard, spec, prompts, cfg, budget, scorers["cost"], scorers["reward"], advance
                )
                records += rows
                done[spec.name] = wall
                save_progress(out, key, records, done)
        summaries: list[MethodSummary] = []
        for spec in cfg.methods:
            rows = [r for r in records if r[RECORD_METHOD] == spec.name]
            s = summarize(spec.name, rows, budget, done[spec.name], idx)
            summaries.append(s)
            log.info(
                "%s: reward %.3f, cost %.3f, safe %.0f%%, refused %.0f%%, %.2f s/prompt",
                s.method,
                s.reward_mean,
                s.cost_mean,
                100 * s.safety_rate,
                100 * s.refusal_rate,
                s.latency_mean,
            )

        # judges only now, on final answers: no candidate of any search was ever ranked by them
        reference = reference_of([m.name for m in cfg.methods], cfg.reference)
        by_method = method_positions(records, [m.name for m in cfg.methods])
        reports = []
        for judge in judges:
            log.info("judge %r: grading %d answers", getattr(judge, "name", judge), len(records))
            g = grade(judge, records)
            attach(records, g)
            reports.append(summarize_judge(g, records, by_method, reference, idx))
        result = EvalResult(
            budget=budget,
            summaries=summaries,
            records=records,
            files=[],
            config=cfg,
            judges=reports,
            quality=cached_quality(
                quality_rows, quality_source, scorers["cost"], scorers["reward"], judges, guard
            ),
            quality_source=quality_source,
            reference=reference,
        )
        write_results(result, out, plots=cfg.plots, reading_out=cfg.reading_out)
        if cfg.reading_out:
            log.info("blind reading: wrote %s; give readers only its %s", cfg.reading_out, ANSWERS_FILE)
        return result
    except KeyboardInterrupt as e:
        saved = f"{len(done)} of {len(cfg.methods)} methods saved in {out}"
        raise Interrupted.of(e, saved, {"--resume": "true"}) from None


def main(cfg: EvalConfig) -> EvalResult | list[Path]:
    """``igcritic eval``: compare the methods of ``cfg`` (or, with ``run``, print a finished run's tables
    again, re-read with ``reading_in``), print the tables and write the outputs; the result, or with ``run``
    and ``reading_out`` alone the files written."""
    from rich.console import Console

    console = Console()
    if cfg.reading_in is not None or cfg.run is not None:
        if cfg.run is None:
            raise EvalError("--reading_in needs --run RUN_DIR (the eval out_dir whose answers were read)")
        if cfg.reading_in is None and cfg.reading_out is not None:
            files = export_reading(cfg.run, cfg.reading_out, cfg.overwrite)
            console.print(f"wrote {', '.join(map(str, files))}; give readers only {files[0]}")
            return files
        result = reread_run(cfg.run, cfg.reading_in, cfg.overwrite)  # no labels: the run's tables again
    else:
        result = run_eval(cfg)
    result.print(console)
    if result.files:
        console.print(f"wrote {', '.join(p.name for p in result.files)} to {result.files[0].parent}")
    return result
