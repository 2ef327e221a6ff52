"""Serve a guard behind an OpenAI-compatible chat-completions API (LitServe), streamed block by block.

    igcritic serve checkpoints/embedded --port 8000 [--search.budget 0.5] [--max_batch_size 4]

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    out = client.chat.completions.create(model="igcritic", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=64, extra_body={"budget": 0.5, "num_candidates": 8})
    print(out.choices[0].message.content, out.igcritic["refused"], out.igcritic["safe"])

One request is one :meth:`igcritic.guard.Guard.generate` of its ``messages`` (the policy's chat template).
``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p`` and ``seed`` map to the search's
``max_new_tokens``, ``temperature``, ``top_p`` and the prompt's own seed (none: a random one, reported back);
every other :class:`~igcritic.search.SearchConfig` field (``budget``, ``method``, ``mode``,
``num_candidates``, ...) is an extra body field, over the server's defaults. The response adds an
``igcritic`` object (``refused``, ``safe``, ``final_safety_state``, ``cost``, ``value``, ``steps``,
``retries``, ``seed``) and says ``finish_reason`` ``length`` when the answer hit ``max_tokens``,
``content_filter`` when the guard refused (the refusal text is the answer), ``stop`` otherwise.

Streaming (``stream: true``) sends each block once the search has accepted it: the tokens that every
candidate the search still keeps agrees on, so nothing sent is ever taken back; the rest of the answer comes
with the last chunk. A refusal after some blocks were sent is sent as the rest of the answer (the client
already holds the accepted blocks; ``finish_reason`` ``content_filter`` marks it).

Requests that arrive within ``batch_timeout`` of each other (up to ``max_batch_size``) and resolve to the
same search settings are searched together, sharing each forward; each samples from its own seed, so its
answer is the one it gets alone. A bad request (no messages, an unknown field, a bad budget, a prompt longer
than the context) gets HTTP 400 with one line saying what is wrong, and the server goes on.

Where LitServe's ``OpenAISpec`` is not enough, :class:`GuardSpec` takes over its HTTP side: its request model
drops unknown fields and has no ``seed``, its replies have no place for the guard's outcome and always say
``finish_reason: "stop"``, and an error of one request fails every request of its batch and reaches a stream
only after its ``200``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import random
import re
import threading
import time
import typing
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from igcritic import IgcriticError
from igcritic.guard import SearchOverrides, load_guard, overrides
from igcritic.policy import PolicyError
from igcritic.prompts import check_messages, prompt_text
from igcritic.search import SearchConfig


class ServeError(IgcriticError):
    """The server cannot start with these settings."""


try:  # the `serve` extra
    import litserve as ls
    from fastapi import BackgroundTasks
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from litserve.specs.openai import ChatCompletionRequest, OpenAISpec
    from litserve.utils import LitAPIStatus, ResponseBufferItem
    from pydantic import ConfigDict, TypeAdapter, ValidationError
except ImportError:
    raise ServeError("igcritic serve needs litserve: pip install 'igcritic[serve]'") from None

log = logging.getLogger(__name__)

OPENAI_FIELDS = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens"}
"""Request fields of the OpenAI API that are search fields under another name."""
SAMPLING_FIELDS = ("temperature", "top_p")
"""OpenAI request fields that are search fields of the same name."""
IGNORED_FIELDS = {"model", "stream", "user", "metadata", "stream_options"}
"""OpenAI request fields read elsewhere or without effect on the answer."""
UNSUPPORTED = {
    "n": 1,
    "tools": None,
    "response_format": None,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "reasoning_effort": None,
}
"""OpenAI request fields the guard cannot honour, with the one value it accepts."""
ROLE_ALIASES = {"developer": "system"}
"""OpenAI's newer name for the system role (sent by Inspect AI, among others)."""
SERVER_ONLY = {"seed", "prompt_batch", "compile"}
"""Search fields a request may not set as extra fields (``seed`` is the OpenAI field)."""


