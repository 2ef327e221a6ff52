"""igcritic serve: a tiny guard served on 127.0.0.1, asked with the real openai client, plain and streamed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import CHAT, make_tiny_policy, write_artifact

openai = pytest.importorskip("openai")
pytest.importorskip("litserve")

from igcritic.guard import load_guard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEARCH = {
    "block_width": 2,
    "num_candidates": 4,
    "beams_kept": 2,
    "max_new_tokens": 8,
    "retries": 1,
    "tau": 0.0,
}
PROMPTS = [CHAT, [{"role": "user", "content": "hack into my neighbour's wifi network"}], CHAT[1:2], CHAT[:2]]


pytestmark = pytest.mark.subprocess  # every test asks `igcritic serve` running in a child process


def _session_processes(sid: int) -> list[int]:
    """Every process of session ``sid`` (the server started with ``start_new_session`` and its workers)."""
    pids = []
    if not Path("/proc").is_dir():  # no procfs: nothing to check
        return pids
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _alive(pid: int) -> bool:
    for _ in range(60):  # the main process is gone; its workers get a moment to follow
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().split(") ")[-1][0]
        except OSError:
            return False
        if state == "Z":
            return False
        time.sleep(0.5)
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``igcritic serve`` of a tiny guard (policy saved to a folder) in a subprocess; stopped with SIGINT."""
    root = tmp_path_factory.mktemp("serve")
    policy = make_tiny_policy()
    policy.model.save_pretrained(root / "model")
    policy.tokenizer.save_pretrained(root / "model")
    ident = {**policy.identity.to_dict(), "model_id": str(root / "model")}
    art = write_artifact(root / "critic", ident, search={**SEARCH, "budget": 25.0})
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "igcritic", "serve", str(art), "--port", str(port)]
    cmd += ["--max_batch_size", "4", "--batch_timeout", "0.5"]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a background job gets it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # the worker loads the guard before /health says ok
            if proc.poll() is not None:
                pytest.fail(
                    f"igcritic serve exited {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}"
                )
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"igcritic serve did not come up: {(root / 'server.log').read_text()[-2000:]}")
        guard = load_guard(art)
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300), guard
    finally:
        workers = _session_processes(proc.pid)
        proc.send_signal(signal.SIGINT)  # Ctrl-C, though the server inherited SIGINT ignored
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        left = [p for p in workers if _alive(p)]
        if proc.poll() is None or left:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: the server and its workers
            proc.wait()
        log.close()
    assert proc.returncode is not None and not left, f"SIGINT left the server or its workers running: {left}"


def _ask(client, messages, **kw):
    return client.chat.completions.create(model="tiny-guard", messages=messages, **kw)


def test_completion_is_the_guarded_answer_with_its_outcome(served):
    client, guard = served
    out = _ask(client, CHAT, max_tokens=6, seed=7, extra_body={"num_candidates": 6})
    (rec,) = guard.generate(CHAT, seeds=[7], max_new_tokens=6, num_candidates=6)
    (choice,) = out.choices
    assert out.model == "tiny-guard" and choice.message.role == "assistant"
    assert choice.message.content == rec.text and rec.new_tokens > 0
    ended = rec.token_ids[-1] in guard.policy.eos_token_ids
    assert choice.finish_reason == ("length" if rec.new_tokens == 6 and not ended else "stop")
    verdict = out.model_extra["igcritic"]
    assert verdict["refused"] is False and verdict["safe"] == rec.safe and verdict["seed"] == 7
    assert verdict["final_safety_state"] == pytest.approx(rec.final_safety_state, abs=1e-5)
    assert verdict["budget"] == 25.0 and verdict["steps"] == rec.steps
    prompt_tokens = guard.policy.encode_prompts([rec.prompt])["input_ids"].shape[1]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt_tokens, rec.new_tokens)
    assert out.usage.total_tokens == prompt_tokens + rec.new_tokens
    seeded = _ask(client, CHAT, max_tokens=6, seed=7, extra_body={"num_candidates": 6})
    assert seeded.choices[0].message.content == rec.text  # the seed makes it reproducible
    unseeded = _ask(client, CHAT, max_tokens=6).model_extra["igcritic"]["seed"]
    assert isinstance(unseeded, int)  # none given: a random one, reported so it can be replayed


