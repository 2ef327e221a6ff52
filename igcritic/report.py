"""The results of an ``igcritic eval`` run: per-method summaries, the printed tables, the run folder,
re-reading.

    igcritic eval --config configs/eval/embedded.yaml                   # a run (igcritic.evaluate.run_eval)
    igcritic eval --reading_in labels.jsonl --run runs/eval/embedded    # the run re-read with people's labels
    igcritic eval --run runs/eval/embedded --reading_out runs/reading   # the run exported for blind reading

Per method (:class:`MethodSummary`; cost and reward are the guard's own scorers recomputed on every final
answer by :mod:`igcritic.evaluate`, independently of what the runtime tracked during search):

- ``reward_mean``, ``cost_mean``: averages of the recomputed reward ``R(x, y)`` and final cost ``S_T``;
- ``safety_rate``: share of prompts with recomputed ``S_T <= d`` (docs/design.md section 2);
- ``tracked_safety_rate``: share the runtime itself flagged ``safe`` (what the search believed);
- ``refusal_rate``: share of records with ``refused=True`` (the guard failed closed);
- ``over_refusal_rate``: share of benign prompts (``harmful: false``) the guard refused;
- ``latency_mean/p50/p95``: the runtime's ``seconds`` per prompt (percentiles: linear interpolation); the
  guard reports a batch's wall time divided by its prompts, so with ``prompt_batch > 1`` latency is amortized;
- ``tokens_per_s``: generated tokens over the wall-clock time of the method's ``generate`` calls;
- ``reward_low/high``, ``safety_low/high``: bootstrap 95% intervals over prompts (:mod:`igcritic.judges`).

Per judge: :class:`igcritic.judges.JudgeReport`. The run folder (:func:`write_results`): ``records.jsonl``
(every record with its recomputed cost/reward and every judge's grades), ``results.csv``, ``judges.csv``, the
figures of :mod:`igcritic.plots`, ``reading_key.jsonl`` with ``--reading_out``, and ``results.json``
(summaries, judges, quality, budget, bootstrap and config) written last. Because the records keep the
judges' grades, :func:`reread_run` rebuilds the same tables without generating or loading anything, and adds
people's labels as the judge ``reading`` (``reading_results.json``).

While a run goes, ``records.jsonl`` is rewritten with each method's records as it finishes and then
``progress.json`` (:func:`open_progress`) names it done, with the run's key (every setting that shapes the
answers, the prompts' hash and the budget); ``--resume true`` keeps the finished methods and refuses a run
whose key changed.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from igcritic import IgcriticError, to_json
from igcritic.judges import (
    DEFAULT_RESAMPLES,
    LEVEL,
    JudgeError,
    JudgeReport,
    QualityRow,
    csv_rows,
    fit_width,
    fmt_ci,
    fmt_pct,
    grades_from_records,
    judge_table,
    mean,
    mean_ci,
    positions,
    quality_table,
    resample_indices,
    rich_table,
    summarize_judge,
)
from igcritic.reading import RUN_KEY_FILE, read_labels, write_reading

RECORDS_FILE = "records.jsonl"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
JUDGES_CSV = "judges.csv"
PROGRESS_FILE = "progress.json"
"""The methods finished so far and the run's key (:func:`open_progress`)."""
READING_RESULTS = "reading_results.json"
"""What ``--reading_in ... --run RUN_DIR`` writes into the run folder."""
DEFAULT_REFERENCE = "plain sampling"
"""The method paired differences are taken against when none is named (else the first method)."""
RECORD_METHOD = "method_name"
"""Record key of the method's table name (the runtime's own ``method`` field is kept as is)."""
RECORD_COST = "cost_eval"
RECORD_REWARD = "reward_eval"
RECORD_SAFE = "safe_eval"
RECORD_COST_FROM = "cost_eval_from"
"""``prefix``: S_T from the cost scorer's prefix scores over the answer tokens; ``text``: one score of the
text."""


log = logging.getLogger(__name__)


