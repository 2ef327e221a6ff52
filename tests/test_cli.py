"""The igcritic command: help lists every command; every shipped config parses."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from igcritic.__main__ import COMMANDS, main, parse_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd in out


def test_version(capsys):
    from igcritic import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"igcritic {__version__}"


def test_unknown_command_fails():
    assert main(["frobnicate"]) == 2


@pytest.mark.subprocess
@pytest.mark.parametrize("cmd", ["collect", "inspect", "export", "generate", "serve", "eval"])
def test_each_command_has_help(cmd):
    res = subprocess.run(
        [sys.executable, "-m", "igcritic", cmd, "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-1500:]
    assert "usage" in res.stdout.lower()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("collect/*.yaml")), ids=lambda p: p.name)
def test_collect_configs_parse(path):
    from igcritic.collect import CollectConfig

    cfg = parse_config(CollectConfig, ["--config", str(path)])
    assert isinstance(cfg, CollectConfig) and cfg.out and cfg.rollouts_per_prompt >= 1
    assert yaml.safe_load(path.read_text())  # plain YAML too


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("fit/*.yaml")), ids=lambda p: p.name)
def test_fit_configs_parse(path):
    from igcritic.fit import main as fit_main

    with pytest.raises(SystemExit) as e:  # --print_config parses everything, then exits 0
        fit_main(["fit", "--config", str(path), "--print_config"])
    assert e.value.code in (0, None)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("eval/*.yaml")), ids=lambda p: p.name)
def test_eval_configs_parse(path):
    from igcritic.eval.run import EvalConfig

    cfg = parse_config(EvalConfig, ["--config", str(path)])
    assert isinstance(cfg, EvalConfig) and cfg.methods and cfg.problems() == []


def test_the_cpu_search_sizes_are_one_file_every_eval_config_reads():
    from igcritic.eval.run import EvalConfig, default_search
    from igcritic.search import SearchOverrides

    cpu = parse_config(EvalConfig, ["--search", str(CONFIGS / "search" / "cpu.yaml")]).search
    assert cpu == SearchOverrides(num_candidates=8, block_width=16, max_new_tokens=48, prompt_batch=4)
    assert dataclasses.replace(default_search(), prompt_batch=4) == cpu  # the code's default, device-sized
    for name in ("embedded", "demo", "decision_rule"):
        assert "search: ../search/cpu.yaml" in (CONFIGS / "eval" / f"{name}.yaml").read_text()
        assert parse_config(EvalConfig, ["--config", str(CONFIGS / "eval" / f"{name}.yaml")]).search == cpu
    args = ["--search", str(CONFIGS / "search" / "cpu.yaml"), "--search.max_new_tokens", "32"]
    assert parse_config(EvalConfig, args).search == dataclasses.replace(cpu, max_new_tokens=32)  # the demo's


def test_every_command_is_a_typed_function_over_its_config():
    from igcritic.__main__ import LIGHTNING, config_type, resolve

    for name in COMMANDS:
        func = resolve(name)
        assert func.__name__ == "main", name  # one entry-point name
        if name not in LIGHTNING:
            assert config_type(func).__name__.endswith("Config"), name


def test_bad_values_fail_at_parse_time_and_stage_errors_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a typed group: the value is checked before anything runs
        main(["export", str(tmp_path / "x.ckpt"), "--search.num_candidates", "many"])
    assert e.value.code == 2 and "num_candidates" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "x.ckpt"), "--search.num_candidatez", "8"])
    err = capsys.readouterr().err  # the error first and alone: no usage dump, a "did you mean"
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "did you mean --search.num_candidates?" in err and "igcritic export --help" in err
    assert main(["export", str(tmp_path / "x.ckpt")]) == 2  # ExportError, an IgcriticError
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1


def test_config_typos_are_one_line_with_a_suggestion(tmp_path, capsys, monkeypatch):
    (tmp_path / "bad.yaml").write_text("budgte: 3\n")
    for args in (["eval", "--budgte", "3"], ["eval", "--config", str(tmp_path / "bad.yaml")]):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.splitlines()) == 1 and "did you mean --budget?" in err, err
    (tmp_path / "fit.yaml").write_text("trainer:\n  max_epoch: 3\n")
    monkeypatch.setattr(sys, "argv", ["igcritic"])
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "fit.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "did you mean --trainer.max_epochs?" in err[-1]
    assert "usage:" not in "\n".join(err) and "igcritic fit --help" in err[-1]


def test_eval_print_config_round_trips(tmp_path, capsys):
    from igcritic.eval.methods import MethodSpec, default_methods
    from igcritic.eval.run import EvalConfig

    with pytest.raises(SystemExit):
        main(["eval", "--print_config"])
    out = capsys.readouterr()
    assert "Unable to serialize" not in out.err and "plain sampling" in out.out
    (tmp_path / "printed.yaml").write_text(out.out)
    cfg = parse_config(EvalConfig, ["--config", str(tmp_path / "printed.yaml")])
    assert cfg.methods == default_methods() and all(isinstance(m, MethodSpec) for m in cfg.methods)
    with pytest.raises(SystemExit):
        main(["eval", "--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert capsys.readouterr().out == out.out
    assert parse_config(EvalConfig, []).methods == default_methods()


def test_bare_bool_flags_mean_true():
    from igcritic.eval.run import EvalConfig

    assert parse_config(EvalConfig, ["--overwrite"]).overwrite is True
    cfg = parse_config(EvalConfig, ["--overwrite", "--seed", "3", "--plots"])
    assert cfg.overwrite and cfg.plots and cfg.seed == 3
    assert parse_config(EvalConfig, ["--overwrite", "false"]).overwrite is False


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


# The pipeline's stages in the order data flows; shared foundations first. A module may import (at module
# level) only modules of earlier entries, so no stage reaches back up the pipeline. export comes after
# search: it writes the runtime's search_config.json through SearchConfig. Lazy imports inside functions
# (collect's round 2 loads the guard) are not module-level and are allowed.
STAGES = [
    "igcritic",
    "prompts",
    "policy",
    "scorers",
    "store",
    "decoding",
    "collect",
    "stream",
    "relabel",
    "data",
    "calibration",
    "critic",
    "fit",
    "baselines",
    "search",
    "export",
    "guard",
    "serve",
    "eval",
    "__main__",
]


UPWARD = {("collect", "search"): "round 2: --guard_search is the search's own SearchOverrides type"}
"""The one module-level import against the pipeline: round 2 of collect answers with the guard, so its config
holds the search's override type (and reads the guard's search defaults with SearchConfig)."""

EVAL_STAGES = ["eval", "stats", "judges", "quality", "reading", "tables", "plots", "report", "methods", "run"]
"""The order of the modules of ``igcritic/eval/`` (a run flows through them in this order)."""

SEARCH_STAGES = ["config", "checks", "context", "scoring", "decision", "record", "steering", "loop", "search"]
"""The order of the modules of ``igcritic/search/`` (the order a reader needs them); its ``__init__``
(``search``) comes last: it only re-exports the others' public names."""


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]  # a subpackage's modules share its stage


