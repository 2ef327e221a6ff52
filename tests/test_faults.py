"""The fault suite: what a new user's mistakes and accidents (a signal, a read-only folder, a truncated file,
a budget out of range, a stripped artifact) do to each command. Each case ends in ONE line saying what is
wrong and how to go on (exit 2, or 130/143 after a signal), never a traceback, a silent wrong result or
lost data. Subprocess cases (a real signal, a real exit code) carry the ``subprocess`` marker."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    CannedGuard,
    TextCost,
    TextReward,
    canned_guard,
    distinct_chars,
    make_tiny_policy,
    read_jsonl,
    tiny_critic,
    word_cost,
    write_prompts,
)
from helpers_store import wait_for_commit
from lightning.pytorch.callbacks import Callback

from igcritic.__main__ import main, parse_config
from igcritic.eval import RECORD_METHOD
from igcritic.eval import run as ev
from igcritic.eval.report import PROGRESS_FILE, RECORDS_FILE, RESULTS_JSON
from igcritic.guard import load_guard
from igcritic.search import SearchConfigError

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def unwritable(tmp_path: Path) -> Path:
    """A folder path nothing can be written under: a read-only folder, or for root (who ignores modes)
    one under /sys, which refuses new entries even to root."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("x")
    except OSError:
        return ro / "out"
    (ro / "probe").unlink()
    sys_path = Path("/sys/igcritic-fault-test/out")
    try:
        sys_path.parent.mkdir()
    except OSError:
        return sys_path
    pytest.skip("no unwritable folder on this machine")


def one_line_error(text: str) -> str:
    """The single non-empty line of ``text`` (stderr of a failed command); fails on a traceback."""
    lines = [x for x in text.splitlines() if x.strip() and not x.startswith(("INFO ", "WARNING "))]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------- eval: nothing finished is lost


@dataclass
class Stopping(CannedGuard):
    """The guard with canned answers, stopped (Ctrl-C, or a real signal to this process) when ``stop_at``
    methods ran."""

    stop_at: int | None = None
    signum: int | None = None
    methods: int = 0

    def generate(self, prompts, budget=None, **overrides):
        if self.methods == self.stop_at:
            if self.signum is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), self.signum)
        self.methods += 1
        return super().generate(prompts, budget, **overrides)


def stopping(stop_at: int | None = None, signum: int | None = None) -> Stopping:
    guard = canned_guard(make_tiny_policy(), kind=Stopping)
    guard.stop_at, guard.signum = stop_at, signum
    return guard


def eval_args(tmp_path: Path, *extra: str) -> list[str]:
    prompts = tmp_path / "p.jsonl"
    if not prompts.exists():
        write_prompts(prompts)
    return [
        "eval",
        "--critic",
        "unused",
        "--prompts.source",
        str(prompts),
        "--prompts.split",
        "heldout",
        "--out",
        str(tmp_path / "out"),
        "--quality_set",
        "null",
        "--plots",
        "false",
        "--bootstrap",
        "50",
        *extra,
    ]


def test_eval_interrupted_keeps_finished_methods_and_resumes(tmp_path, monkeypatch, capsys):
    methods = [m.name for m in ev.default_methods()]
    guard = stopping(stop_at=2)
    monkeypatch.setattr(ev, "_load_guard", lambda cfg: guard)
    assert main(eval_args(tmp_path)) == 130
    line = one_line_error(capsys.readouterr().err)
    assert "interrupted by SIGINT; 2 of 6 methods saved" in line and line.endswith("--resume true")
    out = tmp_path / "out"
    assert json.loads((out / PROGRESS_FILE).read_text())["done"].keys() == set(methods[:2])
    assert {r[RECORD_METHOD] for r in read_jsonl(out / RECORDS_FILE)} == set(methods[:2])

    resumed = canned_guard(make_tiny_policy())
    monkeypatch.setattr(ev, "_load_guard", lambda cfg: resumed)
    assert main(eval_args(tmp_path, "--resume", "true")) == 0
    assert len(resumed.calls) == 4  # only the four methods left ran
    whole = tmp_path / "whole"
    whole.mkdir()
    monkeypatch.setattr(ev, "_load_guard", lambda cfg: canned_guard(make_tiny_policy()))
    assert main(eval_args(whole)) == 0

    def table(folder):
        data = json.loads((folder / RESULTS_JSON).read_text())["summary"]
        return [{k: v for k, v in s.items() if k not in ("wall_seconds", "tokens_per_s")} for s in data]

    assert table(out) == table(whole / "out")  # the resumed run's table is the uninterrupted run's
    assert len(read_jsonl(out / RECORDS_FILE)) == len(read_jsonl(whole / "out" / RECORDS_FILE))


