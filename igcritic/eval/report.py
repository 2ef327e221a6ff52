"""The run folder of ``igcritic eval``: its results, its progress for ``--resume``, and re-reading it.

    igcritic eval --config configs/eval/embedded.yaml                   # a run (igcritic.eval.run)
    igcritic eval --reading_in labels.jsonl --run runs/eval/embedded    # the run re-read with people's labels
    igcritic eval --run runs/eval/embedded --reading_out runs/reading   # the run exported for blind reading
    igcritic eval --run A --run B --reading_out DIR                     # several runs as one blind set
    igcritic eval --run A --run B --reading_in DIR/labels.jsonl         # their reading table

The run folder (:func:`write_results`): ``records.jsonl`` (every record with its recomputed cost/reward and
every judge's grades, keys in :mod:`igcritic.eval`), ``results.csv`` (one
:class:`~igcritic.eval.stats.MethodSummary` per method), ``judges.csv``, the figures of
:mod:`igcritic.eval.plots`, ``reading_key.jsonl`` with ``--reading_out``, and ``results.json`` (summaries,
judges, quality, budget, bootstrap and config) written last. Because the records keep the judges' grades,
:func:`reread_run` rebuilds the same tables without generating or loading anything, and adds people's labels
as the judge ``reading`` (``reading_results.json``). Several runs on the same prompts are exported and read
together (:func:`export_runs`, :func:`read_runs_labels`) without writing into their folders.

While a run goes, ``records.jsonl`` is rewritten with each method's records as it finishes and then
``progress.json`` (:func:`open_progress`) names it done, with the run's key (every setting that shapes the
answers, the prompts' hash and the budget); ``--resume true`` keeps the finished methods and refuses a run
whose key changed.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from igcritic import to_json, write_atomic
from igcritic.eval import RECORD_METHOD, RECORD_PROMPT_INDEX, EvalError
from igcritic.eval.judges import JudgeReport, grades_from_records, summarize_judge
from igcritic.eval.quality import QualityRow
from igcritic.eval.reading import (
    KEY_FILE,
    RUN_KEY_FILE,
    ReadingTable,
    read_labels,
    reading_table,
    write_jsonl,
    write_reading,
)
from igcritic.eval.stats import (
    DEFAULT_RESAMPLES,
    LEVEL,
    MethodSummary,
    method_positions,
    reference_of,
    resample_indices,
    summarize,
)
from igcritic.eval.tables import fit_width, judge_table, method_table, print_tables, quality_table

RECORDS_FILE = "records.jsonl"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
JUDGES_CSV = "judges.csv"
PROGRESS_FILE = "progress.json"
"""The methods finished so far and the run's key (:func:`open_progress`)."""
READING_RESULTS = "reading_results.json"
"""What ``--reading_in ... --run RUN_DIR`` writes into the run folder."""
READING_TABLE = "reading_table.json"
"""What ``--reading_in ... --run A --run B`` writes beside the reading key."""


log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What :func:`igcritic.eval.run.run_eval` and :func:`reread_run` return: summaries, records, files."""

    budget: float
    summaries: list[MethodSummary]
    records: list[dict]
    files: list[Path]
    config: Any
    """The :class:`igcritic.eval.run.EvalConfig` of the run (its saved dict when re-read)."""
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
        return method_table(self.summaries, self.budget)

    def tables(self) -> list:
        """Everything ``igcritic eval`` prints, in order: judge quality, the scorers' table, one table per
        judge; each split by columns to fit :data:`~igcritic.eval.tables.TABLE_WIDTH`."""
        head = [quality_table(self.quality, self.quality_source)] if self.quality else []
        return [p for t in (*head, self.table(), *map(judge_table, self.judges)) for p in fit_width(t)]

    def print(self, console=None) -> None:
        """Print :meth:`tables` so that no number is ever cut (:func:`~igcritic.eval.tables.print_tables`)."""
        print_tables(self.tables(), console)

    def payload(self, extra: dict) -> dict:
        """``results.json``: everything needed to read, redraw or re-read the run."""
        cfg = self.config if isinstance(self.config, dict) else self.config.to_dict()
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


def check_out(out: Path, overwrite: bool, flag: str = "--out", resume: bool = False) -> None:
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
            "--out of an interrupted run or drop --resume"
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
            "or pick a new --out"
        )
    done = {str(k): float(v) for k, v in saved["done"].items()}
    rows = [json.loads(x) for x in (out / RECORDS_FILE).read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get(RECORD_METHOD) in done]
    if short := [m for m in done if sum(r[RECORD_METHOD] == m for r in rows) != num_prompts]:
        raise EvalError(
            f"--resume: {out / RECORDS_FILE} lacks records of finished methods {short}; run again without "
            "--resume into a new --out"
        )
    return rows, done


def save_progress(out: Path, key: dict, records: list[dict], done: dict[str, float]) -> None:
    """After each method: every record so far, then ``progress.json`` naming the methods done (data first,
    each file replaced at once, so a kill leaves the last consistent pair)."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / RECORDS_FILE, records)
    _write_json(out / PROGRESS_FILE, {"key": _plain(key), "done": done})


def _plain(x: Any) -> Any:
    """``x`` as it reads back from JSON."""
    return json.loads(to_json(x))


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, to_json(data, indent=2) + "\n")


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