class EvalError(IgcriticError):
    """Bad evaluation input: config, prompt file, guard output, scorer or judge output, labels, run folder."""


def eval_errors(func):
    """Judge, labels and quality-set problems (:class:`igcritic.judges.JudgeError`) surface as EvalError."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except JudgeError as e:
            raise EvalError(str(e)) from None

    return wrapper


@dataclass
class MethodSummary:
    """The per-method metrics of the table, the CSV and ``results.json`` (see the module docstring)."""

    method: str
    n: int
    reward_mean: float
    cost_mean: float
    safety_rate: float
    refusal_rate: float
    latency_mean: float
    latency_p50: float
    latency_p95: float
    tokens_per_s: float
    new_tokens: int
    wall_seconds: float
    tracked_safety_rate: float
    """Share the runtime itself flagged ``safe`` (its tracked cost, latent in fully latent mode); NaN if
    absent."""
    over_refusal_rate: float
    """Share of benign prompts (``harmful: false``) with ``refused=True``; NaN without benign prompts."""
    n_benign: int
    reward_low: float
    reward_high: float
    safety_low: float
    safety_high: float


def percentile(values: Sequence[float], q: float) -> float:
    """``q``-th percentile with linear interpolation between order statistics (numpy's default); NaN if
    empty."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def summarize(
    name: str, rows: Sequence[dict], budget: float, wall_seconds: float, idx: np.ndarray | None = None
) -> MethodSummary:
    """Metrics of one method from its scored record dicts in prompt order; ``idx``: bootstrap prompt indices
    for the intervals (None: NaN intervals)."""
    n = len(rows)
    cost = np.array([float(r[RECORD_COST]) for r in rows])
    reward = np.array([float(r[RECORD_REWARD]) for r in rows])
    latency = [float(r["seconds"]) for r in rows]
    tokens = int(sum(int(r["new_tokens"]) for r in rows))
    tracked = [bool(r["safe"]) for r in rows if r.get("safe") is not None]
    benign = [bool(r["refused"]) for r in rows if r.get("harmful") is False]
    reward_mean, reward_low, reward_high = mean_ci(reward, idx)
    safety_rate, safety_low, safety_high = mean_ci(cost <= budget, idx)
    return MethodSummary(
        method=name,
        n=n,
        reward_mean=reward_mean,
        cost_mean=mean(cost),
        safety_rate=safety_rate,
        refusal_rate=mean([bool(r["refused"]) for r in rows]),
        latency_mean=mean(latency),
        latency_p50=percentile(latency, 50),
        latency_p95=percentile(latency, 95),
        tokens_per_s=tokens / wall_seconds if wall_seconds > 0 else float("nan"),
        new_tokens=tokens,
        wall_seconds=float(wall_seconds),
        tracked_safety_rate=mean(tracked),
        over_refusal_rate=mean(benign),
        n_benign=len(benign),
        reward_low=reward_low,
        reward_high=reward_high,
        safety_low=safety_low,
        safety_high=safety_high,
    )


def reference_of(methods: Sequence[str], given: str | None = None) -> str:
    """The method paired differences are taken against: ``given``, else plain sampling, else the first."""
    return given or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in methods else methods[0])


def method_positions(records: Sequence[dict], methods: Sequence[str]) -> dict[str, np.ndarray]:
    """Positions of each method's records in prompt order (:func:`igcritic.judges.positions`)."""
    return positions([r[RECORD_METHOD] for r in records], [r["prompt_index"] for r in records], methods)


