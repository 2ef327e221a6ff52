"""Compare decoding methods side by side on a prompt set.

    igcritic eval --config configs/eval/embedded.yaml

Each method (plain sampling, best-of-N, beam, InferenceGuard with or without critic, ...) is one set of
search overrides for the same guard. Every method answers every prompt; then EVERY final response
(refusals included) is scored again with the cost and reward scorers, independently of what the runtime
tracked during search (in fully latent mode it never ran the cost model): the table's reward, cost and
safety rate (definitions in :mod:`igcritic.eval.stats`). Those scorers are the ones the search steered by.

Then every **judge** (``--judges``, :mod:`igcritic.eval.judges`) grades the final answers, once all methods
have answered: it is never bound to the guard, so the search cannot optimise against it. Its table sets its
harmful rate and the paired difference to the reference method (bootstrap intervals over prompts) beside what
the search believed (``record.safe``). Judge and scorer quality (AUROC, ECE on labelled held-out answers) is
printed above the tables.

Outputs (:func:`igcritic.eval.report.write_results`): ``records.jsonl``, ``results.csv``, ``judges.csv``, the
two figures of :mod:`igcritic.eval.plots` and ``results.json`` in ``out``. ``--reading_out DIR`` also
exports the answers for blind reading (:mod:`igcritic.eval.reading`); ``--reading_in labels.jsonl --run
RUN_DIR`` re-reads a finished run with people's labels as one more judge, ``reading``. Several runs on the
same prompts (``--run A --run B``) are exported as one blind set and read back as one reading table.

Nothing finished is lost: ``out`` is checked writable before any work, each method's records are saved as
it finishes, and Ctrl-C or SIGTERM stops with one line naming the command that continues the run
(``--resume true``: finished methods are kept, a run whose settings or prompts changed is refused).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from igcritic import Interrupted
from igcritic.eval import (
    EvalError,
)
from igcritic.eval.judges import (
    Judge,
    JudgeSpec,
    as_judge_spec,
    check_judges,
    judge_all,
    load_judges,
    name_problems,
)
from igcritic.eval.methods import MethodSpec, default_methods, method_overrides, precheck_methods, run_method
from igcritic.eval.quality import DEFAULT_QUALITY_SET, cached_quality, load_quality_set
from igcritic.eval.reading import ANSWERS_FILE, ReadingTable
from igcritic.eval.report import (
    EvalResult,
    check_out,
    export_reading,
    export_runs,
    open_progress,
    read_runs_labels,
    reread_run,
    save_progress,
    write_results,
)
from igcritic.eval.stats import (
    DEFAULT_RESAMPLES,
    reference_of,
    resample_indices,
    summarize_methods,
)
from igcritic.eval.tables import fit_width, print_tables, reading_table_rich
from igcritic.guard import Guard, load_guard, progress_bar
from igcritic.prompts import Prompt, PromptSource, load_prompts
from igcritic.scorers import Scorer, load_scorer
from igcritic.search import SearchOverrides, as_overrides, overrides
from igcritic.store import check_writable

log = logging.getLogger(__name__)


def default_search() -> SearchOverrides:
    """CPU-sized search shared by all methods: N = 8 candidates (K = 2 beams), 16-token blocks, D = 48; the
    prompts are batched across the search for the device (``prompt_batch: 0``: 4 prompts, 32 sequences per
    forward on a CPU, where 2 cores reach their throughput; 128 on a GPU). The configs read the same sizes
    from configs/search/cpu.yaml (``prompt_batch: 4``; a test keeps the two equal)."""
    return SearchOverrides(num_candidates=8, block_width=16, max_new_tokens=48, prompt_batch=0)


@dataclass
class EvalConfig:
    """Compare decoding methods on a prompt set: reward, cost, safety rate, refusals, latency, tokens/s, and
    independent judges' harmful rates with bootstrap intervals and paired differences. Prints the tables and
    writes records.jsonl, results.csv, judges.csv, results.json and two PNG figures to --out. With --run
    RUN_DIR: --reading_in labels.jsonl merges people's labels into that run's tables (the judge "reading"),
    --reading_out DIR exports its answers for blind reading, neither prints its tables again; nothing is
    generated. With several (--run A --run B, same prompts): --reading_out DIR exports them as one blind set,
    --reading_in labels.jsonl prints their reading table (harmful, over-refusal, incoherent, helpfulness)."""

    critic: str = "checkpoints/embedded"
    """Exported critic folder (``igcritic export``); the guard is loaded from it."""
    prompts: PromptSource = field(default_factory=lambda: PromptSource(split="heldout", limit=16))
    """The prompt set (``--prompts.source``, ``--prompts.split``, ``--prompts.limit``): by default the first
    16 held-out prompts of the shipped set; JSONL rows may carry ``category``, ``harmful`` and ``split``."""
    budget: float | None = None
    """Budget d for the guard and the safety rate; None: the guard's default, else the cost scorer's hint."""
    methods: list[MethodSpec] = field(default_factory=default_methods)
    """Methods to compare, in table order."""
    search: SearchOverrides = field(default_factory=default_search)
    """Search overrides shared by every method (a method's own overrides win): ``--search.FIELD VALUE`` or a
    file of them, ``--search configs/search/cpu.yaml``."""
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
    out: str = "runs/eval/embedded"
    """Output folder; must be empty or missing unless ``overwrite``."""
    seed: int = 0
    """Seed passed to every method, so all methods sample from the same random stream."""
    overwrite: bool = False
    """Allow writing into a non-empty ``out`` (its eval files are replaced)."""
    resume: bool = False
    """Continue the interrupted run in ``out``: its finished methods are kept, the rest run; refused if
    a setting that shapes the answers or the prompts changed."""
    plots: bool = True
    """Write the two PNG figures."""
    judges: list[JudgeSpec | str] = field(default_factory=list)
    """Judges grading the final answers (never the search): ``{name, spec, threshold?, reward?}`` or a bare
    scorer spec; each is loaded afresh with role cost (:mod:`igcritic.eval.judges`)."""
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
    run: list[str] | str | None = None
    """A finished eval ``--out`` folder: its tables printed again; with ``reading_in`` re-read with people's
    labels, with ``reading_out`` exported for blind reading (nothing is generated). Several (``--run A --run
    B``, or ``--run '[A, B]'``), runs of the same prompts: with ``reading_out`` exported as one blind set,
    with ``reading_in`` their reading table over all their methods (see ``reference``, ``bootstrap``)."""
    reading_key: str | None = None
    """The reading key the labels of ``reading_in`` refer to: for several runs, the ``key.jsonl`` that
    ``reading_out`` wrote (None: the ``key.jsonl`` beside the labels file); for one run, None reads
    ``RUN_DIR/reading_key.jsonl``."""

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

    def __post_init__(self):
        self.search = as_overrides(self.search)  # a notebook's dict

    def to_dict(self) -> dict:
        """The settings as ``results.json`` and ``progress.json`` keep them: search overrides that are set."""
        out = asdict(self)
        out["search"] = overrides(self.search)
        out["methods"] = [m.to_dict() for m in self.methods]
        return out

    def validate(self) -> None:
        if probs := self.problems():
            raise EvalError("; ".join(probs))


RESUME_FREE = ("out", "resume", "overwrite", "plots", "judges", "reference", "bootstrap", "quality_set")
"""Settings a resumed run may change: they act only after the methods answered (or where files go)."""


def run_key(cfg: EvalConfig, prompts: list[Prompt], budget: float) -> dict:
    """What a resumed run must share with the interrupted one: every setting that shapes the answers, the
    prompts' hash and the budget used."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE and not k.startswith("read")}
    text = json.dumps([asdict(p) for p in prompts], sort_keys=True, default=str)
    return {**settings, "prompts_sha256": hashlib.sha256(text.encode()).hexdigest(), "budget_used": budget}


def eval_scorers(
    cfg: EvalConfig, guard: Guard, cost: Scorer | None = None, reward: Scorer | None = None
) -> tuple[Scorer, Scorer]:
    """The cost and reward scorers every final answer is scored with: those given, else the guard's (the
    ones the search steered by), else the config's specs (a fully latent guard has no cost scorer)."""
    out = []
    for role, given, spec in (
        ("cost", cost or guard.cost, cfg.cost),
        ("reward", reward or guard.reward, cfg.reward),
    ):
        if given is None and spec is None:
            raise EvalError(f"no {role} scorer to evaluate with; pass --{role} (a scorer spec)")
        out.append(given if given is not None else load_scorer(spec, role, cfg.device))
    return out[0], out[1]


def resolve_budget(cfg: EvalConfig, guard: Guard, cost: Scorer) -> float:
    """The budget d of the run: the config's, else the guard's default, else the cost scorer's hint."""
    for b in (cfg.budget, guard.budget, cost.info.budget_hint):
        if b is not None and math.isfinite(b):
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


def _load_guard(cfg: EvalConfig) -> Guard:
    specs = scorer_specs(cfg)
    return load_guard(
        cfg.critic, model=cfg.model, cost=specs["cost"], reward=specs["reward"], device=cfg.device
    )


def answer_all(
    guard: Guard,
    cfg: EvalConfig,
    prompts: list[Prompt],
    budget: float,
    scorers: tuple[Scorer, Scorer],
    out: Path,
    key: dict,
    records: list[dict],
    done: dict[str, float],
) -> None:
    """Every method not ``done`` answers every prompt; its scored records join ``records`` and are saved with
    its wall seconds in ``done`` as it finishes (:func:`~igcritic.eval.report.save_progress`)."""
    todo = [spec for spec in cfg.methods if spec.name not in done]
    with progress_bar(len(prompts) * len(todo), "answering") as advance:
        for k, spec in enumerate(todo):
            advance(0, description=f"method {k + 1}/{len(todo)} {spec.name!r}")
            overrides = method_overrides(cfg.search, cfg.seed, spec)
            rows, wall = run_method(
                guard, spec, prompts, overrides, budget, *scorers, cfg.batch_size, cfg.prefix_cost, advance
            )
            records += rows
            done[spec.name] = wall
            save_progress(out, key, records, done)


def run_eval(
    cfg: EvalConfig,
    guard: Guard | None = None,
    cost: Scorer | None = None,
    reward: Scorer | None = None,
    judges: Sequence[Judge] | None = None,
) -> EvalResult:
    """Run every method of ``cfg`` on its prompts, score, judge, summarise and write the outputs.

    ``guard``, ``cost``, ``reward`` and ``judges`` may be passed already built (tests, notebooks); otherwise
    the guard is loaded from ``cfg.critic`` with the ``cfg.cost``/``cfg.reward`` scorers (default: the
    critic's recorded ones) and the judges from ``cfg.judges``. Answers are scored with :func:`eval_scorers`.
    Judges are called only after every method answered.
    """
    cfg.validate()
    out = Path(cfg.out)
    check_out(out, cfg.overwrite, resume=cfg.resume)
    if cfg.reading_out:
        check_out(Path(cfg.reading_out), cfg.overwrite, "--reading_out")
    check_writable(out, "--out", EvalError)
    prompts, _ = load_prompts(cfg.prompts)
    if guard is None:
        log.info("loading the critic %s, its policy and scorers", cfg.critic)
        guard = _load_guard(cfg)
    cost, reward = eval_scorers(cfg, guard, cost, reward)
    budget = resolve_budget(cfg, guard, cost)
    precheck_methods(guard, cfg.methods, cfg.search, cfg.seed, budget)
    if judges is None and cfg.judges:
        log.info("loading %d judges", len(cfg.judges))
    judges = list(judges) if judges is not None else load_judges(cfg.judges, cfg.device)
    check_judges(judges, [guard.cost, cost], cost.info.id)
    quality_rows, quality_source = load_quality_set(cfg.quality_set)
    n, m = len(prompts), len(cfg.methods)
    log.info("eval: %d prompts x %d methods, %d judges, budget %g, out %s", n, m, len(judges), budget, out)
    key = run_key(cfg, prompts, budget)
    records, done = open_progress(out, key, cfg.resume, len(prompts))
    if done:
        log.info("eval: resuming %s; %s already done", out, ", ".join(done))
    try:
        answer_all(guard, cfg, prompts, budget, (cost, reward), out, key, records, done)
        idx = resample_indices(len(prompts), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None
        methods = [spec.name for spec in cfg.methods]
        reference = reference_of(methods, cfg.reference)
        result = EvalResult(
            budget=budget,
            summaries=summarize_methods(methods, records, budget, done, idx),
            records=records,
            files=[],
            config=cfg,
            judges=judge_all(judges, records, methods, reference, idx),
            quality=cached_quality(quality_rows, quality_source, cost, reward, judges, guard),
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


def read_several(cfg: EvalConfig, runs: list[str], console) -> ReadingTable | list[Path]:
    """``--run A --run B ...``: with ``reading_out`` one blind set of all their answers (the files written),
    with ``reading_in`` their reading table, printed and written beside the key."""
    if (cfg.reading_in is None) == (cfg.reading_out is None):
        raise EvalError(
            f"{len(runs)} --run folders need either --reading_out DIR (export them as one blind set) or "
            "--reading_in labels.jsonl (their reading table)"
        )
    if cfg.reading_out is not None:
        files = export_runs(runs, cfg.reading_out, cfg.overwrite)
        console.print(f"wrote {', '.join(map(str, files))}; give readers only {files[0]}")
        return files
    assert cfg.reading_in is not None
    table, out = read_runs_labels(
        runs, cfg.reading_in, cfg.reading_key, cfg.reference, cfg.bootstrap, cfg.seed, cfg.overwrite
    )
    print_tables(fit_width(reading_table_rich(table)), console)
    console.print(f"wrote {out}")
    return table


def main(cfg: EvalConfig) -> EvalResult | ReadingTable | list[Path]:
    """``igcritic eval``: compare the methods of ``cfg`` (or, with ``run``, print a finished run's tables
    again, re-read with ``reading_in``), print the tables and write the outputs; the result, or with ``run``
    and ``reading_out`` alone the files written."""
    from rich.console import Console

    console = Console()
    runs = [cfg.run] if isinstance(cfg.run, str) else list(cfg.run or [])
    if len(runs) > 1:
        return read_several(cfg, runs, console)
    if cfg.reading_in is not None or runs:
        if not runs:
            raise EvalError("--reading_in needs --run RUN_DIR (the eval --out whose answers were read)")
        if cfg.reading_in is None and cfg.reading_out is not None:
            files = export_reading(runs[0], cfg.reading_out, cfg.overwrite)
            console.print(f"wrote {', '.join(map(str, files))}; give readers only {files[0]}")
            return files
        result = reread_run(
            runs[0], cfg.reading_in, cfg.overwrite, cfg.reading_key
        )  # no labels: tables again
    else:
        result = run_eval(cfg)
    result.print(console)
    if result.files:
        console.print(f"wrote {', '.join(p.name for p in result.files)} to {result.files[0].parent}")
    return result