def csv_rows(reports: Sequence[JudgeReport]) -> list[dict]:
    """``judges.csv``: one row per judge and method, class shares flattened into ``class_<label>`` columns."""
    out = []
    for rep in reports:
        for s in rep.methods:
            d = asdict(s)
            classes = d.pop("classes") or {}
            out.append({**d, **{f"class_{c}": v for c, v in classes.items()}})
    return out


def write_results(
    result: EvalResult, out: Path, plots: bool = True, reading_out: str | None = None
) -> list[Path]:
    """The run folder: records, CSVs, figures, the blind-reading files, then ``results.json`` last."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / RECORDS_FILE, result.records)
    summaries = [asdict(s) for s in result.summaries]
    _write_csv(out / RESULTS_CSV, summaries)
    files = [out / RECORDS_FILE, out / RESULTS_CSV]
    if result.judges:
        _write_csv(out / JUDGES_CSV, csv_rows(result.judges))
        files.append(out / JUDGES_CSV)
    if plots:
        from igcritic.eval.plots import plot_all

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
            f"--run {str(run)!r} has no {RESULTS_JSON} and {RECORDS_FILE}; pass an eval run's --out"
        )
    data = json.loads((folder / RESULTS_JSON).read_text())
    records = [json.loads(x) for x in (folder / RECORDS_FILE).read_text().splitlines() if x.strip()]
    return folder, data, records


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


def reread_run(
    run: str | Path,
    reading_in: str | Path | None = None,
    overwrite: bool = False,
    key: str | Path | None = None,
) -> EvalResult:
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
        grades.append(read_labels(reading_in, key or folder / RUN_KEY_FILE, records, where))
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


# ------------------------------------------------------------------------- several runs, one reading


def read_runs(runs: Sequence[str | Path]) -> tuple[list[dict], list[str], list[str], int]:
    """The records of several finished runs on the same prompts, as one list (copies), each record's run
    folder, the methods in table order and the first run's seed. A method name an earlier run already has
    becomes ``NAME (RUN)``. Runs whose prompts differ (text, harmful flag, count) are refused in one line."""
    records: list[dict] = []
    run_of: list[str] = []
    methods: list[str] = []
    first: tuple[str, list] | None = None
    seed = 0
    for run in runs:
        folder, data, recs = read_run(run)
        prompts = sorted({(int(r[RECORD_PROMPT_INDEX]), r["prompt"], r.get("harmful")) for r in recs})
        if first is None:
            first, seed = (str(run), prompts), int(data["config"].get("seed", 0))
        elif prompts != first[1]:
            other = [p for p in prompts if p not in first[1]]
            where = f"prompt {other[0][0]} differs" if other else f"{len(prompts)} vs {len(first[1])} prompts"
            raise EvalError(
                f"--run {str(run)!r} answered other prompts than --run {first[0]!r} ({where}); read together "
                "only runs of one prompt file"
            )
        names = {}
        for s in data["summary"]:
            m = s["method"]
            names[m] = m if m not in methods else f"{m} ({run})"
            methods.append(names[m])
        records += [{**r, RECORD_METHOD: names[r[RECORD_METHOD]]} for r in recs]
        run_of += [str(folder)] * len(recs)
    return records, run_of, methods, seed


def export_runs(runs: Sequence[str | Path], reading_out: str | Path, overwrite: bool = False) -> list[Path]:
    """Several finished runs as one blind set (``--run A --run B --reading_out DIR``): every distinct answer
    once, shuffled with the first run's seed; the key (with each row's run) only in ``DIR/key.jsonl``."""
    records, run_of, _, seed = read_runs(runs)
    check_out(Path(reading_out), overwrite, "--reading_out")
    methods = [r[RECORD_METHOD] for r in records]
    return write_reading(records, methods, Path(reading_out), seed, runs=run_of)


def read_runs_labels(
    runs: Sequence[str | Path],
    reading_in: str | Path,
    key: str | Path | None = None,
    reference: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[ReadingTable, Path]:
    """People's labels of the blind set of several runs (``--run A --run B --reading_in labels.jsonl``): the
    :func:`~igcritic.eval.reading.reading_table` over all their methods, written to ``reading_table.json``
    beside the key (``key``, else ``key.jsonl`` beside the labels file)."""
    records, run_of, methods, _ = read_runs(runs)
    labels = Path(reading_in)
    if not labels.is_file():
        raise EvalError(f"--reading_in {str(labels)!r} does not exist; pass the labels file")
    key_path = Path(key) if key is not None else labels.parent / KEY_FILE
    if not key_path.is_file():
        raise EvalError(
            f"no reading key {str(key_path)!r}; pass --reading_key DIR/{KEY_FILE} (written by --reading_out "
            "with these runs)"
        )
    if reference is not None and reference not in methods:
        raise EvalError(f"--reference {reference!r} is not a method of these runs; use one of {methods}")
    out = key_path.parent / READING_TABLE
    if out.exists() and not overwrite:
        raise EvalError(f"{out} exists; pass --overwrite true to replace it")
    by_method = method_positions(records, methods)
    n = len(by_method[methods[0]])
    where = {(m, k): int(pos[k]) for m, pos in by_method.items() for k in range(n)}
    grades = read_labels(labels, key_path, records, where)
    harmful = [records[by_method[methods[0]][k]].get("harmful") for k in range(n)]
    table = reading_table(grades, by_method, harmful, reference_of(methods, reference), resamples, seed)
    runs_read = list(dict.fromkeys(run_of))
    _write_json(out, {**table.to_dict(), "runs": runs_read, "labels": str(labels), "key": str(key_path)})
    return table, out
