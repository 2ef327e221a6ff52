"""The benchmark scripts still run (speed itself is measured under bench/, never asserted here): every script
answers ``--help``, and ``bench_guard.py`` times a toy search end to end, exact mode included. A benchmark
nobody runs breaks unnoticed: ``bench_guard.py --exact`` once failed for a whole day."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
LIBRARY = {"bench_policy.py"}  # imported by the others, not a script


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=BENCH.parent
    )


@pytest.mark.subprocess
@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name not in LIBRARY))
def test_every_bench_script_answers_help(script):
    out = run(str(BENCH / script), "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


@pytest.mark.subprocess
@pytest.mark.embedded
def test_bench_guard_times_a_toy_search_in_both_modes():
    out = run(
        str(BENCH / "bench_guard.py"),
        *("--exact", "--n", "2", "--width", "4", "--d", "4", "--prompts", "1", "--repeats", "1"),
        *("--no_generate", "--threads", "1"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("plain sampling N x D", "guard, fully latent", "guard, exact", "ratio exact/fully latent"):
        assert row in out.stdout, out.stdout