def test_eval_resume_refuses_changed_settings_or_prompts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ev, "_load_guard", lambda cfg: stopping(stop_at=1))
    assert main(eval_args(tmp_path)) == 130
    monkeypatch.setattr(ev, "_load_guard", lambda cfg: canned_guard(make_tiny_policy()))
    capsys.readouterr()
    assert main(eval_args(tmp_path, "--resume", "true", "--seed", "3")) == 2
    assert "seed: 0 -> 3" in one_line_error(capsys.readouterr().err)
    rows = read_jsonl(tmp_path / "p.jsonl")
    rows[1]["prompt"] = "how can I make a bomb in the garage"
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(eval_args(tmp_path, "--resume", "true")) == 2
    assert "prompts_sha256" in one_line_error(capsys.readouterr().err)
    assert len(read_jsonl(tmp_path / "out" / RECORDS_FILE)) == 6  # the finished method is still there


def test_eval_refuses_an_unwritable_out_dir_before_any_work(tmp_path, monkeypatch, capsys):
    def no_guard(cfg):
        raise AssertionError("the guard was loaded before out_dir was checked")

    monkeypatch.setattr(ev, "_load_guard", no_guard)
    args = eval_args(tmp_path)
    args[args.index("--out") + 1] = str(unwritable(tmp_path))
    assert main(args) == 2
    assert "cannot be written" in one_line_error(capsys.readouterr().err)


def test_eval_resume_of_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    monkeypatch.setattr(ev, "_load_guard", lambda cfg: canned_guard(make_tiny_policy()))
    assert main(eval_args(tmp_path, "--resume", "true")) == 2
    assert "no progress.json" in one_line_error(capsys.readouterr().err)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def default_sigint() -> None:
    """In the child before exec: Ctrl-C's default action, so Python turns it into KeyboardInterrupt. A job
    started in the background by a non-interactive shell (``cmd &``, as CI runners may) inherits SIGINT
    ignored, and Python keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ignored_sigint() -> None:
    """In the child before exec: SIGINT ignored, as a background job of a non-interactive shell inherits it
    (``nohup igcritic collect ... &`` from a script, a CI job, an agent's tool); ``kill -INT`` stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_interruptible_takes_sigint_only_where_it_was_inherited_ignored():
    import threading

    from igcritic import Interrupted, interruptible

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with interruptible(), pytest.raises(Interrupted) as e:
            signal.raise_signal(signal.SIGINT)
        assert e.value.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored on exit
        assert signal.getsignal(signal.SIGTERM) is before[1]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with interruptible():  # a normal Ctrl-C stays Python's own KeyboardInterrupt
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) is not before[1]
        seen = []

        def off_main():
            with interruptible():
                seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

        thread = threading.Thread(target=off_main)
        thread.start()
        thread.join()
        assert seen == [(signal.default_int_handler, before[1])]  # a no-op off the main thread
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


EVAL_SCRIPT = """
import sys
import time
sys.path.insert(0, {tests!r})
from test_faults import stopping
from lightning.pytorch.callbacks import Callback

from igcritic.eval import run as ev
from igcritic.__main__ import main, parse_config
from igcritic.guard import load_guard
ev._load_guard = lambda cfg: stopping(stop_at=1, signum={signum})
sys.exit(main({args!r}))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_eval_signal_exits_128_plus_signum_with_the_resume_command(tmp_path, signum):
    script = EVAL_SCRIPT.format(tests=str(TESTS), signum=int(signum), args=eval_args(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=default_sigint,
    )
    assert res.returncode == 128 + signum, res.stderr
    line = one_line_error(res.stderr)
    assert f"interrupted by {signum.name}; 1 of 6 methods saved" in line
    assert line.endswith("--resume true") and "igcritic eval --critic unused" in line
    assert len(read_jsonl(tmp_path / "out" / RECORDS_FILE)) == 6


# ---------------------------------------------------------------- fit: a pre-empted run says so and resumes


class SignalAtEpoch(Callback):
    """Sends this process ``$IGC_SIGNAL`` (SIGTERM unless set) when epoch ``$IGC_SIGNAL_EPOCH`` starts, as
    SLURM does to a pre-empted job (given to ``igcritic fit`` by class path)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == int(os.environ.get("IGC_SIGNAL_EPOCH", "-1")):
            os.kill(os.getpid(), signal.Signals[os.environ.get("IGC_SIGNAL", "SIGTERM")])


