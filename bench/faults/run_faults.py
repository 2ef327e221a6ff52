"""Re-run the fault cases: what a new user's mistakes and accidents do to each command.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/faults/run_faults.py [--only SUBSTRING] [--out FILE.json]

Each case runs one ``igcritic`` command (in this process, through ``igcritic.__main__.main``; kills and
signals in a child process) on the tiny Llama and tiny safe-rlhf scorers of ``tests/helpers.py`` in a
scratch folder, then sorts the outcome into one of:

- ``clear``: a non-zero exit with ONE line saying what is wrong (``error: ...``, ``interrupted by ...``, or
  ``invalid: ...`` from inspect), and whatever was there before is intact;
- ``traceback``: an exception escaped the command, or a traceback was printed;
- ``silent wrong``: the command succeeded (or failed) where the case says it must not, or its result is wrong;
- ``data lost``: something the project did not write, or a finished result, is gone or changed;
- ``ok``: a case that must succeed did, and its result checks out.

The cases are the concrete faults of the fault rounds (bad flags and files, read-only and occupied
outputs, truncated stores, checkpoints and artifacts, changed inputs under ``--resume``, second writers,
signals and kills). It prints one line per case and the counts; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers_store import committed  # noqa: E402 - the tests' helpers, on the path just above

NOISE = ("INFO ", "WARNING ", "Loading weights", "Writing model shards", "reading prompts", "[transformers]")


@dataclass
class Run:
    rc: int
    out: str
    err: str
    exc: BaseException | None = None

    @property
    def traceback(self) -> bool:
        return self.exc is not None or "Traceback (most recent call last)" in self.out + self.err

    def lines(self) -> list[str]:
        """The lines a user reads as the outcome (stderr and inspect's invalid lines), noise dropped."""
        text = self.err + "\n" + "\n".join(x for x in self.out.splitlines() if x.startswith("invalid:"))
        return [x for x in text.splitlines() if x.strip() and not x.lstrip().startswith(NOISE)]


@dataclass
class Case:
    name: str
    run: Callable[[Path], tuple[Run, str | None]]
    """In a fresh folder: the command's Run and a problem found by the case's own checks (None: none).
    A problem starting with 'data lost' or 'silent wrong' is counted as such."""
    expect: str = "error"
    """``error``: must fail in one line; ``ok``: must succeed."""
    note: str = ""
    verdict: str = field(default="", init=False)
    detail: str = field(default="", init=False)


def cli(args: list[str], stdin: str | None = None) -> Run:
    """``igcritic ARGS`` in this process: exit status, stdout, stderr, and any exception that escaped."""
    from igcritic.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_stdin = sys.argv, sys.stdin
    sys.argv = ["igcritic"]
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    exc, rc = None, 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(args))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - a traceback the user would see
        import traceback

        exc, rc = e, 1
        err.write(traceback.format_exc())
    finally:
        sys.argv, sys.stdin = old_argv, old_stdin
    return Run(int(rc or 0), out.getvalue(), err.getvalue(), exc)


def child(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "igcritic", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kw,
    )


def judge(case: Case, run: Run, problem: str | None) -> tuple[str, str]:
    lines = run.lines()
    first = lines[0] if lines else ""
    if run.traceback:
        return "traceback", f"{type(run.exc).__name__ if run.exc else ''} {(lines or [''])[-1]}"[:200]
    if problem and problem.startswith("data lost"):
        return "data lost", problem
    if problem:
        return "silent wrong", problem
    if case.expect == "ok":
        return ("ok", "") if run.rc == 0 else ("silent wrong", f"failed: {first}"[:200])
    if run.rc == 0:
        return "silent wrong", "exit 0 where it must refuse"
    if len(lines) != 1:
        return "clear" if len(lines) == 2 and lines[0].startswith("interrupted") else "traceback", " | ".join(
            lines
        )[:300]
    return "clear", first[:300]


# ---------------------------------------------------------------- shared inputs (built once)


