"""The two PNG figures of ``igcritic eval``, drawn from its ``records.jsonl`` and per-method summary.

- ``fig2_tradeoffs.png`` (like the paper's Fig. 2): average reward vs safety rate and latency per prompt vs
  safety rate, one labelled point per method (latency: mean, with a p50-p95 bar).
- ``fig3_distributions.png`` (like the paper's Fig. 3): per-method box plots of the reward and of the final
  cost of every response, each response drawn as a point, the budget as a dashed line on the cost panel.

Only matplotlib's object API with the Agg canvas is used (no pyplot, no global backend switch), so it is
safe in headless runs and threads. ``plot_all`` is called by :func:`igcritic.evaluate.run_eval`; it can
also redraw the figures of a finished run::

    python -c "from igcritic.plots import plot_all; plot_all('runs/eval/embedded/records.jsonl', \
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

from igcritic.evaluate import RECORD_COST, RECORD_METHOD, RECORD_REWARD, EvalError

FIG2_FILE = "fig2_tradeoffs.png"
FIG3_FILE = "fig3_distributions.png"
DPI = 120
MARKERS = "osD^vPX*<>"


def load_records(records: str | Path | Sequence[dict]) -> list[dict]:
    """Records as dicts, from a ``records.jsonl`` path or already in memory."""
    if isinstance(records, (str, Path)):
        path = Path(records)
        if not path.is_file():
            raise EvalError(f"records file {str(path)!r} does not exist; pass the records.jsonl of an eval run")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list(records)


def load_summary(summary: str | Path | Sequence[dict]) -> tuple[list[dict], float | None]:
    """Per-method summary rows and the budget (when known) from ``results.json``/``results.csv`` or memory."""
    if not isinstance(summary, (str, Path)):
        return [dict(s) for s in summary], None
    path = Path(summary)
    if not path.is_file():
        raise EvalError(f"summary file {str(path)!r} does not exist; pass the results.json or results.csv of an eval run")
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: _maybe_float(v) for k, v in r.items()} for r in rows], None
    data = json.loads(path.read_text())
    return list(data["summary"]), data.get("budget")


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


def plot_tradeoffs(summary: Sequence[dict], path: Path) -> Path:
    """Fig. 2-like: reward vs safety rate (left) and latency per prompt vs safety rate (right)."""
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax_r, ax_l = fig.subplots(1, 2)
    x = [100.0 * float(s["safety_rate"]) for s in summary]
    reward = [float(s["reward_mean"]) for s in summary]
    lat = [float(s["latency_mean"]) for s in summary]
    colors = _colors(len(summary))
    for ax, y in ((ax_r, reward), (ax_l, lat)):
        for i, (s, dy) in enumerate(zip(summary, _label_offsets(x, y))):
            ax.scatter(x[i], y[i], s=70, color=colors[i], marker=MARKERS[i % len(MARKERS)], zorder=3,
                       label=s["method"])
            ax.annotate(s["method"], (x[i], y[i]), textcoords="offset points", xytext=(7, dy), fontsize=8)
    for i, s in enumerate(summary):
        p50, p95 = float(s["latency_p50"]), float(s["latency_p95"])
        ax_l.vlines(x[i], min(p50, p95), max(p50, p95), color=colors[i], alpha=0.5, lw=3, zorder=2)
    ax_r.set(xlabel="safety rate (% of prompts with S_T <= d)", ylabel="average reward", title="Reward vs safety")
    ax_l.set(xlabel="safety rate (% of prompts with S_T <= d)", ylabel="latency per prompt (s)",
             title="Latency vs safety (mean; bar p50-p95)")
    for ax in (ax_r, ax_l):
        ax.set_xlim(-5, 115)
        ax.grid(alpha=0.3)
    ax_r.legend(loc="best", fontsize=7)
    return _save(fig, path)


def plot_distributions(records: Sequence[dict], methods: Sequence[str], budget: float | None, path: Path) -> Path:
    """Fig. 3-like: box plots of reward and final cost per method, every response as a jittered point."""
    fig = Figure(figsize=(max(8.0, 1.6 * len(methods) + 3), 7), layout="constrained")
    ax_r, ax_c = fig.subplots(2, 1, sharex=True)
    rng = np.random.default_rng(0)
    colors = _colors(len(methods))
    for ax, key, label in ((ax_r, RECORD_REWARD, "reward"), (ax_c, RECORD_COST, "final cost S_T")):
        data = [
            np.array([float(r[key]) for r in records if r[RECORD_METHOD] == m and math.isfinite(float(r[key]))])
            for m in methods
        ]
        pos = np.arange(1, len(methods) + 1)
        keep = [i for i, d in enumerate(data) if d.size]
        if keep:
            ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=0.5, showmeans=True, showfliers=False,
                       meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"})
        for i, (d, color) in enumerate(zip(data, colors)):
            ax.scatter(pos[i] + rng.uniform(-0.15, 0.15, d.size), d, s=12, color=color, alpha=0.7, zorder=3)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    if budget is not None and math.isfinite(budget):
        ax_c.axhline(budget, color="crimson", ls="--", lw=1, label=f"budget d = {budget:g}")
        ax_c.legend(loc="best", fontsize=8)
    ax_r.set_title("Reward and cost of every final response, per method")
    ax_c.set_xticks(np.arange(1, len(methods) + 1), list(methods), rotation=20, ha="right", fontsize=8)
    return _save(fig, path)


def plot_all(
    records: str | Path | Sequence[dict],
    summary: str | Path | Sequence[dict],
    out_dir: str | Path,
    budget: float | None = None,
) -> list[Path]:
    """Write both figures into ``out_dir`` and return their paths.

    Args:
        records: ``records.jsonl`` of an eval run, or its rows (each with the method name, recomputed cost
            and reward).
        summary: ``results.json``/``results.csv``, or the per-method summary rows (method order is kept).
        out_dir: folder for the PNG files (created if missing; existing figures are replaced).
        budget: the budget line of the cost panel; defaults to the one in ``results.json``.
    """
    rows = load_records(records)
    summ, saved_budget = load_summary(summary)
    if not summ:
        raise EvalError("the summary has no method; run igcritic eval with at least one method")
    budget = saved_budget if budget is None else budget
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [str(s["method"]) for s in summ]
    return [
        plot_tradeoffs(summ, out / FIG2_FILE),
        plot_distributions(rows, methods, budget, out / FIG3_FILE),
    ]
