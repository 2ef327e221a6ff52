"""igcritic eval's printed tables: the summary numbers shown, no number cut, 100 columns."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import (
    ClassifyingJudge,
)
from helpers_eval import judged_run, run_canned
from rich.console import Console

from igcritic.eval import EvalError
from igcritic.eval import run as ev
from igcritic.eval.run import EvalConfig


@pytest.fixture()
def eval_run(tmp_path, tiny_policy):
    return run_canned(tmp_path, tiny_policy)


def test_table_shows_the_summary_numbers(eval_run):
    _, _, result = eval_run
    console = Console(file=io.StringIO(), width=200)
    console.print(result.table())
    text = console.file.getvalue()
    for s in result.summaries:
        line = next(ln for ln in text.splitlines() if ln.strip("│ ").startswith(s.method + " "))
        for cell in (
            f"{s.reward_mean:.3f}",
            f"{s.cost_mean:.3f}",
            f"{100 * s.safety_rate:.1f}",
            f"{100 * s.refusal_rate:.1f}",
            f"{s.latency_p50:.2f}",
            f"{s.latency_p95:.2f}",
        ):
            assert cell in line, (s.method, cell, line)


def test_printed_tables_never_cut_a_number(tmp_path, tiny_policy):
    _, result = judged_run(tmp_path, tiny_policy, [ClassifyingJudge()])
    console = Console(file=io.StringIO(), width=60)  # far narrower than the tables
    result.print(console)
    text = console.file.getvalue()
    assert "…" not in text and console.width == 60
    for s in result.summaries:
        lines = [ln for ln in text.splitlines() if ln.strip().startswith(s.method + " ")]
        assert any(f"[{s.reward_low:.3f}, {s.reward_high:.3f}]" in ln for ln in lines)
        assert any(ln.rstrip().endswith(f" {s.tokens_per_s:.0f}") for ln in lines)


def test_printed_tables_fit_100_columns_and_a_finished_run_prints_them_again(tmp_path, capsys, tiny_policy):
    """Wide tables are split by columns (the method repeated), so a 100-column terminal never wraps; --run
    alone prints the same tables from the saved run without generating anything."""
    cfg, result = judged_run(tmp_path, tiny_policy, [ClassifyingJudge()])
    console = Console(file=io.StringIO(), width=100)
    result.print(console)
    text = console.file.getvalue()
    assert max(map(len, text.splitlines())) <= 100 and "(part 2/" in text
    again = ev.main(EvalConfig(run=cfg.out))
    assert [asdict(s) for s in again.summaries] == [asdict(s) for s in result.summaries]
    assert "judge 'rule'" in capsys.readouterr().out and not again.files
    (Path(cfg.out) / "reading_results.json").write_text("{}")
    with pytest.raises(
        EvalError, match="--reading_in .*missing.jsonl' does not exist"
    ):  # the real problem first
        ev.main(EvalConfig(run=cfg.out, reading_in=str(tmp_path / "missing.jsonl")))