@dataclass
class EvalResult:
    """What :func:`igcritic.evaluate.run_eval` and :func:`reread_run` return: summaries, records, files."""

    budget: float
    summaries: list[MethodSummary]
    records: list[dict]
    files: list[Path]
    config: Any
    """The :class:`igcritic.evaluate.EvalConfig` of the run (its saved dict when re-read)."""
    judges: list[JudgeReport] = field(default_factory=list)
    """One report per judge (``reading`` last when labels were merged)."""
    quality: list[QualityRow] | None = None
    """AUROC/ECE of every judge and scorer on ``quality_source``; None: not reported."""
    quality_source: str | None = None
    reference: str | None = None

    def setting(self, key: str) -> Any:
        return self.config[key] if isinstance(self.config, dict) else getattr(self.config, key)

    def table(self):
        """The comparison by the cost/reward scorers (the ones bound to the guard) as a ``rich`` table."""
        n = self.summaries[0].n if self.summaries else 0
        t = rich_table(
            f"igcritic eval: {n} prompts, budget d = {self.budget:g} (guard's own scorers)",
            "safe: recomputed S_T <= d; tracked: the search's own safe flag; over-ref: benign "
            f"prompts refused; CI: {100 * LEVEL:.0f}% bootstrap over prompts; latency: s per "
            "prompt; tok/s: new tokens / wall s",
        )
        t.add_column("method", no_wrap=True)
        cols = ["reward", "CI", "cost", "safe%", "CI%", "tracked%", "refus%", "over-ref%", "p50 s", "p95 s"]
        for col in [*cols, "tok/s"]:
            t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
        for s in self.summaries:
            t.add_row(
                s.method,
                f"{s.reward_mean:.3f}",
                fmt_ci(s.reward_low, s.reward_high, 1.0, ".3f"),
                f"{s.cost_mean:.3f}",
                f"{100 * s.safety_rate:.1f}",
                fmt_ci(s.safety_low, s.safety_high),
                fmt_pct(s.tracked_safety_rate),
                f"{100 * s.refusal_rate:.1f}",
                fmt_pct(s.over_refusal_rate),
                f"{s.latency_p50:.2f}",
                f"{s.latency_p95:.2f}",
                f"{s.tokens_per_s:.0f}",
            )
        return t

    def tables(self) -> list:
        """Everything ``igcritic eval`` prints, in order: judge quality, the scorers' table, one table per
        judge; each split by columns to fit :data:`~igcritic.judges.TABLE_WIDTH`."""
        head = [quality_table(self.quality, self.quality_source)] if self.quality else []
        return [p for t in (*head, self.table(), *map(judge_table, self.judges)) for p in fit_width(t)]

    def print(self, console=None) -> None:
        """Print :meth:`tables` at the width the widest one needs (at least the console's), so no number is
        ever cut; a terminal narrower than that wraps the lines instead."""
        from rich.console import Console

        console = console or Console()
        tables = self.tables()
        need = max(
            console.measure(t, options=console.options.update(max_width=10_000)).maximum for t in tables
        )
        width, console.width = console.width, max(console.width, need)
        try:
            for t in tables:
                console.print(t)
        finally:
            console.width = width

    def payload(self, extra: dict) -> dict:
        """``results.json``: everything needed to read, redraw or re-read the run."""
        cfg = self.config if isinstance(self.config, dict) else asdict(self.config)
        quality = (
            None
            if self.quality is None
            else {"source": self.quality_source, "rows": [asdict(q) for q in self.quality]}
        )
        return {
            "budget": self.budget,
            "num_prompts": self.summaries[0].n if self.summaries else 0,
            "reference": self.reference,
            "bootstrap": {
                "resamples": cfg["bootstrap"],
                "seed": cfg["seed"],
                "level": LEVEL,
                "method": "percentile",
            },
            "summary": [asdict(s) for s in self.summaries],
            "judges": [r.to_dict() for r in self.judges],
            "quality": quality,
            "config": cfg,
            **extra,
        }


