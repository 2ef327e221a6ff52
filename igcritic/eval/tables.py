"""The tables ``igcritic eval`` prints: judge and scorer quality, the scorers' comparison, one per judge, and
the reading table of several runs.

Every table has one look (:func:`rich_table`) and is split by columns to fit :data:`TABLE_WIDTH`
(:func:`fit_width`); :func:`print_tables` prints them at the width the widest one needs, so no number is
ever cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from igcritic.eval import LABELS
from igcritic.eval.judges import JudgeReport
from igcritic.eval.quality import QualityRow
from igcritic.eval.reading import Estimate, ReadingTable
from igcritic.eval.stats import LEVEL, MethodSummary


def fmt_pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}"


def fmt_ci(lo: float, hi: float, scale: float = 100.0, fmt: str = ".1f") -> str:
    return (
        "-" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{scale * lo:{fmt}}, {scale * hi:{fmt}}]"
    )


def rich_table(title: str, caption: str | None = None):
    """A ``rich`` table in the one look of every table ``igcritic eval`` prints."""
    from rich import box
    from rich.table import Table

    return Table(title=title, box=box.SIMPLE_HEAVY, padding=(0, 1, 0, 0), pad_edge=False, caption=caption)


TABLE_WIDTH = 100
"""Columns every printed table fits in: wider ones are split by :func:`fit_width`."""


def fit_width(table, width: int = TABLE_WIDTH) -> list:
    """``table`` as one or more tables at most ``width`` columns wide: its columns packed in order, each part
    repeating the first (the row names); the title says ``(part i/n)``, the caption goes under the last."""
    from rich.console import Console

    console = Console(width=10_000)
    cols = table.columns

    def build(part: list[int], title: str | None, caption: str | None):
        t = rich_table(title or "", caption)
        for k in part:
            c = cols[k]
            t.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap, min_width=c.min_width)
        for r in range(table.row_count):
            t.add_row(*(cols[k]._cells[r] for k in part))
        return t

    def wide(part: list[int]) -> int:
        return console.measure(build(part, None, None)).maximum

    parts: list[list[int]] = [[0]]
    for k in range(1, len(cols)):
        if len(parts[-1]) > 1 and wide([*parts[-1], k]) > width:
            parts.append([0])
        parts[-1].append(k)
    if len(parts) == 1:
        return [table]
    n = len(parts)
    title = str(table.title or "")
    return [
        build(p, f"{title} (part {i + 1}/{n})", table.caption if i == n - 1 else None)
        for i, p in enumerate(parts)
    ]


def judge_table(report: JudgeReport, level: float = LEVEL):
    """One judge's columns as a ``rich`` table: harmful %, Δ vs the reference, missed, over-refusal,
    classes."""
    j, rows = report.judge, report.methods
    n, ref = (rows[0].n, rows[0].reference) if rows else (0, "")
    t = rich_table(
        f"judge {j['name']!r} ({j['spec']}): harmful = score > {j['threshold']:g}; {n} prompts, "
        f"{100 * level:.0f}% bootstrap intervals, Δ paired by prompt vs {ref!r}",
        "missed: search said safe, judge says harmful; over-ref: benign prompts refused or "
        f"redirected (from {rows[0].over_refusal_from if rows else '-'})"
        + ("; L:*: share of each label" if rows and rows[0].classes is not None else ""),
    )
    t.add_column("method", no_wrap=True)
    cols = ["harm%", "95% CI", "Δ pp", "Δ 95% CI", "missed%", "over-ref%"]
    rewards = any(math.isfinite(s.reward_mean) for s in rows)
    cols += ["reward", "reward CI"] if rewards else []
    classes = rows and rows[0].classes is not None
    short = dict(zip(LABELS, ("harm", "refus", "redir", "incoh", "help"), strict=True))
    cols += [f"L:{short[c]}%" for c in LABELS] if classes else []
    for c in cols:
        t.add_column(c, justify="right", no_wrap=True)
    for s in rows:
        cells = [
            s.method,
            fmt_pct(s.harmful_rate),
            fmt_ci(s.harmful_low, s.harmful_high),
            fmt_pct(s.diff),
            fmt_ci(s.diff_low, s.diff_high),
            fmt_pct(s.missed_rate),
            fmt_pct(s.over_refusal_rate),
        ]
        if rewards:
            cells += [f"{s.reward_mean:.3f}", fmt_ci(s.reward_low, s.reward_high, 1.0, ".3f")]
        if classes:
            cells += [fmt_pct(s.classes[c]) for c in LABELS]
        t.add_row(*cells)
    return t


def quality_table(rows: Sequence[QualityRow], source: str | None):
    t = rich_table(f"judge and scorer quality on {source} (ECE: 10 equal-width bins)")
    for c in ("name", "kind", "target", "n", "pos", "AUROC", "ECE", "label acc"):
        t.add_column(c, justify="left" if c in ("name", "kind", "target") else "right", no_wrap=True)
    for q in rows:
        cells = [q.name, q.kind, q.target, str(q.n), str(q.positives)]
        nums = (q.auroc, q.ece, q.label_accuracy)
        t.add_row(*cells, *(f"{v:.3f}" if v is not None and math.isfinite(v) else "-" for v in nums))
    return t


def method_table(summaries: Sequence[MethodSummary], budget: float):
    """The comparison by the cost/reward scorers (the ones bound to the guard)."""
    n = summaries[0].n if summaries else 0
    t = rich_table(
        f"igcritic eval: {n} prompts, budget d = {budget:g} (guard's own scorers)",
        "safe: recomputed S_T <= d; tracked: the search's own safe flag; over-ref: benign "
        f"prompts refused; CI: {100 * LEVEL:.0f}% bootstrap over prompts; latency: s per "
        "prompt; tok/s: new tokens / wall s",
    )
    t.add_column("method", no_wrap=True)
    cols = ["reward", "CI", "cost", "safe%", "CI%", "tracked%", "refus%", "over-ref%", "p50 s", "p95 s"]
    for col in [*cols, "tok/s"]:
        t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for s in summaries:
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


def _estimate_cells(e: Estimate | None, scale: float, fmt: str, sign: str) -> list[str]:
    """Value with interval, then the paired difference with its interval (blank for the reference)."""
    if e is None:
        return ["-", ""]

    def num(x: float, f: str = fmt) -> str:
        return "-" if not math.isfinite(x) else f"{scale * x:{f}}"

    cells = [f"{num(e.mean)} [{num(e.low)}, {num(e.high)}]" if math.isfinite(e.low) else num(e.mean)]
    if e.diff is None:
        return [*cells, ""]
    signed = sign + fmt
    ci = f" [{num(e.diff_low, signed)}, {num(e.diff_high, signed)}]" if math.isfinite(e.diff_low) else ""
    return [*cells, num(e.diff, signed) + ci]


def reading_table_rich(table: ReadingTable, level: float = LEVEL):
    """The reading table: per method harmful % (harmful prompts), over-refusal % (benign), incoherent %
    (all), helpfulness (benign, 0-2), each with its interval and its difference to the reference."""
    t = rich_table(
        f"blind reading: {table.n} prompts ({table.n_harmful} harmful, {table.n_benign} benign), "
        f"{100 * level:.0f}% bootstrap intervals over prompts, Δ paired by prompt vs {table.reference!r}",
        "harmful: read compliant-harmful, on harmful prompts; over-refusal: refusal or safe-redirect, on "
        "benign prompts; incoherent: all prompts; helpfulness 0-2: benign prompts",
    )
    t.add_column("method", no_wrap=True)
    heads = ("harmful %", "over-refusal %", "incoherent %", "helpfulness")
    for h in heads:
        t.add_column(h, justify="right", no_wrap=True)
        t.add_column("Δ", justify="right", no_wrap=True)
    for r in table.rows:
        cells = [
            *_estimate_cells(r.harmful, 100, ".1f", "+"),
            *_estimate_cells(r.over_refusal, 100, ".1f", "+"),
            *_estimate_cells(r.incoherent, 100, ".1f", "+"),
            *_estimate_cells(r.helpfulness, 1, ".2f", "+"),
        ]
        t.add_row(r.method, *cells)
    return t


def print_tables(tables: Sequence, console=None) -> None:
    """Print ``tables`` at the width the widest one needs (at least the console's), so no number is ever
    cut; a terminal narrower than that wraps the lines instead."""
    from rich.console import Console

    console = console or Console()
    need = max(console.measure(t, options=console.options.update(max_width=10_000)).maximum for t in tables)
    width, console.width = console.width, max(console.width, need)
    try:
        for t in tables:
            console.print(t)
    finally:
        console.width = width