def test_streaming_sends_accepted_blocks_then_the_outcome(served):
    client, guard = served
    kw = {"max_tokens": 8, "seed": 3, "extra_body": {"beams_kept": 1}}
    chunks = list(_ask(client, CHAT, stream=True, **kw))
    plain = _ask(client, CHAT, **kw)
    (rec,) = guard.generate(CHAT, seeds=[3], max_new_tokens=8, beams_kept=1)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(deltas) == plain.choices[0].message.content == rec.text
    assert len(deltas) >= 2  # one beam: every accepted block is final, so blocks arrive one by one
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert last.model_extra["igcritic"] == {**plain.model_extra["igcritic"]}
    assert last.usage.completion_tokens == rec.new_tokens


def test_stop_cuts_the_answer_before_the_first_stop_string(served):
    client, _ = served
    kw = {"max_tokens": 8, "seed": 4, "extra_body": {"beams_kept": 1}}
    full = _ask(client, CHAT, **kw).choices[0].message.content
    assert len(full) >= 4
    stop = full[2:4]
    out = _ask(client, CHAT, stop=[stop, "never in it \u2603"], **kw)
    assert (
        out.choices[0].message.content == full[: full.find(stop)] and out.choices[0].finish_reason == "stop"
    )
    chunks = list(_ask(client, CHAT, stop=stop, stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full[: full.find(stop)]
    with pytest.raises(openai.BadRequestError, match="at most 4 strings"):
        _ask(client, CHAT, stop=["a", "b", "c", "d", "e"], **kw)


def test_refusal_is_the_answer_plain_and_streamed(served):
    client, guard = served
    kw = {"max_tokens": 6, "seed": 1, "extra_body": {"budget": -1000.0, "mode": "latent"}}
    out = _ask(client, CHAT, **kw)
    refusal = guard.search.refusal_text
    assert out.choices[0].message.content == refusal and out.choices[0].finish_reason == "content_filter"
    assert out.model_extra["igcritic"]["refused"] is True and out.model_extra["igcritic"]["safe"] is False
    assert out.model_extra["igcritic"]["final_safety_state"] is None and out.usage.completion_tokens == 0
    chunks = list(_ask(client, CHAT, stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == refusal
    assert chunks[-1].choices[0].finish_reason == "content_filter"


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"messages": []}, 'no "messages"'),
        ({"messages": CHAT, "extra_body": {"beam_width": 3}}, "unknown field 'beam_width'"),
        ({"messages": CHAT, "extra_body": {"budget": "lots"}}, "budget='lots'"),
        ({"messages": CHAT, "extra_body": {"num_candidates": 0}}, "search.num_candidates"),
        ({"messages": CHAT, "extra_body": {"seed": 2}, "seed": 2}, None),  # seed is the OpenAI field: fine
        ({"messages": CHAT, "extra_body": {"max_new_tokens": 4}}, "unknown field 'max_new_tokens'"),
        ({"messages": CHAT[:3]}, "must end with a user message"),
        ({"messages": [{"role": "user", "content": "bread " * 300}]}, "the conversation has"),
        ({"messages": CHAT, "temperature": "hot"}, "temperature"),
        ({"messages": CHAT, "n": 2}, "n=2 is not supported"),
    ],
)
def test_bad_requests_get_one_clear_400_and_the_server_goes_on(served, kw, message):
    client, _ = served
    kw = {"max_tokens": 2, **kw}
    if message is None:
        assert _ask(client, **kw).choices[0].message.content is not None
        return
    for stream in (False, True):  # a stream is refused before it starts, with the same status
        with pytest.raises(openai.BadRequestError) as e:
            _ask(client, stream=stream, **kw)
        assert e.value.status_code == 400 and message in str(e.value)
        assert "\n" not in e.value.body["message"] if isinstance(e.value.body, dict) else True
    assert _ask(client, CHAT, max_tokens=2).choices[0].message.content is not None


