"""igcritic: InferenceGuard's latent safety critic, trained with Lightning and served in guarded decoding.

Public API: :func:`load_guard`, :class:`Critic`, :class:`CriticConfig`, :func:`load_critic`,
:class:`IgcriticError`. Imports are lazy so ``import igcritic`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"


class IgcriticError(ValueError):
    """Base of every stage's error (CriticError, StoreError, PolicyError, SearchConfigError, ...): bad input
    or state, told in one line that names the fix. The ``igcritic`` command prints it and exits 2; a
    ValueError subclass, so callers that catch ValueError keep working."""


_LAZY = {
    "load_guard": "igcritic.guard",
    "Guard": "igcritic.guard",
    "Critic": "igcritic.critic",
    "CriticConfig": "igcritic.critic",
    "load_critic": "igcritic.critic",
}

__all__ = ["__version__", "IgcriticError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'igcritic' has no attribute {name!r}")
