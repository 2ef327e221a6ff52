"""The igcritic command: help lists every command; every shipped config parses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from igcritic.__main__ import COMMANDS, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd in out


def test_unknown_command_fails():
    assert main(["frobnicate"]) == 2


@pytest.mark.parametrize("cmd", ["collect", "inspect", "export", "generate", "eval"])
def test_each_command_has_help(cmd):
    res = subprocess.run(
        [sys.executable, "-m", "igcritic", cmd, "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-1500:]
    assert "usage" in res.stdout.lower()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("collect/*.yaml")), ids=lambda p: p.name)
def test_collect_configs_parse(path):
    from jsonargparse import ActionConfigFile, ArgumentParser

    from igcritic.collect import CollectConfig

    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(CollectConfig, nested_key=None)
    ns = parser.parse_args(["--config", str(path)])
    cfg = parser.instantiate(ns)
    assert cfg.out and cfg.rollouts_per_prompt >= 1
    assert yaml.safe_load(path.read_text())  # plain YAML too


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("fit/*.yaml")), ids=lambda p: p.name)
def test_fit_configs_parse(path):
    from igcritic.fit import cli_main

    with pytest.raises(SystemExit) as e:  # --print_config parses everything, then exits 0
        cli_main(["fit", "--config", str(path), "--print_config"])
    assert e.value.code in (0, None)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("eval/*.yaml")), ids=lambda p: p.name)
def test_eval_configs_parse(path):
    from jsonargparse import CLI

    from igcritic.evaluate import eval_main

    with pytest.raises(SystemExit) as e:
        CLI(eval_main, args=["--config", str(path), "--print_config"])
    assert e.value.code in (0, None)


def test_every_config_opens_with_its_launch_command():
    for path in CONFIGS.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first.startswith("#") and ("igcritic" in first or "torchrun" in first), path


def test_docstrings_cite_the_design_inside_the_repo():
    root = CONFIGS.parent
    sections = set(re.findall(r"^## (\d+)\.", (root / "docs" / "design.md").read_text(), re.M))
    for path in (root / "igcritic").rglob("*.py"):
        text = path.read_text()
        assert "DESIGN.md" not in text, f"{path} cites a design document users do not have"
        for cited in re.findall(r"docs/design\.md sections? (\d+)", text):
            assert cited in sections, f"{path} cites docs/design.md section {cited}, which does not exist"