LAZY_EDGES = {
    ("collect", "guard"): "round 2 (--guard): rollouts come from the guarded runtime",
    ("collect", "critic"): "round 2: the guard's critic artifact, by its config file (read_config)",
}
"""The only imports that go back up the pipeline, each inside the function that needs it (so the earlier
stage still imports without the later one) and each here with its reason."""


def test_modules_import_only_earlier_stages():
    import ast

    package = Path(__file__).resolve().parents[1] / "igcritic"
    seen, wrong, lazy = set(), [], set()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        module = ".".join(p for p in rel.parts if p != "__init__")
        stage = _stage(module)
        seen.add(stage)
        assert stage in STAGES, f"{module} has no place in STAGES; add it where it runs in the pipeline"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names = (
                [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if name.split(".")[0] != "igcritic" or _stage(name) == stage:
                    continue
                if STAGES.index(_stage(name)) > STAGES.index(stage):
                    edge = (stage, _stage(name))
                    if edge in UPWARD:
                        continue
                    if id(node) in top or edge not in LAZY_EDGES:
                        wrong.append(f"{module} imports {name} (line {node.lineno})")
                    lazy.add(edge)
    assert not wrong, wrong
    assert lazy == set(LAZY_EDGES), f"LAZY_EDGES lists edges no module has: {set(LAZY_EDGES) - lazy}"
    assert seen == set(STAGES)


@pytest.mark.parametrize(("name", "order"), [("eval", EVAL_STAGES), ("search", SEARCH_STAGES)])
def test_package_modules_import_only_earlier_modules_of_the_package(name, order):
    import ast

    package = Path(__file__).resolve().parents[1] / "igcritic" / name
    seen, wrong = set(), []
    for path in sorted(package.glob("*.py")):
        stage = name if path.stem == "__init__" else path.stem
        seen.add(stage)
        assert stage in order, f"igcritic.{name}.{stage} has no place in {name.upper()}_STAGES; add it"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for module in modules:
                parts = module.split(".")
                if parts[:2] != ["igcritic", name]:
                    continue
                got = parts[2] if len(parts) > 2 else name
                if order.index(got) >= order.index(stage) and got != stage:
                    wrong.append(f"igcritic.{name}.{stage} imports {module} (line {node.lineno})")
    assert not wrong, wrong
    assert seen == set(order)


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    from igcritic import write_atomic

    path = tmp_path / "f.json"
    path.write_text("old")
    write_atomic(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]

    def broken(src, dst):  # the rename fails (a full disk, a read-only folder): the old file stays whole
        raise OSError("no space left")

    monkeypatch.setattr("igcritic.os.replace", broken)
    with pytest.raises(OSError, match="no space"):
        write_atomic(path, "newer")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
