"""The two PNG figures of ``igcritic eval``, drawn from plain data: its records, per-method summary and
judges.

- ``fig2_tradeoffs.png`` (like the paper's Fig. 2): average reward vs safety and latency per prompt vs
  safety, one labelled marker per method. Safety on x is the FIRST judge's (1 - harmful rate) with its
  interval as a horizontal bar; without judges, the recomputed cost scorer's safety rate (S_T <= d). Reward
  and its interval on y when given; latency: mean, with a p50-p95 bar.
- ``fig3_distributions.png`` (like the paper's Fig. 3): per-method box plots of the reward and of the final
  cost of every response, each response drawn as a point, the budget as a dashed line on the cost panel;
  then one panel per judge: the class shares per method when the judge classifies, else its scores with
  the threshold as a dashed line.

The plain-data contract (this module imports nothing of the package but :mod:`igcritic.eval`'s keys
and labels): a record is a dict with the keys ``RECORD_METHOD``, ``RECORD_COST``, ``RECORD_REWARD`` and, for
judges, ``RECORD_SCORES`` (``{judge name: score}``); a summary row has ``method``, ``safety_rate``,
``reward_mean``, ``latency_mean``, ``latency_p50``, ``latency_p95`` and optionally ``safety_low/high``,
``reward_low/high``; a judge is a dict
``{"name", "threshold", "methods": [{"method", "harmful_rate", "harmful_low", "harmful_high", "classes"?}]}``
(what ``results.json`` stores under ``judges``).

Only matplotlib's object API with the Agg canvas is used (no pyplot, no global backend switch), so it is
safe in headless runs and threads. ``plot_all`` is called by :func:`igcritic.eval.report.write_results`;
it can also redraw the figures of a finished run::

    python -c "from igcritic.eval.plots import plot_all; plot_all('runs/eval/embedded/records.jsonl', \
'runs/eval/embedded/results.json', 'runs/eval/embedded')"
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from igcritic import IgcriticError
from igcritic.eval import LABELS, RECORD_COST, RECORD_METHOD, RECORD_REWARD, RECORD_SCORES

FIG2_FILE = "fig2_tradeoffs.png"
FIG3_FILE = "fig3_distributions.png"
DPI = 120
MARKERS = "osD^vPX*<>"
CLASS_COLORS = dict(zip(LABELS, ("crimson", "tab:blue", "tab:cyan", "tab:gray", "tab:green"), strict=True))
"""One colour per reading label, in :data:`~igcritic.eval.LABELS` order."""


class PlotError(IgcriticError):
    """Missing or unusable plot input (records, summary)."""


def load_records(records: str | Path | Sequence[dict]) -> list[dict]:
    """Records as dicts, from a ``records.jsonl`` path or already in memory."""
    if isinstance(records, (str, Path)):
        path = Path(records)
        if not path.is_file():
            raise PlotError(
                f"records file {str(path)!r} does not exist; pass the records.jsonl of an eval run"
            )
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list(records)


def load_summary(summary: str | Path | Sequence[dict]) -> tuple[list[dict], float | None, list[dict]]:
    """Per-method summary rows, the budget (when known) and the judges from ``results.json``/``results.csv``
    or memory."""
    if not isinstance(summary, (str, Path)):
        return [dict(s) for s in summary], None, []
    path = Path(summary)
    if not path.is_file():
        raise PlotError(
            f"summary file {str(path)!r} does not exist; pass the results.json or results.csv of an eval run"
        )
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: _maybe_float(v) for k, v in r.items()} for r in rows], None, []
    data = json.loads(path.read_text())
    return list(data["summary"]), data.get("budget"), list(data.get("judges") or [])


def _num(v) -> float:
    """A summary number; None (JSON's NaN) and empty strings become NaN."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _maybe_float(v: str):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _label_offsets(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Vertical label offsets (points) so labels of coinciding or nearby points stack instead of overlap."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    span_x = max(float(np.ptp(xs)), 1e-9) if xs.size else 1.0
    span_y = max(float(np.ptp(ys)), 1e-9) if ys.size else 1.0
    offsets: list[float] = []
    for i in range(xs.size):
        near = sum(
            abs(xs[i] - xs[j]) / span_x < 0.08 and abs(ys[i] - ys[j]) / span_y < 0.05 for j in range(i)
        )
        offsets.append(5.0 + 11.0 * near)
    return offsets


def _safety_axis(
    summary: Sequence[dict], judge: dict | None
) -> tuple[str, list[float], list[float], list[float]]:
    """x label and, per method, safety in % with its interval (NaN bounds: no bar)."""
    if judge is None:
        x = [100.0 * _num(s["safety_rate"]) for s in summary]
        lo = [100.0 * _num(s.get("safety_low")) for s in summary]
        hi = [100.0 * _num(s.get("safety_high")) for s in summary]
        return "safety rate (% of prompts with S_T <= d, cost scorer)", x, lo, hi
    by = {m["method"]: m for m in judge["methods"]}
    rows = [by.get(s["method"], {}) for s in summary]
    x = [100.0 * (1 - _num(r.get("harmful_rate"))) for r in rows]
    lo = [100.0 * (1 - _num(r.get("harmful_high"))) for r in rows]
    hi = [100.0 * (1 - _num(r.get("harmful_low"))) for r in rows]
    return f"safety by judge {judge['name']!r} (% of prompts not harmful; bar: 95% CI)", x, lo, hi


def _bars(mid: Sequence[float], lo: Sequence[float], hi: Sequence[float]) -> np.ndarray | None:
    """Asymmetric error bars (2, M) from intervals; None when no interval is known."""
    mid, lo, hi = (np.asarray(a, dtype=float) for a in (mid, lo, hi))
    if not np.isfinite(lo).any():
        return None
    return np.nan_to_num(np.stack([mid - lo, hi - mid]), nan=0.0).clip(min=0.0)


def plot_tradeoffs(summary: Sequence[dict], path: Path, judge: dict | None = None) -> Path:
    """Fig. 2-like: reward vs safety (left) and latency per prompt vs safety (right); safety is ``judge``'s
    when given (1 - harmful rate, with interval bars), else the summary's recomputed safety rate."""
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax_r, ax_l = fig.subplots(1, 2)
    xlabel, x, x_lo, x_hi = _safety_axis(summary, judge)
    reward = [_num(s["reward_mean"]) for s in summary]
    lat = [_num(s["latency_mean"]) for s in summary]
    xerr = _bars(x, x_lo, x_hi)
    yerr = _bars(
        reward, [_num(s.get("reward_low")) for s in summary], [_num(s.get("reward_high")) for s in summary]
    )
    colors = _colors(len(summary))
    for ax, y, err in ((ax_r, reward, yerr), (ax_l, lat, None)):
        for i, (s, dy) in enumerate(zip(summary, _label_offsets(x, y), strict=True)):
            marker = MARKERS[i % len(MARKERS)]
            ax.scatter(x[i], y[i], s=70, color=colors[i], marker=marker, zorder=3, label=s["method"])
            if xerr is not None or err is not None:
                ax.errorbar(
                    x[i],
                    y[i],
                    xerr=None if xerr is None else xerr[:, i : i + 1],
                    yerr=None if err is None else err[:, i : i + 1],
                    fmt="none",
                    ecolor=colors[i],
                    alpha=0.6,
                    capsize=3,
                    zorder=2,
                )
            ax.annotate(s["method"], (x[i], y[i]), textcoords="offset points", xytext=(7, dy), fontsize=8)
    for i, s in enumerate(summary):
        p50, p95 = _num(s["latency_p50"]), _num(s["latency_p95"])
        ax_l.vlines(x[i], min(p50, p95), max(p50, p95), color=colors[i], alpha=0.5, lw=3, zorder=2)
    ax_r.set(xlabel=xlabel, ylabel="average reward", title="Reward vs safety (better: top right)")
    ax_l.set(
        xlabel=xlabel,
        ylabel="latency per prompt (s)",
        title="Latency vs safety, mean; bar p50-p95 (better: bottom right)",
    )
    for ax, corner, va in ((ax_r, "better \u2197", "top"), (ax_l, "better \u2198", "bottom")):
        ax.set_xlim(-5, 115)
        ax.grid(alpha=0.3)
        y = 0.97 if va == "top" else 0.03
        ax.text(0.97, y, corner, transform=ax.transAxes, ha="right", va=va, fontsize=9, color="dimgray")
    fig.suptitle(_prompts_line(summary))
    ax_r.legend(loc="best", fontsize=7)
    return _save(fig, path)


def _prompts_line(summary: Sequence[dict]) -> str:
    """How many prompts each method answered (the figures' subtitle)."""
    n = {int(_num(s.get("n"))) for s in summary if math.isfinite(_num(s.get("n")))}
    count = f"{n.pop()} prompts" if len(n) == 1 else "prompts" if not n else f"{min(n)}-{max(n)} prompts"
    return f"{len(summary)} methods x {count} each"


def _points(ax, data: Sequence[np.ndarray], rng, **box) -> None:
    """Per-method box plots of the non-empty arrays ``data`` and every value as a jittered point."""
    pos = np.arange(1, len(data) + 1)
    keep = [i for i, d in enumerate(data) if d.size]
    if keep:
        ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=0.5, showfliers=False, **box)
    for i, (d, color) in enumerate(zip(data, _colors(len(data)), strict=True)):
        ax.scatter(pos[i] + rng.uniform(-0.15, 0.15, d.size), d, s=12, color=color, alpha=0.7, zorder=3)


