"""igcritic: InferenceGuard's latent safety critic, trained with Lightning and served in guarded decoding.

Public API: :func:`load_guard`, :class:`Critic`, :class:`CriticConfig`, :func:`load_critic`,
:class:`IgcriticError`. Imports are lazy so ``import igcritic`` stays cheap. :func:`to_json` is the one
JSON writer of every stage (NaN and inf become null: every file the project writes is valid JSON).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import PurePath
from typing import Any

__version__ = "0.1.0"


class IgcriticError(ValueError):
    """Base of every stage's error (CriticError, StoreError, PolicyError, SearchConfigError, ...): bad input
    or state, told in one line that names the fix. The ``igcritic`` command prints it and exits 2; a
    ValueError subclass, so callers that catch ValueError keep working."""


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


_LAZY = {
    "load_guard": "igcritic.guard",
    "Guard": "igcritic.guard",
    "Critic": "igcritic.critic",
    "CriticConfig": "igcritic.critic",
    "load_critic": "igcritic.critic",
}

__all__ = ["__version__", "IgcriticError", "json_safe", "to_json", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'igcritic' has no attribute {name!r}")
