"""Bind a trained critic to its policy and scorers in one call, and answer prompts with guarded search.

    guard = igcritic.load_guard("checkpoints/<name>")                      # the critic's recorded policy
    guard = igcritic.load_guard("checkpoints/<name>", model=m, tokenizer=t, cost="...", reward="...")
    records = guard.generate(["How do I bake bread?"], budget=0.5, method="inferenceguard", mode="latent")

Command: ``igcritic generate CRITIC_PATH --prompts.texts '["..."]' | --prompts.source FILE | (stdin)
[--search.budget D] [--search.method M] [--out records.jsonl]`` (:func:`main` over :class:`GenerateConfig`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from igcritic import IgcriticError
from igcritic.critic import Critic, load_critic
from igcritic.policy import EMBEDDED_POLICY_ID, Policy, PolicyIdentity, embedded_model_dir, load_policy
from igcritic.prompts import STDIN, Message, PromptSource, as_prompt_texts, load_prompts
from igcritic.scorers import Scorer
from igcritic.search import (
    SEARCH_CONFIG_NAME,
    GuardRecord,
    OnBlock,
    SearchConfig,
    SearchConfigError,
    checked_config,
    search,
)

log = logging.getLogger(__name__)

__all__ = [
    "Guard",
    "GuardError",
    "GuardRecord",
    "SearchConfig",
    "SearchConfigError",
    "GenerateConfig",
    "SearchOverrides",
    "main",
    "load_guard",
]


class GuardError(IgcriticError):
    """The critic, the policy and the scorers cannot be bound together."""


@dataclass
class Guard:
    """A frozen policy, its critic and scorers, and the default search. Build it with :func:`load_guard`."""

    policy: Policy
    critic: Critic
    cost: Scorer | None = None
    """Cost scorer (exact mode); None: fully latent mode only."""
    reward: Scorer | None = None
    """Reward scorer (ranks candidates when ``critic=False``)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """Defaults of every :meth:`generate` call (from the artifact's ``search_config.json``)."""
    critic_path: str | None = None

    @property
    def budget(self) -> float | None:
        """The default budget d (None: pass one to :meth:`generate`)."""
        return self.search.budget

    def config(self, budget: float | None = None, **overrides: Any) -> SearchConfig:
        """The search config of one call: defaults, then ``overrides``, then ``budget``."""
        cfg = SearchConfig.from_dict({**asdict(self.search), **overrides})
        return cfg if budget is None else replace(cfg, budget=float(budget))

    def check(self, budget: float | None = None, **overrides: Any) -> SearchConfig:
        """The resolved search config of one call, or the one-line error ``generate`` would raise."""
        return checked_config(
            self.policy, self.config(budget, **overrides), self.critic, self.cost, self.reward
        )

    def generate(
        self,
        prompts: str | list[Message] | list[str | list[Message]],
        budget: float | None = None,
        *,
        seeds: list[int] | None = None,
        on_block: OnBlock | None = None,
        **overrides: Any,
    ) -> list[GuardRecord]:
        """Answer each prompt; ``overrides`` are :class:`SearchConfig` fields (method, mode, critic, N, ...).

        A prompt is a text or a chat conversation (``[{"role": "system"|"user"|"assistant", "content": ...}]``
        ending with a user turn), formatted by the policy's chat template; one text or one conversation may be
        passed alone. A record's ``prompt`` is :func:`igcritic.prompts.prompt_text` (a conversation of several
        messages as their JSON). ``seeds`` (one per prompt) make each answer the one its prompt gets alone
        with that seed, whatever shares its batch; ``on_block(i, tokens)`` sees each accepted block of prompt
        ``i`` (the answer tokens its surviving candidates agree on): what ``igcritic serve`` streams.

        Thread-safe without a lock: several threads may call one guard at once and each gets the records a
        sequential run gets (every call has its own generator, KV cache and latent capture; the policy's
        latent hook reads per-thread state). Scorer objects you pass in must be thread-safe themselves."""
        texts = as_prompt_texts(prompts)
        cfg = self.config(budget, **overrides)
        return search(self.policy, texts, cfg, self.critic, self.cost, self.reward, seeds, on_block)


