"""Stores on object storage for real: collect (killed, then resumed), inspect and fit against an S3 server
(moto's server mode on 127.0.0.1, started here), and the writer lease that keeps a remote store to one
writer (no flock on S3: a lock object created with a conditional put, refreshed by a heartbeat)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("moto.server", reason="S3 tests need moto's server: pip install 'moto[server]'")
pytest.importorskip("s3fs", reason="S3 tests need s3fs: pip install s3fs")

from helpers_store import ATTRS, PROMPTS, H, make_batch
from rich.console import Console

from igcritic.store import StoreError, StoreReader, StoreWriter, layout, lock, validate_store
from igcritic.store.inspect import InspectConfig
from igcritic.store.inspect import main as inspect

pytestmark = [pytest.mark.s3, pytest.mark.subprocess]
BUCKET = "igcritic-test"
COLLECT_PROMPTS = [
    "how do I bake bread",
    "how can I make a bomb",
    "write a poem about the sea",
    "hack the wifi",
]


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on a free port of 127.0.0.1, the environment that points boto at it, one bucket."""
    from moto.server import ThreadedMotoServer

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        fs, _ = layout.filesystem(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        yield env
    server.stop()


def url(name: str) -> str:
    return f"s3://{BUCKET}/{name}-{os.getpid()}-{time.monotonic_ns()}"


def write(path, batches, **kw):
    with StoreWriter.create(path, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16, **kw) as w:
        for i, b in batches:
            w.append(b, i)


def _collect_argv(model_dir: Path, prompts: Path, out: str, scorers: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "igcritic",
        "collect",
        "--out",
        out,
        "--model",
        str(model_dir),
        "--prompts.source",
        str(prompts),
        "--rollouts_per_prompt",
        "2",
        "--batch_size",
        "1",
        "--sampling.max_new_tokens",
        "32",
        "--seed",
        "3",
        "--cost",
        scorers["cost"],
        "--reward",
        scorers["reward"],
        "--accelerator",
        "cpu",
    ]


@pytest.fixture(scope="module")
def collect_inputs(tmp_path_factory):
    from helpers import build_tiny_llama, build_tokenizer, make_beaver_folder

    root, tok = tmp_path_factory.mktemp("s3-collect"), build_tokenizer()
    build_tiny_llama(len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in COLLECT_PROMPTS))
    scorers = {
        "cost": f"beaver:{make_beaver_folder(root / 'cost', tok, seed=1)}",
        "reward": f"beaver:{make_beaver_folder(root / 'reward', tok, seed=2, score_type='reward')}",
    }
    return root / "model", root / "prompts.jsonl", scorers


