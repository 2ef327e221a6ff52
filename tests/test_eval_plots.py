"""The eval figures: both PNGs are written, valid, non-trivial, from memory or from an eval run's files."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from igcritic.eval import plots
from igcritic.eval.plots import FIG2_FILE, FIG3_FILE, PlotError, plot_all

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
        rows = [
            {"method_name": name, "cost_eval": 0.1 * ((m + i) % 9), "reward_eval": 1.0 + m - 0.2 * i}
            for i in range(n)
        ]
        records += rows
        summary.append(
            {
                "method": name,
                "n": n,
                "reward_mean": 1.0 + m,
                "safety_rate": 0.25 * m,
                "latency_mean": 0.5 + m,
                "latency_p50": 0.4 + m,
                "latency_p95": 0.9 + m,
            }
        )
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


def test_figures_say_which_corner_is_good_and_how_many_prompts(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    records, summary = fake_run(n=6)
    plot_all(records, summary, tmp_path, budget=0.3)
    texts = [
        [fig.get_suptitle(), *(t for ax in fig.axes for t in (ax.get_title(), ax.get_title("right")))]
        + [t.get_text() for ax in fig.axes for t in ax.texts]
        for fig in drawn
    ]
    fig2, fig3 = (" | ".join(t) for t in texts)
    assert "4 methods x 6 prompts each" in fig2 and "4 methods x 6 prompts each" in fig3
    assert "better: top right" in fig2 and "better: bottom right" in fig2
    assert "higher is better" in fig3 and "lower is better" in fig3


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
    check_figures(
        plot_all(str(tmp_path / "records.jsonl"), str(tmp_path / "results.csv"), tmp_path), tmp_path
    )


def test_plot_all_bad_input(tmp_path):
    records, summary = fake_run()
    with pytest.raises(PlotError, match="records file .* does not exist"):
        plot_all(tmp_path / "nope.jsonl", summary, tmp_path)
    with pytest.raises(PlotError, match="summary file .* does not exist"):
        plot_all(records, tmp_path / "nope.json", tmp_path)
    with pytest.raises(PlotError, match="no method"):
        plot_all(records, [], tmp_path)
    assert not list(tmp_path.iterdir())


def fake_judges(records: list[dict]) -> list[dict]:
    """A scoring judge and a classifying one, as results.json stores them; scores go into the records."""
    for i, r in enumerate(records):
        r["judge_scores"] = {"probe": 0.1 * (i % 10), "reader": float(i % 3 == 0)}
    share = {
        "compliant-harmful": 0.25,
        "refusal": 0.25,
        "safe-redirect": 0.0,
        "incoherent": 0.25,
        "benign-helpful": 0.25,
    }
    return [
        {
            "name": "probe",
            "threshold": 0.5,
            "methods": [
                {
                    "method": m,
                    "harmful_rate": 0.2 * k,
                    "harmful_low": max(0.0, 0.2 * k - 0.1),
                    "harmful_high": min(1.0, 0.2 * k + 0.15),
                    "classes": None,
                }
                for k, m in enumerate(METHODS)
            ],
        },
        {
            "name": "reader",
            "threshold": 0.5,
            "methods": [
                {"method": m, "harmful_rate": 0.25, "harmful_low": 0.0, "harmful_high": 0.5, "classes": share}
                for m in METHODS
            ],
        },
    ]


def test_plot_all_with_judges_from_memory_and_from_results_json(tmp_path):
    records, summary = fake_run()
    judges = fake_judges(records)
    for s in summary:
        s.update(reward_low=s["reward_mean"] - 0.2, reward_high=s["reward_mean"] + 0.3)
    plain = plot_all(records, summary, tmp_path / "plain", budget=0.3)
    judged = plot_all(records, summary, tmp_path / "judged", budget=0.3, judges=judges)
    check_figures(judged, tmp_path / "judged")
    assert png_size(judged[1])[1] > png_size(plain[1])[1]  # one more panel per judge in fig. 3
    assert judged[0].read_bytes() != plain[0].read_bytes()  # fig. 2's x axis is the judge's safety now
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "results.json").write_text(json.dumps({"budget": 0.3, "summary": summary, "judges": judges}))
    again = plot_all(tmp_path / "records.jsonl", tmp_path / "results.json", tmp_path / "files")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in judged]


def test_safety_axis_is_the_first_judges_safety_with_its_interval():
    _, summary = fake_run()
    label, x, lo, hi = plots._safety_axis(summary, fake_judges(fake_run()[0])[0])
    assert "probe" in label
    assert x == pytest.approx([100.0, 80.0, 60.0, 40.0])  # 1 - harmful rate
    assert lo == pytest.approx([85.0, 65.0, 45.0, 25.0]) and hi == pytest.approx([100.0, 90.0, 70.0, 50.0])
    label, x, lo, _ = plots._safety_axis(summary, None)
    assert "S_T <= d" in label and x == pytest.approx([0.0, 25.0, 50.0, 50.0]) and all(v != v for v in lo)


@pytest.mark.subprocess
def test_plots_take_plain_data_and_import_only_the_record_keys():
    code = (
        "import sys, igcritic.eval.plots; print(sorted(m for m in sys.modules if m.startswith('igcritic')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == str(["igcritic", "igcritic.eval", "igcritic.eval.plots"])