def load_guard(
    critic_path: str | Path | Critic,
    model: str | nn.Module | Policy | None = None,
    tokenizer: Any = None,
    cost: str | Scorer | None = None,
    reward: str | Scorer | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    model_id: str | None = None,
    search: dict | SearchConfig | None = None,
) -> Guard:
    """Load a critic and bind it to its policy and scorers; refuse a critic trained on another policy.

    Args:
        critic_path: Exported critic folder (``igcritic export``), or a built :class:`igcritic.critic.Critic`.
        model: None (the critic's recorded policy, e.g. the embedded SmolLM2), a model id or folder, a loaded
            HF causal LM (then ``tokenizer`` too) or an :class:`igcritic.policy.Policy`.
        tokenizer: Tokenizer of a loaded ``model``.
        cost: Cost scorer object or spec for ``igcritic.scorers.load_scorer``; None: fully latent mode only.
        reward: Reward scorer object or spec; None: the critic value ranks candidates.
        device: Where the policy and the critic run.
        dtype: Policy dtype when it is loaded here (None: float32); a loaded model is cast only if given.
        model_id: Id of a loaded ``model`` to check against the critic (None: its ``name_or_path``).
        search: Search defaults over the artifact's ``search_config.json``.
    """
    critic, defaults = _load_critic(critic_path, device)
    want = _critic_identity(critic)
    policy = _bind_policy(model, tokenizer, want, device, dtype, model_id)
    if want is not None:
        bad = policy.identity.mismatches(want)
        if bad:
            raise GuardError(
                f"the critic was trained on another policy ({'; '.join(bad)}; policy != critic); "
                "load the critic's policy or train a critic on this one"
            )
    critic = critic.to(device=device, dtype=torch.float32).eval()
    cost_s, reward_s = _scorer(cost, "cost", device), _scorer(reward, "reward", device)
    if isinstance(search, SearchConfig):
        defaults = search
    elif search:
        SearchConfig.from_dict(search)  # unknown keys are an error
        defaults = replace(defaults, **search)
    if defaults.budget is None:  # the critic's training budget, else the cost scorer's hint
        hint = critic.config.budget
        if hint is None and cost_s is not None:
            hint = cost_s.info.budget_hint
        defaults = replace(defaults, budget=None if hint is None else float(hint))
    return Guard(
        policy=policy,
        critic=critic,
        cost=cost_s,
        reward=reward_s,
        search=defaults,
        critic_path=None if not isinstance(critic_path, (str, Path)) else str(critic_path),
    )


def _load_critic(critic_path, device: str) -> tuple[Critic, SearchConfig]:
    if not isinstance(critic_path, (str, Path)):
        if not isinstance(critic_path, Critic):
            raise GuardError(
                f"critic {type(critic_path).__name__} is not a Critic; pass an exported critic folder"
            )
        return critic_path, SearchConfig()
    path = Path(critic_path)
    if not path.is_dir():
        raise GuardError(
            f"critic folder {str(path)!r} does not exist; pass the folder written by igcritic export"
        )
    critic = load_critic(path, device=device)
    defaults = SearchConfig()
    if (path / SEARCH_CONFIG_NAME).exists():
        try:
            defaults = SearchConfig.from_file(path)
        except SearchConfigError as e:
            raise GuardError(f"{e}; re-export the critic") from None
    return critic, defaults


def _critic_identity(critic: Critic) -> PolicyIdentity | None:
    ident = critic.config.policy
    return None if ident is None else PolicyIdentity.from_dict(dict(ident))


def _bind_policy(
    model, tokenizer, want: PolicyIdentity | None, device: str, dtype: str | None, model_id: str | None
) -> Policy:
    layer = want.layer if want is not None else -1
    norm = want.norm if want is not None else "post"
    extra = want.extra_layers if want is not None else []
    if isinstance(model, Policy):
        return model
    if model is None or isinstance(model, (str, Path)):
        mid = str(model) if model is not None else (want.model_id if want is not None else None)
        if mid is None:
            raise GuardError(
                "the critic records no policy; pass model=... (an id, a folder or a loaded model)"
            )
        return load_policy(
            mid, layer=layer, norm=norm, extra_layers=extra, dtype=dtype or "float32", device=device
        )
    if not isinstance(model, nn.Module):
        raise GuardError(
            f"model={type(model).__name__} is not a model; pass an id, a folder, a loaded HF model or a "
            "Policy"
        )
    if tokenizer is None:
        raise GuardError("load_guard(model=<loaded model>) needs tokenizer=... too")
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    return load_policy(
        model_id or _loaded_id(model, want),
        layer=layer,
        norm=norm,
        extra_layers=extra,
        device=device,
        model=model,
        tokenizer=tokenizer,
    )