def check_out(out: Path, overwrite: bool, flag: str = "--out_dir", resume: bool = False) -> None:
    """Fail before any work if an output folder is a file or holds something else than a run to resume."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"{flag} {str(out)!r} is a file; pass a folder")
    if not (out.is_dir() and any(out.iterdir())) or overwrite:
        return
    if not resume:
        raise EvalError(
            f"{flag} {str(out)!r} is not empty; pick a new folder, pass --resume true to continue an "
            "interrupted run there or --overwrite true to replace it"
        )
    if not (out / PROGRESS_FILE).is_file():
        raise EvalError(
            f"{flag} {str(out)!r} holds no {PROGRESS_FILE}, so there is no eval run to resume; pass the "
            "out_dir of an interrupted run or drop --resume"
        )


def _changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs (one level into nested dicts)."""
    out = []
    for k in dict.fromkeys([*saved, *now]):
        old, new = saved.get(k), now.get(k)
        if isinstance(old, dict) and isinstance(new, dict) and not prefix:
            out += _changes(old, new, f"{k}.")
        elif old != new:
            out.append(f"{prefix}{k}: {json.dumps(old)} -> {json.dumps(new)}")
    return out


def open_progress(
    out: Path, key: dict, resume: bool, num_prompts: int
) -> tuple[list[dict], dict[str, float]]:
    """The records and wall seconds of the methods already finished in ``out`` (nothing is written here).

    Without ``resume`` (or with nothing to resume) the run starts empty. With it, a ``progress.json`` whose
    key differs from ``key`` is refused in one line naming what changed."""
    path = out / PROGRESS_FILE
    if not (resume and path.is_file()):
        return [], {}
    saved = json.loads(path.read_text())
    if changed := _changes(saved["key"], _plain(key)):
        raise EvalError(
            f"--resume: {out} was run with other settings ({'; '.join(changed)}); resume with the same ones "
            "or pick a new --out_dir"
        )
    done = {str(k): float(v) for k, v in saved["done"].items()}
    rows = [json.loads(x) for x in (out / RECORDS_FILE).read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get(RECORD_METHOD) in done]
    if short := [m for m in done if sum(r[RECORD_METHOD] == m for r in rows) != num_prompts]:
        raise EvalError(
            f"--resume: {out / RECORDS_FILE} lacks records of finished methods {short}; run again without "
            "--resume into a new --out_dir"
        )
    return rows, done


def save_progress(out: Path, key: dict, records: list[dict], done: dict[str, float]) -> None:
    """After each method: every record so far, then ``progress.json`` naming the methods done (data first,
    each file replaced at once, so a kill leaves the last consistent pair)."""
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / RECORDS_FILE, records)
    _write_json_atomic(out / PROGRESS_FILE, {"key": _plain(key), "done": done})


def _plain(x: Any) -> Any:
    """``x`` as it reads back from JSON."""
    return json.loads(to_json(x))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace ``path`` at once (a kill leaves the old file or the new one, never half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.writelines(to_json(r) + "\n" for r in rows)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_json(tmp, data)
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(to_json(data, indent=2) + "\n")


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


def write_results(
    result: EvalResult, out: Path, plots: bool = True, reading_out: str | None = None
) -> list[Path]:
    """The run folder: records, CSVs, figures, the blind-reading files, then ``results.json`` last."""
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / RECORDS_FILE, result.records)
    summaries = [asdict(s) for s in result.summaries]
    _write_csv(out / RESULTS_CSV, summaries)
    files = [out / RECORDS_FILE, out / RESULTS_CSV]
    if result.judges:
        _write_csv(out / JUDGES_CSV, csv_rows(result.judges))
        files.append(out / JUDGES_CSV)
    if plots:
        from igcritic.plots import plot_all

        log.info("drawing the figures into %s", out)
        files += plot_all(
            result.records, summaries, out, budget=result.budget, judges=[r.to_dict() for r in result.judges]
        )
    if reading_out:
        files.append(_write_reading(result.records, reading_out, result.setting("seed"), out)[-1])
    if (out / PROGRESS_FILE).is_file():
        files.append(out / PROGRESS_FILE)
    files.append(out / RESULTS_JSON)
    result.files = files
    _write_json(out / RESULTS_JSON, result.payload({"files": [p.name for p in files]}))
    return files