def fit_command(store: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "igcritic",
        "fit",
        "--config",
        str(ROOT / "configs" / "fit" / "embedded.yaml"),
        f"--data.stores=[{store}]",
        "--data.batch_size=128",
        "--model.width=16",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=4",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=test_faults.SignalAtEpoch",
        *extra,
    ]


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "signum, inherit",
    [(signal.SIGTERM, default_sigint), (signal.SIGINT, ignored_sigint)],
    ids=["SIGTERM", "SIGINT-inherited-ignored"],
)
def test_fit_signal_exits_128_plus_signum_and_resumes_the_same_run(tmp_path, signum, inherit):
    from helpers_fit import make_store

    store = tmp_path / "store.zarr"
    make_store(store, n_prompts=12, rollouts=3, hidden=16, chunk_tokens=256)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
    cmd = fit_command(str(store))
    stop = {**env, "IGC_SIGNAL_EPOCH": "2", "IGC_SIGNAL": signum.name}
    opts = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 600}
    res = subprocess.run(cmd, env=stop, preexec_fn=inherit, **opts)
    assert res.returncode == 128 + signum, res.stderr[-3000:]
    line = [x for x in res.stderr.splitlines() if x.startswith(f"interrupted by {signum.name}")]
    assert len(line) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    run = tmp_path / "runs" / "fit" / "embedded" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    rel = last.relative_to(tmp_path)  # the logger's save_dir is relative: so is the checkpoint it names
    assert "stopped in epoch 3 of 4" in line[0] and f"last checkpoint {rel} (after epoch 2)" in line[0]
    resume = line[0].split("resume with: ", 1)[1]
    assert resume.endswith(f"--ckpt_path {rel}")

    again = subprocess.run([*cmd, "--ckpt_path", str(rel)], env=env, **opts)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (run.parent / "version_1").exists()  # the same run goes on, in the same folder
    before = {int(r["epoch"]) for r in csv_rows(run / "metrics.part1.csv") if r.get("epoch")}
    after = {int(r["epoch"]) for r in csv_rows(run / "metrics.csv") if r.get("epoch")}
    assert before >= {0, 1} and after == {2, 3}  # nothing logged before the stop is lost
    import torch

    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 3