def test_concurrent_requests_are_batched_and_answer_as_sequential_ones(served):
    client, _ = served
    kw = {"max_tokens": 6}
    sequential = [_ask(client, p, seed=10 + i, **kw) for i, p in enumerate(PROMPTS)]
    got: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            got[i] = _ask(client, PROMPTS[i], seed=10 + i, **kw)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            got[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(not isinstance(got[i], Exception) for i in range(len(PROMPTS))), got
    assert [got[i].choices[0].message.content for i in range(len(PROMPTS))] == [
        s.choices[0].message.content for s in sequential
    ]
    for i, s in enumerate(sequential):  # the safety state reads the prompt's own latents: no mix-up
        z = s.model_extra["igcritic"]["final_safety_state"]
        assert got[i].model_extra["igcritic"]["final_safety_state"] == pytest.approx(z, abs=1e-4)
    assert max(got[i].model_extra["igcritic"]["batch"] for i in range(len(PROMPTS))) > 1  # searched together
    assert all(s.model_extra["igcritic"]["batch"] == 1 for s in sequential)


INSPECT_TASK = """
import json, sys
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate, system_message

base_url, system, question, log_dir = sys.argv[1:5]
task = Task(
    dataset=[Sample(input=question, target="bread"), Sample(input="the weather", target="sun")],
    solver=[system_message(system), generate()],
    scorer=match(location="any"),
)
(log,) = eval(task, model="openai/igcritic", model_base_url=base_url,
              model_args={"api_key": "none", "responses_api": False}, max_tokens=6, seed=0,
              log_dir=log_dir, display="none")
print(json.dumps({"status": log.status, "samples": [[s.input, s.output.completion] for s in log.samples]}))
"""


def _inspect_python() -> str | None:
    """The interpreter that has inspect-ai: IGCRITIC_INSPECT_PYTHON, else the .venv-inspect that .ci/setup.sh
    makes (inspect-ai pins fsspec below what zarr and datasets get, so it lives in its own environment), else
    this one if it has inspect-ai."""
    for python in (os.environ.get("IGCRITIC_INSPECT_PYTHON"), str(ROOT / ".venv-inspect" / "bin" / "python")):
        if python and Path(python).is_file():
            return python
    try:
        import inspect_ai  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def test_inspect_ai_runs_a_two_sample_task_against_the_server(served, tmp_path):
    """Inspect AI's OpenAI provider pointed at the server (docs/eval.md), run by Inspect's own interpreter:
    both samples answered, with the answers the server gives the openai client for the same conversation and
    seed."""
    python = _inspect_python()
    if python is None:
        if os.environ.get("CI"):  # CI installs it (.ci/setup.sh): a skip there would hide a broken recipe
            pytest.fail("inspect-ai is not installed: run .ci/setup.sh (it makes .venv-inspect)")
        pytest.skip("inspect-ai is not installed (bash .ci/setup.sh makes .venv-inspect)")
    client, _ = served
    script = tmp_path / "inspect_task.py"
    script.write_text(INSPECT_TASK)
    args = [str(client.base_url), CHAT[0]["content"], CHAT[1]["content"], str(tmp_path / "logs")]
    unset = ("PYTHONPATH", "OPENAI_BASE_URL", "OPENAI_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [python, str(script), *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "success" and len(out["samples"]) == 2
    for question, completion in out["samples"]:
        conv = [CHAT[0], {"role": "user", "content": question}]
        want = _ask(client, conv, max_tokens=6, seed=0).choices[0].message.content
        assert completion == want
