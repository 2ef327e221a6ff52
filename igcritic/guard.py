"""Bind a trained critic to its policy and scorers in one call, and answer prompts with guarded search.

    guard = igcritic.load_guard("checkpoints/<name>")                      # the critic's recorded policy
    guard = igcritic.load_guard("checkpoints/<name>", model=m, tokenizer=t, cost="...", reward="...")
    records = guard.generate(["How do I bake bread?"], budget=0.5, method="inferenceguard", mode="latent")

Command: ``igcritic generate CRITIC_PATH --prompts "..." | --prompt_file FILE | (stdin) [--budget D]
[--method M] [--out records.jsonl]`` (:func:`generate_main`).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from igcritic.export import SEARCH_CONFIG_NAME
from igcritic.policy import EMBEDDED_POLICY_ID, Policy, PolicyIdentity, embedded_model_dir, load_policy
from igcritic.prompts import PromptError, read_prompt_rows
from igcritic.search import CriticLike, GuardRecord, ScorerLike, SearchConfig, SearchConfigError, search

log = logging.getLogger(__name__)

__all__ = [
    "Guard",
    "GuardError",
    "GuardRecord",
    "SearchConfig",
    "SearchConfigError",
    "generate_main",
    "load_guard",
]


class GuardError(ValueError):
    """The critic, the policy and the scorers cannot be bound together."""


@dataclass
class Guard:
    """A frozen policy, its critic and scorers, and the default search. Build it with :func:`load_guard`."""

    policy: Policy
    critic: CriticLike
    cost: ScorerLike | None = None
    """Cost scorer (exact mode); None: fully latent mode only."""
    reward: ScorerLike | None = None
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

    def generate(
        self, prompts: list[str] | str, budget: float | None = None, **overrides: Any
    ) -> list[GuardRecord]:
        """Answer each prompt; ``overrides`` are :class:`SearchConfig` fields (method, mode, critic, N, ...).

        Thread-safe without a lock: several threads may call one guard at once and each gets the records a
        sequential run gets (every call has its own generator, KV cache and latent capture; the policy's
        latent hook reads per-thread state). Scorer objects you pass in must be thread-safe themselves."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return search(
            self.policy, prompts, self.config(budget, **overrides), self.critic, self.cost, self.reward
        )