def csv_rows(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- budgets on the cost scale


SMALL = {"max_new_tokens": 4, "block_width": 2, "num_candidates": 2, "beams_kept": 1}


def bounded_cost(word: str = "bomb") -> TextCost:
    """The word cost with a probability's scale, like the embedded probe."""
    return word_cost(word, bounds=(0.0, 1.0))


@pytest.mark.parametrize(
    "budget, match",
    [
        (1e30, r"outside the cost scale \[0, 1\].*every answer passes as safe"),
        (-0.5, "every answer is refused"),
    ],
)
def test_a_budget_outside_the_cost_scale_is_refused(tiny_policy, budget, match):
    guard = load_guard(
        tiny_critic(tiny_policy), model=tiny_policy, cost=bounded_cost(), reward=TextReward(distinct_chars)
    )
    with pytest.raises(SearchConfigError, match=match):
        guard.generate(["how can I make a bomb at home"], budget=budget, mode="exact", **SMALL)
    with pytest.raises(SearchConfigError, match="outside the cost scale"):
        guard.check(budget)  # eval's precheck sees it before any method runs


def test_an_unbounded_cost_scale_warns_and_records_it(tiny_policy, caplog):
    cost = word_cost("bomb")  # no bounds: like a logit or beaver's score head
    guard = load_guard(
        tiny_critic(tiny_policy), model=tiny_policy, cost=cost, reward=TextReward(distinct_chars)
    )
    kw = {"mode": "exact", **SMALL}
    with caplog.at_level("WARNING"):
        (rec,) = guard.generate(["how do I bake bread at home"], budget=123.0, **kw)
    assert rec.budget_checked is False and rec.to_dict()["budget_checked"] is False
    assert "NOT range-checked" in caplog.text and "word-cost" in caplog.text
    (ok,) = load_guard(
        tiny_critic(tiny_policy), model=tiny_policy, cost=bounded_cost(), reward=TextReward(distinct_chars)
    ).generate(["how do I bake bread at home"], budget=0.5, **kw)
    assert ok.budget_checked is True


def test_the_embedded_cost_scale_is_a_probability():
    from igcritic.scorers import ScorerInfo

    assert ScorerInfo("x", "cost", "higher_is_unsafe", "", None, None).bounds is None  # unbounded by default
    from igcritic.scorers.embedded import load_embedded

    assert load_embedded("embedded", "cost").info.bounds == (0.0, 1.0)


def test_negative_numbers_parse_on_the_command_line():
    from igcritic.eval.run import EvalConfig
    from igcritic.guard import GenerateConfig

    assert parse_config(EvalConfig, ["--budget", "-1e9"]).budget == -1e9
    assert parse_config(EvalConfig, ["--budget", "-0.5", "--seed", "-3"]).seed == -3
    cfg = parse_config(GenerateConfig, ["x", "--search.budget", "-1e9", "--prompts.source", "-"])
    assert cfg.search.budget == -1e9 and cfg.prompts.source == "-"


# ---------------------------------------------------------------- one line, never a traceback (data intact)


def test_unwritable_outputs_fail_before_any_work(tmp_path, capsys):
    ro = unwritable(tmp_path)
    cases = [
        ["collect", "--out", str(ro / "store.zarr"), "--model", "never-loaded"],
        ["export", str(tmp_path / "never-read.ckpt"), "--out", str(ro / "critic")],
        ["generate", "never-loaded", "--prompts.texts", '["hi"]', "--out", str(ro / "r.jsonl")],
    ]
    for args in cases:
        assert main(args) == 2, args
        assert "cannot be written" in one_line_error(capsys.readouterr().err), args


def test_export_overwrite_onto_a_symlink_is_refused_and_the_target_kept(tmp_path, tiny_policy, capsys):
    target = tiny_critic(tiny_policy).save_pretrained(tmp_path / "critic") or tmp_path / "critic"
    before = sorted(p.name for p in target.iterdir())
    link = tmp_path / "link"
    link.symlink_to(target)
    assert main(["export", str(tmp_path / "never-read.ckpt"), "--out", str(link), "--overwrite", "true"]) == 2
    assert "is a symbolic link" in one_line_error(capsys.readouterr().err)
    assert link.is_symlink() and sorted(p.name for p in target.iterdir()) == before


def test_a_prompt_file_that_is_not_utf8_is_named_with_its_line(tmp_path, capsys):
    from igcritic.prompts import PromptError, PromptSource, load_prompts

    bad = tmp_path / "prompts.txt"
    bad.write_bytes("how do I bake bread\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(PromptError, match=r"not UTF-8 \(byte 0xe9 on line 2\)"):
        load_prompts(PromptSource(str(bad)))
    assert main(["generate", "never-loaded", "--prompts.source", str(bad)]) == 2
    assert "not UTF-8" in one_line_error(capsys.readouterr().err)


def damaged_store(tmp_path: Path, what: str, compression: str | None = None) -> Path:
    """A valid synthetic store with ``what`` cut to half its bytes: a ``zarr.json`` (root or shard) or the
    largest chunk file of an array."""
    from helpers_fit import make_store

    path = tmp_path / "store.zarr"
    make_store(path, n_prompts=6, rollouts=2, hidden=8, chunk_tokens=64, compression=compression)
    if what.endswith("zarr.json"):
        f = path / what
    else:
        arr = next(p for p in path.rglob(what) if p.is_dir())
        f = max(
            (p for p in arr.rglob("*") if p.is_file() and p.name != "zarr.json"),
            key=lambda p: p.stat().st_size,
        )
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return path


@pytest.mark.parametrize("what", ["zarr.json", "shards/rank-00000/zarr.json", "token_ids", "traj_offsets"])
def test_inspect_calls_a_damaged_store_invalid_in_one_line(tmp_path, capsys, what):
    from igcritic.store import StoreError, StoreReader

    store = damaged_store(tmp_path, what)
    assert main(["inspect", str(store)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    invalid = [x for x in out.out.splitlines() if x.startswith("invalid:")]
    assert invalid and all("restore" in x for x in invalid), out.out
    if what in ("traj_offsets", "zarr.json"):  # what fit reads first: the same one-line error
        with pytest.raises(StoreError, match="cannot be read|unreadable metadata"):
            StoreReader(str(store)).traj_offsets


@pytest.mark.parametrize("what", ["token_ids", "traj_offsets", "latents", "cost_prefix", "traj_len"])
def test_fit_refuses_a_store_with_a_truncated_chunk_in_one_line(tmp_path, capsys, monkeypatch, what):
    from igcritic.store import validate_store

    store = damaged_store(tmp_path, what)
    assert validate_store(store, read_rows=False)  # fit's check (no latents scan) sees it
    monkeypatch.setattr(sys, "argv", ["igcritic"])
    monkeypatch.chdir(tmp_path)
    args = [
        *("fit", "--config", str(ROOT / "configs" / "fit" / "embedded.yaml"), f"--data.stores=[{store}]"),
        *("--model.width=16", "--trainer.accelerator=cpu", "--trainer.max_epochs=1"),
    ]
    assert main(args) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"{what} rows" in line or f"{what} chunk" in line, line
    assert "restore the files" in line
    assert not (tmp_path / "runs").exists()  # refused before any training


def test_a_truncated_compressed_latents_chunk_is_a_store_error(tmp_path):
    """Compressed chunks have no one size to check without reading: the read itself names the rows."""
    from igcritic.store import StoreError, StoreReader, validate_store

    store = damaged_store(tmp_path, "latents", compression="zstd")
    assert validate_store(store, read_rows=False) == []  # no latents are read before training
    assert any("latents rows" in p and "cannot be read" in p for p in validate_store(store))
    r = StoreReader(store)
    with pytest.raises(StoreError, match=r"latents rows \d+-\d+ cannot be read.*restore the files"):
        r.read_latents(0, r.n_tok)


def test_collect_guard_with_a_malformed_critic_config(tmp_path):
    from igcritic.collect import CollectError, guard_identity

    (tmp_path / "critic_config.json").write_text('{"schema_version": 2, "hidd')
    with pytest.raises(CollectError, match="cannot be read.*igcritic export"):
        guard_identity(str(tmp_path))


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_validate_a_malformed_checkpoint_in_one_line(tmp_path, capsys, monkeypatch, content):
    monkeypatch.setattr(sys, "argv", ["igcritic"])
    ckpt = tmp_path / "bad.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    args = ["--config", str(ROOT / "configs" / "fit" / "embedded.yaml"), "--ckpt_path", str(ckpt)]
    assert main(["validate", *args]) == 2
    assert "--ckpt_path" in one_line_error(capsys.readouterr().err)


def test_a_truncated_checkpoint_is_no_checkpoint(tmp_path):
    import torch

    from igcritic.fit import FitError, check_checkpoint

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    check_checkpoint(str(good))
    half = tmp_path / "half.ckpt"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FitError, match="not a PyTorch checkpoint"):
        check_checkpoint(str(half))


def collect_args(tmp_path: Path, *extra: str) -> list[str]:
    """``igcritic collect`` arguments of a tiny Llama with tiny safe-rlhf cost and reward models (built once
    under ``tmp_path``) writing ``tmp_path/store.zarr`` on CPU."""
    from helpers import build_tiny_llama, build_tokenizer, make_beaver_folder

    if not (tmp_path / "model").exists():
        tok = build_tokenizer()
        build_tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
        tok.save_pretrained(tmp_path / "model")
        make_beaver_folder(tmp_path / "cost", tok, seed=1)
        make_beaver_folder(tmp_path / "reward", tok, seed=2, score_type="reward")
        write_prompts(tmp_path / "p.jsonl")
    return [
        *("collect", "--out", str(tmp_path / "store.zarr"), "--model", str(tmp_path / "model")),
        *("--prompts.source", str(tmp_path / "p.jsonl"), "--prompts.split", "null"),
        *("--sampling.max_new_tokens", "12", "--accelerator", "cpu"),
        *("--cost", f"beaver:{tmp_path / 'cost'}", "--reward", f"beaver:{tmp_path / 'reward'}"),
        *extra,
    ]


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "signum, inherit",
    [(signal.SIGTERM, default_sigint), (signal.SIGINT, default_sigint), (signal.SIGINT, ignored_sigint)],
    ids=["SIGTERM", "SIGINT", "SIGINT-inherited-ignored"],
)
def test_collect_signal_keeps_committed_batches_and_resumes(tmp_path, signum, inherit):
    from igcritic.store import StoreReader, validate_store

    store = tmp_path / "store.zarr"
    cmd = [
        sys.executable,
        "-m",
        "igcritic",
        *collect_args(tmp_path, "--rollouts_per_prompt", "8", "--batch_size", "1"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "collect.stderr"  # a file, not a pipe: nothing the child writes can block it
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env, preexec_fn=inherit)
    try:
        wait_for_commit(proc, store, log)  # the store's manifest, not a clock: a loaded machine starts slowly
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    proc.send_signal(signum)
    try:
        proc.wait(timeout=600)  # a hang guard, not a speed check
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"collect did not stop on {signum.name}; stderr ends: {log.read_text()[-3000:]}")
    err = log.read_text(errors="replace")
    assert proc.returncode == 128 + signum, f"exit status {proc.returncode}; stderr ends: {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted")]  # the rest: model-loading noise
    assert f"interrupted by {signum.name}" in line and "batches committed" in line, line
    assert line.endswith("--resume true")
    assert validate_store(store) == []
    kept = StoreReader(store).batches_done
    assert 0 < len(kept) < 64
    res = subprocess.run([*cmd, "--resume", "true"], capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    assert StoreReader(store).batches_done == set(range(64)) and validate_store(store) == []
    whole = tmp_path / "whole.zarr"  # the same command, never interrupted
    assert main([*cmd[3:], "--out", str(whole)]) == 0
    assert StoreReader(store).n_traj == StoreReader(whole).n_traj
    assert StoreReader(store).fingerprint() == StoreReader(whole).fingerprint()


COLLECT_SCRIPT = """
import os
import sys

from igcritic import collect
from igcritic.__main__ import main

def stop(*args, **kwargs):  # the store is created, no batch is committed yet
    assert os.path.isdir({store!r})
    os.kill(os.getpid(), {signum})
    raise AssertionError("the signal did not stop collect")

collect.label_batch = stop
sys.exit(main({args!r}))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_collect_signal_before_the_first_commit_says_to_start_again(tmp_path, signum):
    """A fresh store stopped before its first commit is removed: the hint is the same command, not --resume
    (which would find no store), and that command then writes the store."""
    from igcritic.store import validate_store

    store = tmp_path / "store.zarr"
    args = collect_args(tmp_path, "--rollouts_per_prompt", "1", "--batch_size", "4")
    script = COLLECT_SCRIPT.format(store=str(store), signum=int(signum), args=args)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = {"capture_output": True, "text": True, "env": env, "timeout": 300}
    res = subprocess.run([sys.executable, "-c", script], preexec_fn=default_sigint, **run)
    assert res.returncode == 128 + signum, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("interrupted")]
    nothing = f"no batch was committed to {store}, so nothing was kept there"
    assert line.startswith(f"interrupted by {signum.name}; {nothing}")
    assert "--resume" not in line and not store.exists()
    again = line.split("start again with the same command: ", 1)[1]
    assert shlex.split(again) == ["igcritic", *args]
    res = subprocess.run([sys.executable, "-m", "igcritic", *args], **run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert validate_store(store) == []


def test_collect_overwrite_stopped_before_its_first_commit_keeps_the_old_store(tmp_path, monkeypatch, capsys):
    from igcritic import collect
    from igcritic.store import StoreReader

    args = collect_args(tmp_path, "--rollouts_per_prompt", "1", "--batch_size", "4")
    assert main(args) == 0
    store = tmp_path / "store.zarr"
    old = StoreReader(store).attrs["config_hash"]

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect, "label_batch", stop)
    capsys.readouterr()
    again = [*args, "--seed", "5", "--overwrite", "true"]
    assert main(again) == 130
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("interrupted")]
    assert f"no batch was committed to {store}, so it holds the store it held before this run" in line
    assert line.endswith(shlex.join(["igcritic", *again])) and StoreReader(store).attrs["config_hash"] == old


# ---------------------------------------------------------------- a critic whose calibration was removed


def test_a_schema_2_critic_without_its_calibration_is_refused(tmp_path, tiny_policy, capsys):
    from igcritic.critic import CALIBRATION_KEY, CONFIG_NAME, Calibration, Critic, CriticError

    folder = tmp_path / "critic"
    critic = tiny_critic(tiny_policy)
    critic.set_calibration(Calibration("platt", a=0.5, b=0.2))
    critic.save_pretrained(folder)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta.pop(CALIBRATION_KEY)
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CriticError, match="no 'calibration' entry.*uncalibrated"):
        Critic.from_pretrained(folder)
    assert main(["generate", str(folder), "--prompts.texts", '["hi"]']) == 2
    assert "uncalibrated" in one_line_error(capsys.readouterr().err)
    # an uncalibrated critic on purpose (export --calibrate false) records the identity and loads
    critic.set_calibration(None)
    critic.save_pretrained(tmp_path / "raw")
    assert json.loads((tmp_path / "raw" / CONFIG_NAME).read_text())[CALIBRATION_KEY]["method"] == "identity"
    assert Critic.from_pretrained(tmp_path / "raw").calibration.is_identity