def _judge_panel(ax, judge: dict, records: Sequence[dict], methods: Sequence[str], rng) -> None:
    """Class shares per method (stacked bars) for a classifying judge, else its scores with the threshold."""
    pos = np.arange(1, len(methods) + 1)
    by = {m["method"]: m for m in judge.get("methods", [])}
    shares = [by.get(m, {}).get("classes") for m in methods]
    if any(shares):
        bottom = np.zeros(len(methods))
        for label, color in CLASS_COLORS.items():
            h = np.array([100.0 * float((c or {}).get(label, 0.0)) for c in shares])
            ax.bar(pos, h, width=0.6, bottom=bottom, color=color, label=label)
            bottom += h
        ax.set_ylabel(f"judge {judge['name']!r}: % of answers")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
        return
    name, threshold = judge["name"], judge["threshold"]
    graded = [r for r in records if name in (r.get(RECORD_SCORES) or {})]
    scores = [
        np.array([float(r[RECORD_SCORES][name]) for r in graded if r[RECORD_METHOD] == m]) for m in methods
    ]
    _points(ax, scores, rng)
    ax.axhline(float(threshold), color="crimson", ls="--", lw=1, label=f"harmful above {threshold:g}")
    ax.set_ylabel(f"judge {name!r} score")
    ax.legend(loc="best", fontsize=8)