class World:
    """The tiny model, scorers, prompts, a collected store and a critic artifact, built once."""

    def __init__(self, root: Path):
        from helpers import PROMPTS, build_tiny_llama, build_tokenizer, make_beaver_folder, write_prompts

        self.root = root
        tok = build_tokenizer()
        self.model = root / "model"
        build_tiny_llama(len(tok)).save_pretrained(self.model)
        tok.save_pretrained(self.model)
        self.cost = make_beaver_folder(root / "cost", tok, seed=1)
        self.reward = make_beaver_folder(root / "reward", tok, seed=2, score_type="reward")
        self.prompts = write_prompts(root / "p.jsonl", PROMPTS)
        self.store = root / "store.zarr"
        r = cli(self.collect(self.store))
        assert r.rc == 0, r.err[-2000:]
        from helpers import tiny_critic

        from igcritic.policy import load_policy

        ident = load_policy(str(self.model)).identity.to_dict()
        self.identity = {**ident, "fingerprint": None}
        self.critic = root / "critic"
        tiny_critic(ident, budget=0.5).save_pretrained(self.critic)
        (self.critic / "search_config.json").write_text(
            json.dumps({"max_new_tokens": 4, "block_width": 2, "num_candidates": 2, "beams_kept": 1})
        )

    def collect(self, out: Path, *extra: str, prompts: Path | None = None) -> list[str]:
        return [
            *("collect", "--out", str(out), "--model", str(self.model)),
            *("--prompts.source", str(prompts or self.prompts), "--prompts.split", "null"),
            *("--rollouts_per_prompt", "2", "--batch_size", "4", "--sampling.max_new_tokens", "8"),
            *("--cost", f"beaver:{self.cost}", "--reward", f"beaver:{self.reward}", "--accelerator", "cpu"),
            *extra,
        ]

    def copy_store(self, d: Path) -> Path:
        shutil.copytree(self.store, d / "store.zarr")
        return d / "store.zarr"

    def copy_critic(self, d: Path) -> Path:
        shutil.copytree(self.critic, d / "critic")
        return d / "critic"

    def generate(self, critic: Path, *extra: str) -> list[str]:
        return [
            *("generate", str(critic), "--cost", f"beaver:{self.cost}", "--reward", f"beaver:{self.reward}"),
            *extra,
        ]

    def fit(self, *stores: Path, extra: tuple[str, ...] = ()) -> list[str]:
        return [
            *("fit", "--config", str(ROOT / "configs" / "fit" / "embedded.yaml")),
            f"--data.stores=[{','.join(map(str, stores))}]",
            *("--data.batch_size=16", "--model.width=16", "--trainer.accelerator=cpu"),
            *("--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"),
            *extra,
        ]


