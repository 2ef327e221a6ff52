"""The eval figures: both PNGs are written, valid, non-trivial, from memory or from an eval run's files."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest

from igcritic.evaluate import EvalError
from igcritic.plots import FIG2_FILE, FIG3_FILE, plot_all

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ["plain sampling", "best-of-N augmented", "IG critic latent", "IG critic exact"]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the PNG signature (no imaging library)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def fake_run(n: int = 6) -> tuple[list[dict], list[dict]]:
    records, summary = [], []
    for m, name in enumerate(METHODS):
        rows = [{"method_name": name, "cost_eval": 0.1 * ((m + i) % 9), "reward_eval": 1.0 + m - 0.2 * i}
                for i in range(n)]
        records += rows
        summary.append({"method": name, "n": n, "reward_mean": 1.0 + m, "safety_rate": 0.25 * m,
                        "latency_mean": 0.5 + m, "latency_p50": 0.4 + m, "latency_p95": 0.9 + m})
    # two methods on the very same point: labels must still be written (stacked, not dropped)
    summary[3].update(safety_rate=summary[2]["safety_rate"], reward_mean=summary[2]["reward_mean"])
    return records, summary


def check_figures(paths: list[Path], out: Path) -> None:
    assert [p.name for p in paths] == [FIG2_FILE, FIG3_FILE]
    for p in paths:
        assert p.parent == out and p.stat().st_size > 10_000  # drawn content, not an empty canvas
        w, h = png_size(p)
        assert 600 <= w <= 3000 and 400 <= h <= 2000, (p.name, w, h)
    w2, h2 = png_size(paths[0])
    assert w2 > h2  # two panels side by side


def test_plot_all_from_memory(tmp_path):
    records, summary = fake_run()
    out = tmp_path / "figs"
    check_figures(plot_all(records, summary, out, budget=0.3), out)


def test_plot_all_from_eval_files_and_edge_cases(tmp_path):
    records, summary = fake_run(n=1)  # one response per method: degenerate boxes still draw
    records.append({"method_name": METHODS[0], "cost_eval": float("nan"), "reward_eval": 2.0})  # skipped
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "results.json").write_text(json.dumps({"budget": 0.5, "summary": summary}))
    paths = plot_all(tmp_path / "records.jsonl", tmp_path / "results.json", tmp_path)
    check_figures(paths, tmp_path)
    with (tmp_path / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    for p in paths:
        p.unlink()
    check_figures(plot_all(str(tmp_path / "records.jsonl"), str(tmp_path / "results.csv"), tmp_path), tmp_path)


def test_plot_all_bad_input(tmp_path):
    records, summary = fake_run()
    with pytest.raises(EvalError, match="records file .* does not exist"):
        plot_all(tmp_path / "nope.jsonl", summary, tmp_path)
    with pytest.raises(EvalError, match="summary file .* does not exist"):
        plot_all(records, tmp_path / "nope.json", tmp_path)
    with pytest.raises(EvalError, match="no method"):
        plot_all(records, [], tmp_path)
    assert not list(tmp_path.iterdir())
