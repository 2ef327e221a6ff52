"""igcritic: InferenceGuard's latent safety critic, trained with Lightning and served in guarded decoding.

Public API: :func:`load_guard`, :class:`Critic`, :class:`CriticConfig`, :func:`load_critic`,
:class:`IgcriticError`, :class:`Interrupted`. Imports are lazy so ``import igcritic`` stays cheap.
"""

from __future__ import annotations

import contextlib
import signal

__version__ = "0.1.0"


class IgcriticError(ValueError):
    """Base of every stage's error (CriticError, StoreError, PolicyError, SearchConfigError, ...): bad input
    or state, told in one line that names the fix. The ``igcritic`` command prints it and exits 2; a
    ValueError subclass, so callers that catch ValueError keep working."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (Ctrl-C, SLURM pre-emption, ``kill``) stopped a command. A KeyboardInterrupt, so no
    ``except Exception`` swallows it on the way up; the command that kept its finished work says so in
    ``saved`` and names the flags that continue it in ``resume`` (e.g. ``{"--resume": "true"}``). The
    ``igcritic`` command prints it as one line with the resume command and exits ``128 + signum`` (130, 143).
    """

    def __init__(self, signum: int = signal.SIGINT, saved: str = "", resume: dict[str, str] | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.saved, self.resume = int(signum), saved, dict(resume or {})

    @classmethod
    def of(cls, e: KeyboardInterrupt, saved: str, resume: dict[str, str] | None = None) -> Interrupted:
        """``e`` (a plain Ctrl-C or an :class:`Interrupted`) told with what was kept and how to go on."""
        return cls(getattr(e, "signum", signal.SIGINT), saved, resume)


@contextlib.contextmanager
def sigterm_interrupts():
    """Within: SIGTERM raises :class:`Interrupted` like Ctrl-C raises KeyboardInterrupt, so writers close
    cleanly and the command reports what it kept (a no-op off the main thread)."""

    def interrupt(signum, frame):
        raise Interrupted(signum)

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


_LAZY = {
    "load_guard": "igcritic.guard",
    "Guard": "igcritic.guard",
    "Critic": "igcritic.critic",
    "CriticConfig": "igcritic.critic",
    "load_critic": "igcritic.critic",
}

__all__ = ["__version__", "IgcriticError", "Interrupted", "sigterm_interrupts", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'igcritic' has no attribute {name!r}")