def tree(path: Path) -> dict:
    """Every file under ``path`` with its bytes (what 'intact' compares)."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def intact(path: Path, before: dict) -> str | None:
    return None if path.exists() and tree(path) == before else f"data lost: {path} changed or removed"


def cli_keeping(path: Path, args: list[str]) -> tuple[Run, str | None]:
    """Run ``args`` and say whether ``path`` (snapshotted just before) is still byte for byte the same."""
    before = tree(path)
    return cli(args), intact(path, before)


def read_only(d: Path) -> Path:
    """A folder nothing can be written under: a read-only folder, or for root (who ignores modes) a path
    under /sys, which refuses new entries even to root."""
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro if os.geteuid() != 0 else Path("/sys/igcritic-fault-run")


def cut(f: Path, keep: float = 0.5) -> None:
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])


def chunk(store: Path, array: str) -> Path:
    files = [p for p in (store / "shards" / "rank-00000" / array).rglob("*") if p.is_file()]
    return max((p for p in files if p.name != "zarr.json"), key=lambda p: p.stat().st_size)


def valid(store: Path) -> str | None:
    from igcritic.store import validate_store

    return None if not (p := validate_store(store)) else f"data lost: the store is invalid ({p[0]})"


# ---------------------------------------------------------------- the cases


def cases(w: World) -> list[Case]:
    c: list[Case] = []

    def add(name: str, expect: str = "error", note: str = ""):
        def wrap(fn):
            c.append(Case(name, fn, expect, note))
            return fn

        return wrap

    def plain(name: str, args: Callable[[Path], list[str]], expect: str = "error", stdin: str | None = None):
        add(name, expect)(lambda d: (cli(args(d), stdin), None))

    # collect: flags and prompt sources
    plain("collect: --rollouts_per_prompt 0", lambda d: w.collect(d / "s", "--rollouts_per_prompt", "0"))
    plain("collect: --batch_size 0", lambda d: w.collect(d / "s", "--batch_size", "0"))
    plain(
        "collect: --sampling.max_new_tokens 0", lambda d: w.collect(d / "s", "--sampling.max_new_tokens", "0")
    )
    plain(
        "collect: --resume and --overwrite",
        lambda d: w.collect(d / "s", "--resume", "true", "--overwrite", "true"),
    )
    plain("collect: --budget nan", lambda d: w.collect(d / "s", "--budget", "nan"))
    plain("collect: misspelt flag", lambda d: w.collect(d / "s", "--rollout_per_prompt", "2"))
    plain("collect: --batch_size abc", lambda d: w.collect(d / "s", "--batch_size", "abc"))
    plain("collect: missing model folder", lambda d: w.collect(d / "s", "--model", str(d / "nope")))
    plain("collect: --layer 99", lambda d: w.collect(d / "s", "--layer", "99"))
    plain("collect: --norm post at layer 1", lambda d: w.collect(d / "s", "--layer", "1"))
    plain("collect: --norm bogus", lambda d: w.collect(d / "s", "--norm", "mid"))
    plain("collect: --extra_layers [99]", lambda d: w.collect(d / "s", "--extra_layers", "[99]"))
    plain("collect: --extra_layers [1,1]", lambda d: w.collect(d / "s", "--extra_layers", "[1,1]"))
    plain("collect: --dtype bogus", lambda d: w.collect(d / "s", "--dtype", "float13"))
    plain("collect: --cost bogus spec", lambda d: w.collect(d / "s", "--cost", "nonsense:x"))
    plain("collect: --cost beaver:missing", lambda d: w.collect(d / "s", "--cost", f"beaver:{d / 'nope'}"))
    plain("collect: --reward a non-model folder", lambda d: w.collect(d / "s", "--reward", f"beaver:{d}"))
    plain("collect: --guard without critic_config", lambda d: w.collect(d / "s", "--guard", str(d)))
    plain("collect: --sampling.temperature -1", lambda d: w.collect(d / "s", "--sampling.temperature", "-1"))
    plain("collect: --sampling.top_p 2", lambda d: w.collect(d / "s", "--sampling.top_p", "2"))
    plain("collect: --chunk_tokens 0", lambda d: w.collect(d / "s", "--chunk_tokens", "0"))
    plain(
        "collect: --stride 0 (beaver is causal: unused)", lambda d: w.collect(d / "s", "--stride", "0"), "ok"
    )
    plain("collect: --accelerator gpu on a CPU machine", lambda d: w.collect(d / "s", "--accelerator", "gpu"))
    plain("collect: --accelerator tpu", lambda d: w.collect(d / "s", "--accelerator", "tpu"))
    plain("collect: --model ./missing (relative folder)", lambda d: w.collect(d / "s", "--model", "./nope"))
    plain("collect: --prompts.limit 0", lambda d: w.collect(d / "s", "--prompts.limit", "0"))
    plain("collect: --prompts.texts []", lambda d: w.collect(d / "s", "--prompts.texts", "[]"))
    plain("collect: --prompts.texts [1]", lambda d: w.collect(d / "s", "--prompts.texts", "[1]"))
    plain("collect: --prompts.texts ['  ']", lambda d: w.collect(d / "s", "--prompts.texts", '["  "]'))
    plain("collect: prompt file missing", lambda d: w.collect(d / "s", prompts=d / "none.jsonl"))
    plain("collect: --prompts.split no match", lambda d: w.collect(d / "s", "--prompts.split", "dev"))
    plain(
        "collect: --prompts.source hf:missing folder",
        lambda d: w.collect(d / "s", "--prompts.source", f"hf:{d}/x"),
    )

    def bad_file(name: str, suffix: str, content: bytes):
        def args(d: Path) -> list[str]:
            (d / f"p{suffix}").write_bytes(content)
            return w.collect(d / "s", prompts=d / f"p{suffix}")

        plain(f"collect: {name}", args)

    bad_file("empty prompt file", ".jsonl", b"")
    bad_file("only blank lines", ".txt", b"\n\n  \n")
    bad_file("JSONL not JSON on line 2", ".jsonl", b'{"prompt": "a"}\n{"prompt": \n')
    bad_file("JSONL without the prompt field", ".jsonl", b'{"text": "a"}\n')
    bad_file("JSONL prompt not a string", ".jsonl", b'{"prompt": 3}\n')
    bad_file("JSONL both prompt and messages", ".jsonl", b'{"prompt": "a", "messages": []}\n')
    bad_file(
        "JSONL messages not ending with user",
        ".jsonl",
        b'{"messages": [{"role": "assistant", "content": "x"}]}\n',
    )
    bad_file("CSV without the column", ".csv", b"text\na\n")
    bad_file("CSV empty cell", ".csv", b'prompt\na\n""\n')
    bad_file("non-UTF-8 text file", ".txt", "caf\xe9\n".encode("latin-1"))
    bad_file("a .parquet prompt file", ".parquet", b"PAR1")
    bad_file("an empty conversation on a text line", ".txt", b'hi\n[{"role": "user", "content": ""}]\n')
    bad_file("a prompt longer than the context (line 3)", ".txt", b"hi\nthere\n" + b"bread " * 400 + b"\n")

    # collect: outputs
    @add("collect: --out under a read-only folder")
    def _(d):
        return cli(w.collect(read_only(d) / "s")), None

    @add("collect: --out is an existing store (no flag)")
    def _(d):
        s = w.copy_store(d)
        return cli_keeping(s, w.collect(s))

    @add("collect: --overwrite onto a folder of the user's")
    def _(d):
        (d / "mine").mkdir()
        (d / "mine" / "notes.txt").write_text("mine")
        return cli_keeping(d / "mine", w.collect(d / "mine", "--overwrite", "true"))

    @add("collect: --overwrite onto a folder holding only shards/ and a user file")
    def _(d):
        (d / "mine" / "shards").mkdir(parents=True)
        (d / "mine" / "shards" / "notes.txt").write_text("mine")
        return cli_keeping(d / "mine", w.collect(d / "mine", "--overwrite", "true"))

    @add("collect: --overwrite onto a file")
    def _(d):
        (d / "f").write_text("mine")
        return cli(w.collect(d / "f", "--overwrite", "true")), intact(d / "f", {"": b"mine"})

    @add("collect: --overwrite onto a symlink to a store replaces the store behind it", expect="ok")
    def _(d):
        from igcritic.store import StoreReader

        s = w.copy_store(d)
        (d / "link").symlink_to(s)
        r = cli(w.collect(d / "link", "--overwrite", "true", "--seed", "9"))
        ok = (d / "link").is_symlink() and StoreReader(s).attrs["seed"] == 9
        return r, valid(s) or (
            None if r.rc or ok else "silent wrong: the link or its store is not the new one"
        )

    @add("collect: --overwrite with a too-long prompt late in the file keeps the old store")
    def _(d):
        s = w.copy_store(d)
        before = tree(s)
        p = d / "p.txt"
        p.write_text("hi\nthere\n" + "bread " * 400 + "\n")
        return cli(w.collect(s, "--overwrite", "true", prompts=p)), intact(s, before)

    @add("collect: --overwrite replaces a store", expect="ok")
    def _(d):
        s = w.copy_store(d)
        r = cli(w.collect(s, "--overwrite", "true", "--seed", "9"))
        from igcritic.store import StoreReader

        return r, None if r.rc or StoreReader(s).attrs["seed"] == 9 else "silent wrong: the old store stayed"

    # collect: resume
    @add("collect: --resume of a finished store (nothing to do)", expect="ok")
    def _(d):
        s = w.copy_store(d)
        before = tree(s)
        r = cli(w.collect(s, "--resume", "true"))
        return r, valid(s) or (
            None if tree(s) == before else "silent wrong: a finished store changed on resume"
        )

    @add("collect: --resume with a changed seed")
    def _(d):
        s = w.copy_store(d)
        return cli_keeping(s, w.collect(s, "--resume", "true", "--seed", "7"))

    @add("collect: --resume with an edited prompt file")
    def _(d):
        s = w.copy_store(d)
        before = tree(s)
        rows = [json.loads(x) for x in w.prompts.read_text().splitlines()]
        rows[3]["prompt"] = "how do I grow tomatoes"
        (d / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return cli(w.collect(s, "--resume", "true", prompts=d / "p.jsonl")), intact(s, before)

    @add("collect: --resume with changed policy weights (one MLP value)")
    def _(d):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        s = w.copy_store(d)
        before = tree(s)
        m = AutoModelForCausalLM.from_pretrained(w.model)
        with __import__("torch").no_grad():
            m.model.layers[0].mlp.up_proj.weight[-1, -1] += 0.5
        m.save_pretrained(d / "model")
        AutoTokenizer.from_pretrained(w.model).save_pretrained(d / "model")
        return cli(w.collect(s, "--resume", "true", "--model", str(d / "model"))), intact(s, before)

    @add("collect: --resume of no store")
    def _(d):
        return cli(w.collect(d / "none.zarr", "--resume", "true")), None

    @add("collect: a second writer while another process writes the store")
    def _(d):
        s = w.copy_store(d)
        hold = f"from igcritic.store.lock import WriterLock; import time; l = WriterLock({str(s)!r}, 0); "
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        holder = subprocess.Popen(
            [sys.executable, "-c", hold + "print('held', flush=True); time.sleep(600)"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            holder.stdout.readline()
            before = tree(s)  # with the holder's lock file
            return cli(w.collect(s, "--resume", "true")), intact(s, before)
        finally:
            holder.kill()
            holder.wait()

    # collect: signals and kills (child processes)
    def signal_case(name: str, signum: int, after_commit: bool):
        @add(name)
        def _(d):
            from igcritic.store import StoreReader

            s = d / "store.zarr"
            args = w.collect(s, "--rollouts_per_prompt", "8", "--batch_size", "1")
            proc = child(args)
            deadline = time.time() + 300
            while proc.poll() is None and time.time() < deadline:
                if (s / "zarr.json").exists() and (not after_commit or committed(s)):
                    break
                time.sleep(0.02)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=300)
            r = Run(proc.returncode if proc.returncode != 128 + signum else 2, out, err)
            r.rc = proc.returncode
            line = next((x for x in err.splitlines() if x.startswith("interrupted")), "")
            problem = None
            if after_commit:
                problem = valid(s)
                if not problem and "--resume true" not in line:
                    problem = "silent wrong: no resume command"
                if not problem:
                    res = cli([*args, "--resume", "true"])
                    if res.rc or len(StoreReader(s).batches_done) != 64:
                        problem = "silent wrong: the resume did not finish the store"
            elif "--resume" in line and not s.exists():
                problem = "silent wrong: --resume suggested for a store that is not there"
            return r, problem

    signal_case("collect: SIGINT after a commit, then --resume", signal.SIGINT, True)
    signal_case("collect: SIGTERM after a commit, then --resume", signal.SIGTERM, True)
    signal_case("collect: SIGTERM while creating a fresh store", signal.SIGTERM, False)

    @add("collect: SIGKILL after a commit, then --resume equals an uninterrupted run", expect="ok")
    def _(d):
        from igcritic.store import StoreReader

        s = d / "store.zarr"
        args = w.collect(s, "--rollouts_per_prompt", "4", "--batch_size", "1")
        proc = child(args)
        while proc.poll() is None and not committed(s):
            time.sleep(0.02)
        proc.kill()
        proc.communicate(timeout=60)
        r = cli([*args, "--resume", "true"])
        if r.rc:
            return r, None
        ref = d / "ref.zarr"
        cli(w.collect(ref, "--rollouts_per_prompt", "4", "--batch_size", "1"))
        a, b = StoreReader(s), StoreReader(ref)
        same = (a.token_ids == b.token_ids).all() and (a.traj_cost == b.traj_cost).all()
        return r, valid(s) or (None if same else "silent wrong: the resumed store differs")

    # inspect
    plain("inspect: no store there", lambda d: ["inspect", str(d / "none.zarr")])
    plain("inspect: a plain folder", lambda d: ["inspect", str(d)])

    def damaged(name: str, damage: Callable[[Path], None]):
        @add(f"inspect: {name}")
        def _(d):
            s = w.copy_store(d)
            damage(s)
            return cli(["inspect", str(s)]), None

        @add(f"fit: {name}")
        def _(d):
            s = w.copy_store(d)
            damage(s)
            os.chdir(d)
            return cli(w.fit(s)), None if not (d / "runs").exists() else "silent wrong: fit started training"

    damaged("truncated root zarr.json", lambda s: cut(s / "zarr.json"))
    damaged("truncated shard manifest", lambda s: cut(s / "shards" / "rank-00000" / "zarr.json"))
    damaged(
        "truncated latents array zarr.json",
        lambda s: cut(s / "shards" / "rank-00000" / "latents" / "zarr.json"),
    )
    damaged("truncated token_ids chunk", lambda s: cut(chunk(s, "token_ids")))
    damaged("truncated traj_offsets chunk", lambda s: cut(chunk(s, "traj_offsets")))
    damaged("truncated latents chunk", lambda s: cut(chunk(s, "latents")))
    damaged("truncated cost_prefix chunk", lambda s: cut(chunk(s, "cost_prefix")))
    damaged("deleted latents chunk", lambda s: chunk(s, "latents").unlink())
    damaged("deleted traj_len chunk", lambda s: chunk(s, "traj_len").unlink())
    damaged("garbage bytes in a latents chunk", lambda s: chunk(s, "latents").write_bytes(b"x" * 10))

    @add("inspect: NaN written into the latents")
    def _(d):
        import zarr

        s = w.copy_store(d)
        zarr.open_group(str(s), mode="r+")["shards/rank-00000/latents"][3] = float("nan")
        return cli(["inspect", str(s)]), None

    @add("inspect: a valid store", expect="ok")
    def _(d):
        r = cli(["inspect", str(w.store)])
        return r, None if "valid" in r.out else "silent wrong: no verdict printed"

    @add("inspect: a store being written says so", expect="ok")
    def _(d):
        from igcritic.store.lock import WriterLock

        s = w.copy_store(d)
        lock = WriterLock(str(s), 0)
        try:
            r = cli(["inspect", str(s)])
        finally:
            lock.release()
        return r, None if "being written" in r.out else "silent wrong: a live writer not named"

    # fit
    @add("fit: no store there")
    def _(d):
        os.chdir(d)
        return cli(w.fit(d / "none.zarr")), None

    @add("fit: an empty store (zero trajectories)")
    def _(d):
        from helpers_fit import make_empty_store

        make_empty_store(d / "e.zarr")
        os.chdir(d)
        return cli(w.fit(d / "e.zarr")), None

    @add("fit: stores of two policies")
    def _(d):
        from helpers_fit import make_store

        make_store(d / "a.zarr", hidden=8)
        make_store(d / "b.zarr", hidden=8, model_id="another")
        os.chdir(d)
        return cli(w.fit(d / "a.zarr", d / "b.zarr")), None

    @add("fit: stores of one model tapped at different layers")
    def _(d):
        from helpers_fit import make_store

        make_store(d / "a.zarr", hidden=8)
        make_store(d / "b.zarr", hidden=8, layer=1)
        os.chdir(d)
        r = cli(w.fit(d / "a.zarr", d / "b.zarr"))
        return r, None if "another policy" not in r.err and "different policies" not in r.err else (
            "silent wrong: a tap difference called another policy"
        )

    @add("fit: NaN costs in the store")
    def _(d):
        import zarr

        s = w.copy_store(d)
        zarr.open_group(str(s), mode="r+")["shards/rank-00000/cost_prefix"][3] = float("nan")
        os.chdir(d)
        return cli(w.fit(s)), None

    @add("fit: --data.batch_size 0")
    def _(d):
        os.chdir(d)
        return cli([*w.fit(w.store), "--data.batch_size=0"]), None

    @add("fit: --model.hidden_size not the stores'")
    def _(d):
        os.chdir(d)
        return cli([*w.fit(w.store), "--model.hidden_size=7"]), None

    for what, content in (("missing", None), ("garbage", b"not a checkpoint"), ("truncated", "cut")):

        @add(f"fit: --ckpt_path {what}")
        def _(d, content=content):
            ck = d / "x.ckpt"
            if content == "cut":
                import torch

                torch.save({"state_dict": {"w": torch.zeros(1000)}}, ck)
                cut(ck)
            elif content is not None:
                ck.write_bytes(content)
            os.chdir(d)
            return cli([*w.fit(w.store), "--ckpt_path", str(ck)]), None

    @add("validate: --ckpt_path garbage")
    def _(d):
        (d / "x.ckpt").write_bytes(b"junk")
        os.chdir(d)
        return cli(["validate", *w.fit(w.store)[1:], "--ckpt_path", str(d / "x.ckpt")]), None

    @add("fit: a 1-epoch run on a collected store", expect="ok")
    def _(d):
        os.chdir(d)
        r = cli(w.fit(w.store))
        ck = list((d / "runs").rglob("*.ckpt")) if (d / "runs").exists() else []
        return r, None if r.rc or ck else "silent wrong: no checkpoint written"

    # export
    plain("export: missing checkpoint", lambda d: ["export", str(d / "none.ckpt"), "--out", str(d / "c")])

    @add("export: garbage checkpoint")
    def _(d):
        (d / "x.ckpt").write_bytes(b"junk")
        return cli(["export", str(d / "x.ckpt"), "--out", str(d / "c")]), None

    @add("export: --out under a read-only folder")
    def _(d):
        return cli(["export", str(d / "x.ckpt"), "--out", str(read_only(d) / "c")]), None

    @add("export: --overwrite onto a folder of the user's")
    def _(d):
        (d / "mine").mkdir()
        (d / "mine" / "notes.txt").write_text("mine")
        return cli_keeping(
            d / "mine", ["export", str(d / "x.ckpt"), "--out", str(d / "mine"), "--overwrite", "true"]
        )

    @add("export: --overwrite onto a folder whose critic_config.json is not ours")
    def _(d):
        (d / "mine").mkdir()
        (d / "mine" / "critic_config.json").write_text('{"mine": true}')
        (d / "mine" / "notes.txt").write_text("mine")
        return cli_keeping(
            d / "mine", ["export", str(d / "x.ckpt"), "--out", str(d / "mine"), "--overwrite", "true"]
        )

    @add("export: --overwrite onto a symlink to an artifact")
    def _(d):
        a = w.copy_critic(d)
        before = tree(a)
        (d / "link").symlink_to(a)
        return cli(["export", str(d / "x.ckpt"), "--out", str(d / "link"), "--overwrite", "true"]), intact(
            a, before
        )

    @add("export: --out is an existing artifact (no flag)")
    def _(d):
        a = w.copy_critic(d)
        return cli_keeping(a, ["export", str(d / "x.ckpt"), "--out", str(a)])

    # generate
    plain("generate: critic folder missing", lambda d: w.generate(d / "none", "--prompts.texts", '["hi"]'))
    plain("generate: --prompts.texts []", lambda d: w.generate(w.critic, "--prompts.texts", "[]"))
    plain("generate: --prompts.texts [3]", lambda d: w.generate(w.critic, "--prompts.texts", "[3]"))
    plain("generate: empty stdin", lambda d: w.generate(w.critic), stdin="")
    plain(
        "generate: --search.method bogus",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--search.method", "x"),
    )
    plain(
        "generate: --search.block_width 0",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--search.block_width", "0"),
    )
    plain(
        "generate: --search.num_candidates 0",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--search.num_candidates", "0"),
    )
    plain(
        "generate: --search.tau 2",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--search.tau", "2"),
    )
    plain(
        "generate: --search.temperature -1",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--search.temperature", "-1"),
    )
    plain(
        "generate: --search.max_new_tokens 0",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--search.max_new_tokens", "0"),
    )
    plain(
        "generate: --device cuda on a CPU machine",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--device", "cuda"),
    )
    plain(
        "generate: --model a missing folder",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--model", str(d / "x")),
    )
    plain(
        "generate: --search.budget -1e9 parses (beaver cost is unbounded: warned, recorded)",
        lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]', "--search.budget", "-1e9"),
        "ok",
    )
    plain("generate: answers a prompt", lambda d: w.generate(w.critic, "--prompts.texts", '["hi"]'), "ok")

    def gen_file(name: str, suffix: str, content: bytes):
        def args(d: Path) -> list[str]:
            (d / f"p{suffix}").write_bytes(content)
            return w.generate(w.critic, "--prompts.source", str(d / f"p{suffix}"))

        plain(f"generate: {name}", args)

    gen_file("non-UTF-8 prompt file", ".txt", "caf\xe9\n".encode("latin-1"))
    gen_file("an empty conversation on line 2", ".txt", b'hi\n[{"role": "user", "content": " "}]\n')
    gen_file("a too-long prompt on line 2", ".txt", b"hi\n" + b"bread " * 400 + b"\n")

    @add("generate: --out under a read-only folder")
    def _(d):
        return cli(
            w.generate(w.critic, "--prompts.texts", '["hi"]', "--out", str(read_only(d) / "r.jsonl"))
        ), None

    @add("generate: --out is a non-empty file")
    def _(d):
        (d / "r.jsonl").write_text("mine\n")
        r = cli(w.generate(w.critic, "--prompts.texts", '["hi"]', "--out", str(d / "r.jsonl")))
        return r, intact(d / "r.jsonl", {"": b"mine\n"})

    def broken_critic(name: str, damage: Callable[[Path], None]):
        @add(f"generate: {name}")
        def _(d):
            a = w.copy_critic(d)
            damage(a)
            return cli(w.generate(a, "--prompts.texts", '["hi"]')), None

    broken_critic("truncated critic_config.json", lambda a: cut(a / "critic_config.json"))
    broken_critic("critic weights missing", lambda a: next(a.glob("*.safetensors")).unlink())
    broken_critic("critic weights truncated", lambda a: cut(next(a.glob("*.safetensors"))))
    broken_critic("malformed search_config.json", lambda a: (a / "search_config.json").write_text("{"))
    broken_critic(
        "unknown key in search_config.json", lambda a: (a / "search_config.json").write_text('{"nope": 1}')
    )

    @add("generate: a schema-2 critic without its calibration")
    def _(d):
        a = w.copy_critic(d)
        meta = json.loads((a / "critic_config.json").read_text())
        meta.pop("calibration", None)
        (a / "critic_config.json").write_text(json.dumps(meta))
        return cli(w.generate(a, "--prompts.texts", '["hi"]')), None

    @add("generate: --model with the critic's shapes but other weights")
    def _(d):
        from helpers import build_tiny_llama, build_tokenizer, tiny_critic

        tok = build_tokenizer()
        build_tiny_llama(len(tok), seed=5).save_pretrained(d / "other")
        tok.save_pretrained(d / "other")
        a = d / "critic"
        from igcritic.policy import load_policy

        tiny_critic(load_policy(str(w.model)).identity.to_dict(), budget=0.5).save_pretrained(a)
        return cli(w.generate(a, "--prompts.texts", '["hi"]', "--model", str(d / "other"))), None

    # eval (flags checked before any guard loads)
    def ev(d: Path, *extra: str) -> list[str]:
        return [
            *(
                "eval",
                "--critic",
                str(w.critic),
                "--prompts.source",
                str(w.prompts),
                "--prompts.split",
                "null",
            ),
            *("--out", str(d / "out"), "--quality_set", "null", "--plots", "false"),
            *("--cost", f"beaver:{w.cost}", "--reward", f"beaver:{w.reward}"),
            *extra,
        ]

    @add("eval: --out under a read-only folder")
    def _(d):
        args = ev(d)
        args[args.index("--out") + 1] = str(read_only(d) / "out")
        return cli(args), None

    @add("eval: --resume of a folder that is not a run")
    def _(d):
        (d / "out").mkdir()
        (d / "out" / "notes.txt").write_text("mine")
        return cli(ev(d, "--resume", "true")), intact(d / "out" / "notes.txt", {"": b"mine"})

    plain(
        "eval: --budget 1e30 on the embedded cost's [0, 1]",
        lambda d: [*ev(d, "--budget", "1e30"), "--cost", "embedded"],
    )
    plain("eval: misspelt flag", lambda d: ev(d, "--budjet", "0.5"))

    # the Python API
    @add("load_guard: a loaded model with an empty name_or_path and other weights")
    def _(d):
        from helpers import build_tiny_llama, build_tokenizer

        from igcritic import IgcriticError, load_guard

        tok = build_tokenizer()
        m = build_tiny_llama(len(tok), seed=7)
        m.config.name_or_path = ""
        a = w.copy_critic(d)
        meta = json.loads((a / "critic_config.json").read_text())
        from igcritic.policy import load_policy, policy_fingerprint

        meta["policy"]["fingerprint"] = policy_fingerprint(load_policy(str(w.model)))
        (a / "critic_config.json").write_text(json.dumps(meta))
        try:
            load_guard(a, model=m, tokenizer=tok, model_id=str(w.model))
        except IgcriticError as e:
            return Run(2, "", f"error: {e}\n"), None
        return Run(0, "", ""), "silent wrong: a model with other weights was accepted"

    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--out", default=None, help="write the verdicts as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    root = Path(tempfile.mkdtemp(prefix="igc-faults-"))
    cwd = os.getcwd()
    t0 = time.time()
    w = World(root / "world")
    todo = [c for c in cases(w) if a.only in c.name]
    for i, case in enumerate(todo):
        d = root / f"case-{i:03d}"
        d.mkdir()
        try:
            run, problem = case.run(d)
        except BaseException as e:  # noqa: BLE001 - the case's own setup or checks failed
            import traceback

            run, problem = Run(1, "", traceback.format_exc(), e), None
        finally:
            os.chdir(cwd)
            for p in d.rglob("*"):
                if p.is_dir():
                    p.chmod(0o755)
        case.verdict, case.detail = judge(case, run, problem)
        print(f"{case.verdict:<12} {case.name}: {case.detail}", flush=True)
    counts = Counter(c.verdict for c in todo)
    print(
        f"\n{len(todo)} cases in {time.time() - t0:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in counts.most_common())
    )
    if a.out:
        Path(a.out).write_text(
            json.dumps([{"case": c.name, "verdict": c.verdict, "detail": c.detail} for c in todo], indent=1)
        )
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