def _loaded_id(model: nn.Module, want: PolicyIdentity | None) -> str:
    """The id of a loaded model: its name_or_path (the embedded cache folder maps to the embedded id)."""
    name = str(
        getattr(model, "name_or_path", "")
        or getattr(getattr(model, "config", None), "_name_or_path", "")
        or ""
    )
    if not name:
        return want.model_id if want is not None else "unknown"
    try:
        if Path(name).resolve() == embedded_model_dir().resolve():
            return EMBEDDED_POLICY_ID
    except Exception:  # noqa: BLE001 - the embedded package may be absent: not the embedded model then
        pass
    return name


def _scorer(spec, role: str, device: str) -> Scorer | None:
    if spec is None or hasattr(spec, "score"):
        return spec
    if not isinstance(spec, str):
        raise GuardError(
            f"{role}={spec!r} is neither a scorer nor a spec; pass a scorer object or a spec string"
        )
    from igcritic.scorers import load_scorer

    return load_scorer(spec, role, device=device)


def _overrides_class(cls: type) -> type:
    """``cls`` with every field optional and None by default: the fields a command line sets, and no
    others."""
    hints = typing.get_type_hints(cls)
    fields = [
        (f.name, hints[f.name] | None, dataclasses.field(default=None)) for f in dataclasses.fields(cls)
    ]
    doc = f"Fields of {cls.__name__} to override; unset ones keep the critic artifact's defaults."
    try:  # the fields' help: the attribute docstrings of cls and its bases as an Args section (jsonargparse)
        from docstring_parser import parse_from_object

        params = [p for c in reversed(cls.__mro__[:-1]) for p in parse_from_object(c).params]
        args = [f"    {p.arg_name}: {' '.join(p.description.split())}" for p in params]
        doc += "\n\nArgs:\n" + "\n".join(args)
    except Exception:  # noqa: BLE001 - help text only
        pass
    return dataclasses.make_dataclass(f"{cls.__name__}Overrides", fields, namespace={"__doc__": doc})


SearchOverrides = _overrides_class(SearchConfig)
"""The ``--search.FIELD`` group of ``igcritic generate``: only the fields given override the artifact's."""


def overrides(search: Any) -> dict[str, Any]:
    """The fields of a :data:`SearchOverrides` (or a dict) that are set."""
    d = dataclasses.asdict(search) if dataclasses.is_dataclass(search) else dict(search or {})
    return {k: v for k, v in d.items() if v is not None}


@dataclass
class GenerateConfig:
    """Answer prompts with the guard and print the records or write them as JSONL."""

    critic_path: str
    """Exported critic folder (igcritic export)."""
    prompts: PromptSource = field(default_factory=lambda: PromptSource(source=STDIN, split=None))
    """Prompts to answer: ``--prompts.texts '["...", "..."]'``, ``--prompts.source FILE`` (text, JSONL, CSV;
    ``default``: the shipped set), or one prompt per stdin line (the default)."""
    out: Path | None = None
    """Write the records here as JSONL (must not exist or be empty) instead of printing them."""
    model: str | None = None
    """Policy id or folder (null: the critic's recorded policy)."""
    cost: str | None = None
    """Cost scorer spec (null: fully latent mode)."""
    reward: str | None = None
    """Reward scorer spec."""
    device: str = "cpu"
    """cpu or cuda."""
    search: SearchOverrides = field(default_factory=SearchOverrides)
    """Search parameters over the critic's search_config.json, e.g. ``--search.method beam``,
    ``--search.budget 0.5`` (unset: the artifact's, its budget else the critic's training budget),
    ``--search.num_candidates 16 --search.mode latent``."""


def main(cfg: GenerateConfig) -> list[GuardRecord]:
    """``igcritic generate CRITIC_PATH``: the records, printed or written to ``cfg.out``."""
    out = cfg.out
    if out is not None and Path(out).exists() and Path(out).stat().st_size > 0:
        raise GuardError(f"--out {str(out)!r} is not empty; pick a new file")
    texts = [p.prompt for p in load_prompts(cfg.prompts)[0]]
    guard = load_guard(cfg.critic_path, model=cfg.model, cost=cfg.cost, reward=cfg.reward, device=cfg.device)
    records = guard.generate(texts, **overrides(cfg.search))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    else:
        _print_records(records)
    return records


def _print_records(records: list[GuardRecord]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="guarded generation", show_lines=True)
    for col in ("prompt", "answer", "safe", "z", "refused", "steps", "retries", "s"):
        table.add_column(col)
    for r in records:
        table.add_row(
            r.prompt,
            r.text,
            str(r.safe),
            f"{r.final_safety_state:.3g}",
            str(r.refused),
            str(r.steps),
            str(r.retries),
            f"{r.seconds:.2f}",
        )
    Console().print(table)