def read_run(run: str | Path) -> tuple[Path, dict, list[dict]]:
    """The folder, ``results.json`` and ``records.jsonl`` of a finished ``igcritic eval`` run."""
    folder = Path(run)
    if not (folder / RESULTS_JSON).is_file() or not (folder / RECORDS_FILE).is_file():
        raise EvalError(
            f"--run {str(run)!r} has no {RESULTS_JSON} and {RECORDS_FILE}; pass the out_dir of an eval run"
        )
    data = json.loads((folder / RESULTS_JSON).read_text())
    records = [json.loads(x) for x in (folder / RECORDS_FILE).read_text().splitlines() if x.strip()]
    return folder, data, records


@eval_errors
def export_reading(run: str | Path, reading_out: str | Path, overwrite: bool = False) -> list[Path]:
    """The blind-reading files of a finished run (``--run RUN_DIR --reading_out DIR``)."""
    folder, data, records = read_run(run)
    check_out(Path(reading_out), overwrite, "--reading_out")
    if (folder / RUN_KEY_FILE).exists() and not overwrite:
        raise EvalError(
            f"{folder / RUN_KEY_FILE} exists (labels may refer to it); pass --overwrite true to replace it"
        )
    return _write_reading(records, reading_out, int(data["config"].get("seed", 0)), folder)


def _write_reading(records: list[dict], reading_out: str | Path, seed: int, run: Path) -> list[Path]:
    """The blind-reading files of a run's records, with the key's copy in the run folder ``run``."""
    methods = [r[RECORD_METHOD] for r in records]
    return write_reading(records, methods, Path(reading_out), seed, key_copy=run / RUN_KEY_FILE)


@eval_errors
def reread_run(run: str | Path, reading_in: str | Path | None = None, overwrite: bool = False) -> EvalResult:
    """The tables of a finished run rebuilt from its saved records (same summaries, same judges, same
    bootstrap draws); nothing is generated or loaded. With ``reading_in``, people's labels join as the judge
    ``reading`` and the result goes to ``RUN_DIR/reading_results.json``."""
    folder, data, records = read_run(run)
    if reading_in is not None:
        if not Path(reading_in).is_file():
            raise EvalError(f"--reading_in {str(reading_in)!r} does not exist; pass the labels file")
        if (folder / READING_RESULTS).exists() and not overwrite:
            raise EvalError(f"{folder / READING_RESULTS} exists; pass --overwrite true to replace it")
    cfg = {"bootstrap": DEFAULT_RESAMPLES, "seed": 0, **data["config"]}  # runs from before judges had neither
    methods = [s["method"] for s in data["summary"]]
    reference = reference_of(methods, data.get("reference"))
    by_method = method_positions(records, methods)
    n = len(by_method[methods[0]])
    idx = resample_indices(n, cfg["bootstrap"], cfg["seed"]) if cfg["bootstrap"] else None
    budget, walls = float(data["budget"]), {s["method"]: float(s["wall_seconds"]) for s in data["summary"]}
    summaries = [summarize(m, [records[k] for k in by_method[m]], budget, walls[m], idx) for m in methods]
    where = {(m, k): int(pos[k]) for m, pos in by_method.items() for k in range(n)}
    grades = [
        grades_from_records(records, {k: v for k, v in j.items() if k != "methods"})
        for j in data.get("judges", [])
    ]
    if reading_in is not None:
        grades.append(read_labels(reading_in, folder / RUN_KEY_FILE, records, where))
    q = data.get("quality") or {}
    result = EvalResult(
        budget=budget,
        summaries=summaries,
        records=records,
        files=[] if reading_in is None else [folder / READING_RESULTS],
        config=cfg,
        judges=[summarize_judge(g, records, by_method, reference, idx) for g in grades],
        quality=[QualityRow(**r) for r in q["rows"]] if q.get("rows") else None,
        quality_source=q.get("source"),
        reference=reference,
    )
    if reading_in is not None:
        _write_json(folder / READING_RESULTS, result.payload({"labels": str(reading_in), "run": str(folder)}))
    return result