@dataclass
class ServeConfig:
    """Serve a guard over an OpenAI-compatible chat-completions API (``/v1/chat/completions``)."""

    critic_path: str
    """Exported critic folder (igcritic export)."""
    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0``: every interface)."""
    port: int = 8000
    model: str | None = None
    """Policy id or folder (null: the critic's recorded policy)."""
    cost: str | None = None
    """Cost scorer spec (null: fully latent mode)."""
    reward: str | None = None
    """Reward scorer spec."""
    device: str = "cpu"
    """cpu or cuda."""
    search: SearchOverrides = field(default_factory=SearchOverrides)
    """The server's search defaults over the critic's search_config.json; a request's extra fields override
    them."""
    max_batch_size: int = 4
    """Requests searched together at most (those with the same settings share each forward)."""
    batch_timeout: float = 0.05
    """Seconds to wait for more requests to fill a batch."""
    request_timeout: float = 600.0
    """Seconds a request may wait in the queue before it is answered 504."""
    model_name: str = "igcritic"
    """Model name reported when a request names none."""


# ---------------------------------------------------------------------------------------- one request


@dataclass
class Job:
    """One decoded request: what to search, or the one-line reason it cannot be (``error``)."""

    prompt: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    prompt_tokens: int = 0
    max_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    """The answer is cut before the first of these (OpenAI ``stop``; the search itself does not see them)."""
    group: str = ""
    """The resolved search config: requests with equal groups may share a batch."""
    error: str | None = None


def _content(message: dict) -> str:
    """The text of an OpenAI message content: a string, or a list of text parts."""
    content = message.get("content")
    if isinstance(content, list):
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise IgcriticError("only text content parts are supported; send the content as text")
        return "".join(str(p.get("text", "")) for p in content)
    return content


def _search_fields() -> dict[str, Any]:
    return typing.get_type_hints(SearchConfig)


def decode(body: dict, guard) -> Job:
    """A :class:`Job` from a chat-completions body (a dict), checked against the bound guard; every problem
    is one line in ``Job.error``, nothing raises."""
    try:
        return _decode(body, guard)
    except IgcriticError as e:
        return Job(error=str(e))


def _decode(body: dict, guard) -> Job:
    messages = body.get("messages")
    if not messages:
        raise IgcriticError('the request has no "messages"; send at least one user message')
    if not isinstance(messages, list):
        raise IgcriticError('"messages" must be a list of {"role", "content"} messages')
    clean = [
        {"role": ROLE_ALIASES.get(m.get("role"), m.get("role")), "content": _content(m)}
        if isinstance(m, dict)
        else m
        for m in messages
    ]
    prompt = prompt_text(check_messages(clean))
    hints = _search_fields()
    settings: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("messages", "seed", "stop") or name in IGNORED_FIELDS:
            continue
        if name in UNSUPPORTED:
            if value not in (UNSUPPORTED[name], None):
                raise IgcriticError(f"{name}={value!r} is not supported by the guard; leave it out")
            continue
        target = OPENAI_FIELDS.get(name, name)
        if target not in hints or target in SERVER_ONLY or (target == "max_new_tokens" and name == target):
            known = sorted((set(hints) - SERVER_ONLY - {"max_new_tokens"}) | set(OPENAI_FIELDS))
            raise IgcriticError(
                f"unknown field {name!r}; send OpenAI fields or search fields: {', '.join(known)}"
            )
        if value is None:
            continue
        try:
            value = TypeAdapter(hints[target]).validate_python(value)
        except ValidationError as e:
            raise IgcriticError(f"{name}={value!r}: {e.errors()[0]['msg']}") from None
        if target in settings and settings[target] != value:
            raise IgcriticError(f"{name} repeats another field with another value; send one of them")
        settings[target] = value
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(x, str) or x is None for x in stop):
        raise IgcriticError(f"stop={body.get('stop')!r} must be a string or a list of at most 4 strings")
    seed = body.get("seed")
    if seed is None:
        seed = random.randrange(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise IgcriticError(f"seed={seed!r} must be an integer")
    cfg = guard.check(**settings)  # SearchConfigError: one line naming search.FIELD
    try:
        n_prompt = guard.policy.encode_prompts([prompt], new_tokens=cfg.max_new_tokens)["input_ids"].shape[1]
    except PolicyError as e:  # a prompt longer than the context, or a conversation the template rejects
        message = re.sub(r"^prompt .*?\.\.\. has", "the conversation has", str(e), count=1, flags=re.S)
        raise IgcriticError(message.replace("lower max_new_tokens", "lower max_tokens")) from None
    stop = [x for x in stop if x]
    group = json.dumps(asdict(replace(cfg, seed=0)), sort_keys=True)
    return Job(prompt, settings, int(seed), int(n_prompt), cfg.max_new_tokens, stop, group)


# ---------------------------------------------------------------------------------------- the worker


def cut(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    at = min((i for i in (text.find(x) for x in stop) if i >= 0), default=-1)
    return (text, False) if at < 0 else (text[:at], True)


def _finish_reason(rec, job: Job, eos: list[int]) -> str:
    if rec.refused:
        return "content_filter"
    if cut(rec.text, job.stop)[1]:
        return "stop"
    ended = rec.token_ids and rec.token_ids[-1] in eos
    return "length" if rec.new_tokens >= job.max_new_tokens and not ended else "stop"


def outcome(rec, job: Job, eos: list[int], batch: int = 1) -> dict:
    """The final item of a request: the answer, why it ended, the guard's verdict (and how many requests
    were searched with it) and the token counts."""
    return {
        "text": rec.text if rec.refused else cut(rec.text, job.stop)[0],
        "finish_reason": _finish_reason(rec, job, eos),
        "igcritic": {
            "refused": rec.refused,
            "safe": rec.safe,
            "final_safety_state": _num(rec.final_safety_state),
            "cost": _num(rec.cost),
            "value": _num(rec.value),
            "budget": rec.budget,
            "method": rec.method,
            "cost_source": rec.cost_source,
            "steps": rec.steps,
            "retries": rec.retries,
            "fallback": rec.fallback,
            "seed": job.seed,
            "batch": batch,
            **_trace_of(rec),
        },
        "usage": {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": rec.new_tokens,
            "total_tokens": job.prompt_tokens + rec.new_tokens,
        },
    }


def _num(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (a refusal) is not JSON


def _trace_of(rec) -> dict:
    """``{"trace": ...}`` when the request sent ``"trace": true`` (every float JSON-safe, :func:`_num`), else
    nothing."""
    if rec.trace is None:
        return {}
    return {
        "trace": [
            {
                **d,
                "candidates": [
                    {k: _num(v) if isinstance(v, float) else v for k, v in c.items()} for c in d["candidates"]
                ],
            }
            for d in rec.trace
        ]
    }


def search_events(guard, jobs: list[Job]):
    """Per step, one item per job (``{}``: nothing new): first ``{"error"}`` or ``{"start"}``, then
    ``{"delta"}`` as blocks are accepted, then the :func:`outcome`. Jobs with equal settings are searched in
    one ``generate`` call, one group after another."""
    yield [{"error": j.error} if j.error else {"start": True} for j in jobs]
    groups: dict[str, list[int]] = {}
    for i, j in enumerate(jobs):
        if not j.error:
            groups.setdefault(j.group, []).append(i)
    tok, eos = guard.policy.tokenizer, guard.policy.eos_token_ids
    for idx in groups.values():
        events: queue.Queue = queue.Queue()
        sent = {i: "" for i in idx}

        def run(idx=idx, events=events) -> None:
            try:
                recs = guard.generate(
                    [jobs[i].prompt for i in idx],
                    seeds=[jobs[i].seed for i in idx],
                    on_block=lambda k, tokens: events.put(("block", idx[k], list(tokens))),
                    **jobs[idx[0]].settings,
                )
                events.put(("done", recs, None))
            except Exception as e:  # noqa: BLE001 - reported to the requests of this group
                events.put(("fail", e, None))

        threading.Thread(target=run, daemon=True).start()
        while True:
            kind, a, b = events.get()
            step: list[dict] = [{} for _ in jobs]
            if kind == "block":
                text = tok.decode(b, skip_special_tokens=True).rstrip("\ufffd")  # no half characters
                text, hit = cut(text, jobs[a].stop)
                if not hit and jobs[a].stop:  # hold back what may be the start of a stop string
                    text = text[: max(0, len(text) - max(len(x) for x in jobs[a].stop) + 1)]
                if text.startswith(sent[a]) and len(text) > len(sent[a]):
                    step[a] = {"delta": text[len(sent[a]) :]}
                    sent[a] = text
                    yield step
                continue
            for k, i in enumerate(idx):
                if kind == "fail":
                    log.error("search failed: %s", a, exc_info=a)
                    step[i] = {"error": f"the search failed ({type(a).__name__}: {a})", "status": 500}
                else:
                    step[i] = {**outcome(a[k], jobs[i], eos, len(idx)), "sent": sent[i]}
            yield step
            break


class GuardAPI(ls.LitAPI):
    """The inference worker: loads the guard once, decodes requests into jobs, streams their events."""

    def __init__(self, cfg: ServeConfig) -> None:
        super().__init__(
            max_batch_size=cfg.max_batch_size, batch_timeout=cfg.batch_timeout, spec=GuardSpec(cfg.model_name)
        )
        self.cfg = replace(cfg, search=None)  # the worker is spawned: a picklable config
        self.search = overrides(cfg.search)

    def setup(self, device) -> None:
        cfg = self.cfg
        self.guard = load_guard(
            cfg.critic_path, model=cfg.model, cost=cfg.cost, reward=cfg.reward, device=cfg.device
        )
        self.guard.search = self.guard.config(**self.search)

    def decode_request(self, request, **kwargs) -> Job:
        return decode(request.model_dump(exclude_unset=True), self.guard)

    def predict(self, x, **kwargs):
        jobs = x if isinstance(x, list) else [x]
        for step in search_events(self.guard, jobs):
            yield step if isinstance(x, list) else step[0]

    def encode_response(self, output, **kwargs):
        yield from output


# ---------------------------------------------------------------------------------------- the HTTP side


def _error(status: int, message: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": None, "code": None}}
    )


class GuardChatRequest(ChatCompletionRequest):
    """LitServe's request with ``seed`` and the extra fields kept (they are search fields, or an error);
    ``messages`` optional, so its absence gets our one-line 400 rather than pydantic's 422."""

    model_config = ConfigDict(extra="allow")
    messages: list[Any] | None = None  # type: ignore[assignment]
    seed: Any = None


class GuardSpec(OpenAISpec):
    """LitServe's OpenAI spec with the guard's request fields, outcome, per-request errors and streaming."""

    def __init__(self, model_name: str = "igcritic") -> None:
        super().__init__()
        self._model_name = model_name

    async def chat_completion(self, request: GuardChatRequest, background_tasks: BackgroundTasks):
        uid = uuid.uuid4()
        q: deque = deque()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=q, event=event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), request))
        items = self._items(self.data_streamer(q, event, send_status=True))
        try:
            first = await items.__anext__()
        except _Failed as e:
            self.response_buffer.pop(uid, None)
            return _error(e.status, e.message)
        if "error" in first:
            self.response_buffer.pop(uid, None)
            return _error(first.get("status", 400), first["error"])
        model = request.model or self._model_name
        if request.stream:
            return StreamingResponse(
                self._stream(uid, model, items), media_type="text/event-stream", background=background_tasks
            )
        try:
            async for item in items:
                if "error" in item:
                    return _error(item.get("status", 500), item["error"])
                if "text" in item:
                    return _completion(model, item)
            return _error(500, "the search ended without an answer")
        except _Failed as e:
            return _error(e.status, e.message)
        finally:
            self.response_buffer.pop(uid, None)

    @staticmethod
    async def _items(pipe):
        async for data, status in pipe:
            if status == LitAPIStatus.ERROR:
                raise _Failed(getattr(data, "status_code", 500), str(getattr(data, "detail", data)))
            item = json.loads(data)
            if item:
                yield item

    async def _stream(self, uid, model: str, items):
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())

        def chunk(delta: dict, finish=None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
            return f"data: {json.dumps({**body, 'choices': [choice], **extra})}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for item in items:
                if "error" in item:
                    yield _sse_error(item["error"])
                    return
                if "delta" in item:
                    yield chunk({"content": item["delta"]})
                elif "text" in item:
                    text, sent = item["text"], item["sent"]
                    rest = text[len(sent) :] if text.startswith(sent) else text
                    if rest:
                        yield chunk({"content": rest})
                    yield chunk({}, item["finish_reason"], usage=item["usage"], igcritic=item["igcritic"])
                    yield "data: [DONE]\n\n"
                    return
        except _Failed as e:
            yield _sse_error(e.message)
        finally:
            self.response_buffer.pop(uid, None)


def _sse_error(message: str) -> str:
    """An error after the stream's 200: an OpenAI error event (the client raises it)."""
    return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"


async def _invalid(request, exc) -> JSONResponse:
    """A body that does not parse (a field of the wrong type): one line, 400, not pydantic's list."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "body"
    return _error(400, f"{where}: {first.get('msg', 'invalid request')}")


class _Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _completion(model: str, item: dict):
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": item["text"]},
                "finish_reason": item["finish_reason"],
                "logprobs": None,
            }
        ],
        "usage": item["usage"],
        "igcritic": item["igcritic"],
    }


# ---------------------------------------------------------------------------------------- the command


def build_server(cfg: ServeConfig):
    """The LitServer of ``cfg`` (not started): one CPU or GPU worker holding the guard."""
    problems = []
    if cfg.max_batch_size < 1:
        problems.append(f"--max_batch_size {cfg.max_batch_size} must be >= 1")
    if cfg.batch_timeout < 0:
        problems.append(f"--batch_timeout {cfg.batch_timeout} must be >= 0")
    if problems:
        raise ServeError("; ".join(problems))
    accelerator = "cuda" if cfg.device.startswith("cuda") else "cpu"
    server = ls.LitServer(
        GuardAPI(cfg), accelerator=accelerator, devices=1, workers_per_device=1, timeout=cfg.request_timeout
    )
    server.app.add_exception_handler(RequestValidationError, _invalid)
    return server


def main(cfg: ServeConfig) -> int:
    """``igcritic serve CRITIC_PATH``: serve until interrupted."""
    load_guard(cfg.critic_path, model=cfg.model, cost=cfg.cost, reward=cfg.reward, device="cpu").check(
        **overrides(cfg.search)
    )  # fail here, in one line, rather than in the worker
    server = build_server(cfg)
    # `kill` and Ctrl-C (even one inherited ignored) raise KeyboardInterrupt here (`igcritic.interruptible`,
    # around every command), which LitServe turns into stopping its workers
    log.info("serving %s on http://%s:%d/v1/chat/completions", cfg.critic_path, cfg.host, cfg.port)
    server.run(host=cfg.host, port=cfg.port, generate_client_file=False, log_level="warning")
    return 0