def load_guard(
    critic_path: str | Path | CriticLike,
    model: str | nn.Module | Policy | None = None,
    tokenizer: Any = None,
    cost: str | ScorerLike | None = None,
    reward: str | ScorerLike | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    model_id: str | None = None,
    search: dict | SearchConfig | None = None,
) -> Guard:
    """Load a critic and bind it to its policy and scorers; refuse a critic trained on another policy.

    Args:
        critic_path: Exported critic folder (``igcritic export``), or an already built critic object.
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
    if isinstance(critic, nn.Module):
        critic = critic.to(device=device, dtype=torch.float32).eval()
    cost_s, reward_s = _scorer(cost, "cost", device), _scorer(reward, "reward", device)
    if isinstance(search, SearchConfig):
        defaults = search
    elif search:
        SearchConfig.from_dict(search)  # unknown keys are an error
        defaults = replace(defaults, **search)
    if defaults.budget is None:  # the critic's training budget, else the cost scorer's hint
        hint = getattr(getattr(critic, "config", None), "budget", None)
        if hint is None and cost_s is not None:
            hint = getattr(getattr(cost_s, "info", None), "budget_hint", None)
        defaults = replace(defaults, budget=None if hint is None else float(hint))
    return Guard(
        policy=policy,
        critic=critic,
        cost=cost_s,
        reward=reward_s,
        search=defaults,
        critic_path=None if not isinstance(critic_path, (str, Path)) else str(critic_path),
    )


def _load_critic(critic_path, device: str) -> tuple[CriticLike, SearchConfig]:
    if not isinstance(critic_path, (str, Path)):
        if not isinstance(critic_path, CriticLike):
            raise GuardError(
                f"critic {type(critic_path).__name__} lacks safe_prob/value/cost; pass an exported critic folder"
            )
        return critic_path, SearchConfig()
    path = Path(critic_path)
    if not path.is_dir():
        raise GuardError(
            f"critic folder {str(path)!r} does not exist; pass the folder written by igcritic export"
        )
    from igcritic.critic import load_critic

    critic = load_critic(path, device=device)
    defaults = SearchConfig()
    cfg_file = path / SEARCH_CONFIG_NAME
    if cfg_file.exists():
        try:
            defaults = SearchConfig.from_dict(json.loads(cfg_file.read_text()))
        except (json.JSONDecodeError, SearchConfigError) as e:
            raise GuardError(f"{cfg_file} is not a valid search config ({e}); re-export the critic") from None
    return critic, defaults


def _critic_identity(critic) -> PolicyIdentity | None:
    cfg = getattr(critic, "config", None)
    ident = getattr(cfg, "policy", None) if cfg is not None else None
    if ident is None:
        return None
    return ident if isinstance(ident, PolicyIdentity) else PolicyIdentity.from_dict(dict(ident))


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
            f"model={type(model).__name__} is not a model; pass an id, a folder, a loaded HF model or a Policy"
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


def _scorer(spec, role: str, device: str) -> ScorerLike | None:
    if spec is None or hasattr(spec, "score"):
        return spec
    if not isinstance(spec, str):
        raise GuardError(
            f"{role}={spec!r} is neither a scorer nor a spec; pass a scorer object or a spec string"
        )
    from igcritic.scorers import load_scorer

    return load_scorer(spec, role, device=device)


def read_prompts(prompts: list[str] | None = None, prompt_file: Path | None = None) -> list[str]:
    """Prompts from the arguments, else a file (.jsonl/.csv with a ``prompt`` field, else one per line), else
    stdin lines."""
    if prompts:
        return list(prompts)
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise GuardError(f"--prompt_file {str(path)!r} does not exist; pass a text or JSONL file")
        try:
            out = [row["prompt"] for row in read_prompt_rows(path)]
        except PromptError as e:
            raise GuardError(str(e)) from None
    else:
        out = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not out:
        raise GuardError("no prompts: pass --prompts, --prompt_file or prompts on stdin")
    return out


def generate_main(
    critic_path: str,
    prompts: list[str] | None = None,
    prompt_file: Path | None = None,
    budget: float | None = None,
    method: str | None = None,
    out: Path | None = None,
    model: str | None = None,
    cost: str | None = None,
    reward: str | None = None,
    device: str = "cpu",
    search: dict[str, Any] | None = None,
) -> list[GuardRecord]:
    """Answer prompts with the guard and print the records or write them as JSONL.

    Args:
        critic_path: Exported critic folder (igcritic export).
        prompts: Prompts to answer; else --prompt_file, else one prompt per stdin line.
        prompt_file: Text file (one prompt per line) or JSONL with a "prompt" key.
        budget: Budget d (null: the critic's search_config.json, else its training budget, else the cost
            scorer's hint).
        method: inferenceguard, plain, best_of_n, beam, args or recontrol (null: the critic's default).
        out: Write the records here as JSONL (must not exist or be empty) instead of printing them.
        model: Policy id or folder (null: the critic's recorded policy).
        cost: Cost scorer spec (null: fully latent mode).
        reward: Reward scorer spec.
        device: cpu or cuda.
        search: More search parameters, e.g. {"num_candidates": 16, "mode": "latent"} or {"guidance": "lagrangian"}.
    """
    if out is not None and Path(out).exists() and Path(out).stat().st_size > 0:
        raise GuardError(f"--out {str(out)!r} is not empty; pick a new file")
    texts = read_prompts(prompts, prompt_file)
    guard = load_guard(critic_path, model=model, cost=cost, reward=reward, device=device)
    overrides = dict(search or {})
    if method is not None:
        overrides["method"] = method
    records = guard.generate(texts, budget=budget, **overrides)
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