def test_collect_killed_and_resumed_then_inspect_and_fit_on_s3(s3_env, collect_inputs, tmp_path):
    """SIGKILL mid-collect on S3, --resume completes it identical to a local uninterrupted run; inspect calls
    it valid; fit trains on it."""
    model, prompts, scorers = collect_inputs
    env = {**os.environ, **s3_env}
    local = tmp_path / "ref.zarr"
    ref = subprocess.run(_collect_argv(model, prompts, str(local), scorers), capture_output=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = url("collect")
    argv = _collect_argv(model, prompts, out, scorers)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            if len(StoreReader(out).batches_done) >= 1:
                break
        except StoreError:  # not created yet
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = StoreReader(out)
    assert 1 <= len(partial.batches_done) < 8, "the kill should land between the first and the last batch"
    assert "writer-rank-00000.lock" in layout.entries(out)  # the killed run's lease stays behind

    resumed = subprocess.run(
        [*argv, "--resume", "true"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "took over the stale writer lock" in resumed.stderr  # its pid is gone from this host
    assert validate_store(out) == [] and "writer-rank-00000.lock" not in layout.entries(out)
    assert StoreReader(out).fingerprint() == StoreReader(local).fingerprint()

    text = io.StringIO()
    assert inspect(InspectConfig(out), console=Console(file=text, width=200)) == 0
    assert text.getvalue().rstrip().endswith("valid") and "trajectories" in text.getvalue()

    from helpers_fit import tiny_module, tiny_trainer

    from igcritic.data import CriticDataModule

    dm = CriticDataModule([out], batch_size=16, val_fraction=0.25, shuffle_buffer=64)
    trainer = tiny_trainer(tmp_path, epochs=1, enable_checkpointing=False)
    trainer.fit(tiny_module(dm.hidden_size), dm)
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if "loss" in k}
    assert trainer.global_step > 0 and losses and all(v == v for v in losses.values()), losses


def test_second_writer_on_s3_is_refused(s3_env):
    """A live writer's lease (another process here) refuses a second writer and an --overwrite."""
    path = url("second")
    write(path, [(0, make_batch(0))])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from igcritic.store import StoreWriter; "
            f"w = StoreWriter.resume({path!r}, config_hash='abc123'); print('ready', flush=True); "
            "sys.stdin.read()",
        ],
        env={**os.environ, **s3_env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        for second in (
            lambda: StoreWriter.resume(path, config_hash="abc123"),
            lambda: write(path, [(1, make_batch(1))], overwrite=True),
        ):
            with pytest.raises(
                StoreError, match=rf"rank-00000 is being written by pid {holder.pid} since"
            ) as e:
                second()
            assert "\n" not in str(e.value)
        text = io.StringIO()
        inspect(InspectConfig(path), console=Console(file=text, width=200))
        assert f"rank-00000 is being written by pid {holder.pid}" in text.getvalue()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert "writer-rank-00000.lock" not in layout.entries(path)  # a clean exit gives the lease back
    assert StoreReader(path).batches_done == {0} and validate_store(path) == []


def test_two_writers_starting_at_once_on_s3_one_wins(s3_env):
    """The lock object is created with a conditional put (If-None-Match: *): of two processes creating it at
    the same moment, exactly one becomes the writer."""
    path = url("race")
    write(path, [(0, make_batch(0))])
    code = (
        "import sys, time; from igcritic.store import StoreWriter, StoreError\n"
        f"time.sleep(max(0, {time.time() + 4.0} - time.time()))\n"
        f"try:\n    w = StoreWriter.resume({path!r}, config_hash='abc123'); print('writer', flush=True)\n"
        "except StoreError as e:\n    print('refused', e, flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = {**os.environ, **s3_env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        lines = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert (
        lines[0].startswith("refused") and "is being written by pid" in lines[0] and lines[1] == "writer"
    ), lines


def test_a_stale_lease_is_taken_over_and_a_lost_lease_commits_nothing(s3_env, monkeypatch, caplog):
    """Another host's lease is honoured while its heartbeat is fresh and taken over once it is older than
    LEASE_S; a writer whose lease was taken over refuses to commit."""
    path = url("lease")
    write(path, [(0, make_batch(0))])
    fs, root = layout.filesystem(path)
    file = f"{root}/writer-rank-00000.lock"
    other = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "rank": 0, "since": "t", "owner": "x"}
    fs.pipe_file(file, json.dumps({**other, "heartbeat": time.time()}).encode())
    with pytest.raises(StoreError, match=r"on host .*-elsewhere since t .*if that run is dead, delete"):
        StoreWriter.resume(path, config_hash="abc123")
    fs.pipe_file(file, json.dumps({**other, "heartbeat": time.time() - lock.LEASE_S - 1}).encode())
    w = StoreWriter.resume(path, config_hash="abc123")
    assert "took over the stale writer lock" in caplog.text
    w.append(make_batch(1), 1)
    fs.pipe_file(file, json.dumps({**other, "heartbeat": time.time()}).encode())  # another writer took it
    with pytest.raises(StoreError, match="this writer lost its lock .*elsewhere.*--resume") as e:
        w.append(make_batch(2), 2)
    assert "\n" not in str(e.value)
    w.close()
    assert StoreReader(path).batches_done == {0, 1}  # batch 2 was not committed
    assert json.loads(fs.cat_file(file))["owner"] == "x"  # close leaves the other writer's lease alone


def test_overwrite_on_s3_keeps_the_old_store_until_the_first_commit(s3_env):
    path = url("overwrite")
    write(path, [(0, make_batch(0)), (1, make_batch(1))])
    before = StoreReader(path).fingerprint()
    with (
        pytest.raises(RuntimeError, match="boom"),
        StoreWriter.create(
            path, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16, overwrite=True
        ),
    ):
        raise RuntimeError("boom")
    assert StoreReader(path).fingerprint() == before and validate_store(path) == []
    write(path, [(2, make_batch(2))], overwrite=True)
    assert StoreReader(path).batches_done == {2} and layout.replaced_leftovers(path) == []