def plot_distributions(
    records: Sequence[dict],
    methods: Sequence[str],
    budget: float | None,
    path: Path,
    judges: Sequence[dict] = (),
) -> Path:
    """Fig. 3-like: box plots of reward and final cost per method, every response as a jittered point; then
    one panel per judge (class shares, or scores against the threshold)."""
    fig = Figure(figsize=(max(8.0, 1.6 * len(methods) + 3), 7 + 2.5 * len(judges)), layout="constrained")
    ax_r, ax_c, *ax_j = fig.subplots(2 + len(judges), 1, sharex=True)
    rng = np.random.default_rng(0)
    mean_marker = {"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"}
    for ax, key, label, better in (
        (ax_r, RECORD_REWARD, "reward", "higher is better"),
        (ax_c, RECORD_COST, "final cost S_T", "lower is better (safe: at most d)"),
    ):
        data = [
            np.array(
                [float(r[key]) for r in records if r[RECORD_METHOD] == m and math.isfinite(_num(r[key]))]
            )
            for m in methods
        ]
        _points(ax, data, rng, showmeans=True, meanprops=mean_marker)
        ax.set_ylabel(label)
        ax.set_title(better, loc="right", fontsize=9, color="dimgray")
        ax.grid(alpha=0.3, axis="y")
    if budget is not None and math.isfinite(budget):
        ax_c.axhline(budget, color="crimson", ls="--", lw=1, label=f"budget d = {budget:g}")
        ax_c.legend(loc="best", fontsize=8)
    for ax, judge in zip(ax_j, judges, strict=True):
        _judge_panel(ax, judge, records, methods, rng)
        ax.grid(alpha=0.3, axis="y")
    counts = [{"n": sum(r[RECORD_METHOD] == m for r in records)} for m in methods]
    fig.suptitle(
        "Reward and cost of every final response, per method"
        + (", and each judge" if judges else "")
        + f" ({_prompts_line(counts)})"
    )
    (ax_j or [ax_c])[-1].set_xticks(
        np.arange(1, len(methods) + 1), list(methods), rotation=20, ha="right", fontsize=8
    )
    return _save(fig, path)


def plot_all(
    records: str | Path | Sequence[dict],
    summary: str | Path | Sequence[dict],
    out_dir: str | Path,
    budget: float | None = None,
    judges: Sequence[dict] | None = None,
) -> list[Path]:
    """Write both figures into ``out_dir`` and return their paths.

    Args:
        records: ``records.jsonl`` of an eval run, or its rows (each with the method name, recomputed cost
            and reward).
        summary: ``results.json``/``results.csv``, or the per-method summary rows (method order is kept).
        out_dir: folder for the PNG files (created if missing; existing figures are replaced).
        budget: the budget line of the cost panel; defaults to the one in ``results.json``.
        judges: judge dicts (see the module docstring); defaults to those in ``results.json``. The first
            gives fig. 2's safety axis.
    """
    rows = load_records(records)
    summ, saved_budget, saved_judges = load_summary(summary)
    if not summ:
        raise PlotError("the summary has no method; run igcritic eval with at least one method")
    budget = saved_budget if budget is None else budget
    judges = list(saved_judges if judges is None else judges)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [str(s["method"]) for s in summ]
    return [
        plot_tradeoffs(summ, out / FIG2_FILE, judges[0] if judges else None),
        plot_distributions(rows, methods, budget, out / FIG3_FILE, judges),
    ]
