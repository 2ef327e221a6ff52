"""igcritic: InferenceGuard's latent safety critic, trained with Lightning and served in guarded decoding.

Public API: :func:`load_guard`, :class:`Critic`, :class:`CriticConfig`, :func:`load_critic`,
:class:`IgcriticError`, :class:`Interrupted`. Imports are lazy so ``import igcritic`` stays cheap.
:func:`to_json` is the one JSON writer of every stage (NaN and inf become null: every file the project
writes is valid JSON); :func:`write_atomic` the one way a file is replaced whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
from pathlib import Path, PurePath
from typing import Any

__version__ = "0.1.0"


class IgcriticError(ValueError):
    """Base of every stage's error (CriticError, StoreError, PolicyError, SearchConfigError, ...): bad input
    or state, told in one line that names the fix. The ``igcritic`` command prints it and exits 2; a
    ValueError subclass, so callers that catch ValueError keep working."""


def one_line(e: BaseException | str, limit: int | None = None, first_line: bool = False) -> str:
    """An exception's message (or a text) on one line, as a one-line error quotes it: whitespace runs
    collapsed, or (``first_line``) only its first line, for libraries whose later lines are a dump; an
    exception's type name when its message is empty; at most ``limit`` characters."""
    text = str(e).strip()
    text = (text.splitlines()[0] if text else "") if first_line else " ".join(text.split())
    if not text and isinstance(e, BaseException):
        text = type(e).__name__
    return text[:limit] if limit is not None else text


def usage_error(parser: Any, message: str, ex: Exception | None = None) -> None:
    """A command-line or config error of a jsonargparse ``parser`` as ONE line on stderr (the problem, a
    "did you mean" for a misspelt option, where the help is), then exit 2: no usage dump above it."""
    import difflib
    import re
    import sys

    parser = getattr(ex, "subcommand_parser", None) or parser
    line = one_line(message)
    options = {o.lstrip("-") for o in getattr(parser, "_option_string_actions", {}) if o.startswith("--")}
    for sub in getattr(getattr(parser, "_subcommands_action", None), "choices", {}).values():
        options |= {o.lstrip("-") for o in sub._option_string_actions if o.startswith("--")}
    typos = re.findall(r"--([\w.]+)|'([\w.]+)'", line)
    for key in dict.fromkeys(a or b for a, b in typos):
        if key not in options and (close := difflib.get_close_matches(key, options, n=1, cutoff=0.6)):
            line += f"; did you mean --{close[0]}?"
    prog = str(getattr(parser, "prog", "igcritic")).replace(" [options]", "")
    sys.stderr.write(f"error: {line} (see {prog} --help)\n")
    sys.exit(2)


def json_safe(x: Any) -> Any:
    """``x`` as plain JSON values: NaN/inf -> None, numpy/torch scalars and arrays -> Python numbers and
    lists, paths -> str, dataclasses -> dicts."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, PurePath):
        return str(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return json_safe(dataclasses.asdict(x))
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # numpy or torch scalar/array
        return json_safe(x.tolist())
    return x


def to_json(x: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(x)``; refuses anything still not JSON (no bare NaN ever)."""
    return json.dumps(json_safe(x), allow_nan=False, **kwargs)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` at once: written to a sibling named by this process, then renamed, so a
    kill leaves the old file or the new one (never half of it) and two processes writing the same file never
    share a temporary. The temporary is removed if the write fails."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (Ctrl-C, SLURM pre-emption, ``kill``) stopped a command. A KeyboardInterrupt, so no
    ``except Exception`` swallows it on the way up; the command that kept its finished work says so in
    ``saved`` and names the flags that continue it in ``resume`` (e.g. ``{"--resume": "true"}``), or, with
    ``rerun``, says the same command starts it again (nothing was kept to continue). The ``igcritic`` command
    prints it as one line with that command and exits ``128 + signum`` (130, 143).
    """

    def __init__(
        self,
        signum: int = signal.SIGINT,
        saved: str = "",
        resume: dict[str, str] | None = None,
        rerun: bool = False,
    ):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.saved, self.resume, self.rerun = int(signum), saved, dict(resume or {}), rerun

    @classmethod
    def of(
        cls, e: KeyboardInterrupt, saved: str, resume: dict[str, str] | None = None, rerun: bool = False
    ) -> Interrupted:
        """``e`` (a plain Ctrl-C or an :class:`Interrupted`) told with what was kept and how to go on."""
        return cls(getattr(e, "signum", signal.SIGINT), saved, resume, rerun)


@contextlib.contextmanager
def interruptible(sigterm: bool = True):
    """Within: SIGTERM raises :class:`Interrupted` like Ctrl-C raises KeyboardInterrupt, so writers close
    cleanly and the command reports what it kept (``sigterm=False`` leaves SIGTERM to Lightning's own
    handling). So does a SIGINT inherited ignored, as a background job of a non-interactive shell gets it
    (``nohup igcritic collect ... &`` from a script, a CI job, an agent's tool); an inherited default SIGINT
    stays Python's KeyboardInterrupt. The previous handlers come back on exit; a no-op off the main thread."""

    def interrupt(signum, frame):
        raise Interrupted(signum)

    old = {}
    try:
        if sigterm:
            old[signal.SIGTERM] = signal.signal(signal.SIGTERM, interrupt)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            old[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


_LAZY = {
    "load_guard": "igcritic.guard",
    "Guard": "igcritic.guard",
    "Critic": "igcritic.critic",
    "CriticConfig": "igcritic.critic",
    "load_critic": "igcritic.critic",
}

__all__ = [
    "__version__",
    "IgcriticError",
    "Interrupted",
    "interruptible",
    "json_safe",
    "one_line",
    "to_json",
    "usage_error",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'igcritic' has no attribute {name!r}")
