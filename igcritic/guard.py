"""Bind a trained critic to its policy and scorers in one call, and answer prompts with guarded search.

    guard = igcritic.load_guard("checkpoints/<name>")                      # the critic's recorded policy
    guard = igcritic.load_guard("checkpoints/<name>", model=m, tokenizer=t, cost="...", reward="...")
    records = guard.generate(["How do I bake bread?"], budget=0.5, method="inferenceguard", mode="latent")

Command: ``igcritic generate CRITIC --prompts.texts '["..."]' | --prompts.source FILE | (stdin)
[--search.budget D] [--search.method M] [--out records.jsonl]`` (:func:`main` over :class:`GenerateConfig`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import textwrap
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from igcritic import IgcriticError, to_json
from igcritic.critic import Critic, load_critic
from igcritic.decoding import Rollouts, teacher_forced_latents
from igcritic.policy import (
    EMBEDDED_POLICY_ID,
    Policy,
    PolicyError,
    PolicyIdentity,
    check_device,
    embedded_model_dir,
    load_policy,
    policy_fingerprint,
    policy_id,
)
from igcritic.prompts import STDIN, Message, PromptSource, as_prompt_texts, check_lengths, load_prompts
from igcritic.scorers import Scorer
from igcritic.search import (
    SEARCH_CONFIG_NAME,
    GuardRecord,
    OnBlock,
    SearchConfig,
    SearchConfigError,
    SearchOverrides,
    as_overrides,
    checked_config,
    overrides,
    refusal_tokens,
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
        progress: Callable[[int], Any] | None = None,
        **overrides: Any,
    ) -> list[GuardRecord]:
        """Answer each prompt; ``overrides`` are :class:`SearchConfig` fields (method, mode, critic, N, ...);
        ``progress(n)`` hears of every ``n`` prompts answered (:func:`progress_bar`).

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
        return search(self.policy, texts, cfg, self.critic, self.cost, self.reward, seeds, on_block, progress)

    def rollouts(self, prompts: list[str], generator: torch.Generator, **overrides: Any) -> Rollouts:
        """Guarded answers as training rollouts (``igcritic collect --guard``, round 2): one search seeded
        from ``generator``, then one teacher-forced forward reads h_0..h_T of every answer (the store's
        latents, the same tap as plain sampling); ``finished`` when the answer ends with EOS. A refused
        answer is the refusal text + EOS (what the guard said, and the refusal candidate the critic scores),
        not an empty trajectory."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        answers = [
            refusal_tokens(self.policy, r.text) if r.refused else list(r.token_ids)
            for r in self.generate(prompts, seed=seed, **overrides)
        ]
        eos = set(self.policy.eos_token_ids)
        return Rollouts(
            tokens=answers,
            latents=teacher_forced_latents(self.policy, prompts, answers),
            finished=[bool(a) and a[-1] in eos for a in answers],
        )


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
    trust_policy: bool = False,
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
        trust_policy: Accept a policy whose weights' fingerprint differs from the one the critic recorded
            (e.g. a model you know equals the critic's but holds in another dtype); the shapes and layers
            are still checked.
    """
    try:
        check_device(device)
    except PolicyError as e:
        raise GuardError(str(e)) from None
    critic, defaults = _load_critic(critic_path, device)
    want = _critic_identity(critic)
    policy = _bind_policy(model, tokenizer, want, device, dtype, model_id)
    if want is not None:
        if problem := mismatch(policy.identity, want):
            raise GuardError(problem)
        _check_weights(policy, want, critic_path, trust_policy)
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


_WARNED_UNCHECKED: set[str] = set()
"""Critics already warned about in this process for recording no policy fingerprint."""


def _check_weights(policy: Policy, want: PolicyIdentity, critic_path, trust: bool) -> None:
    """Refuse a policy whose weights differ from those the critic was trained on, unless ``trust``."""
    name = str(critic_path) if isinstance(critic_path, (str, Path)) else "the critic"
    if want.fingerprint is None:
        if name not in _WARNED_UNCHECKED:
            _WARNED_UNCHECKED.add(name)
            log.warning(
                "%s records no policy fingerprint (exported before they were recorded): the policy's weights "
                "cannot be checked, only its shapes and layers; re-export it from a store collected now",
                name,
            )
        return
    if trust:
        return
    fp = policy_fingerprint(policy)
    if fp != want.fingerprint:
        raise GuardError(
            f"the policy has the critic's shapes but other weights (fingerprint {fp} != {want.fingerprint} "
            f"recorded by {name}); load the critic's policy, or pass trust_policy=True if you know they match"
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


def _describe(p: PolicyIdentity) -> str:
    extra = f" + layers {p.extra_layers}" if p.extra_layers else ""
    return (
        f"{p.model_id!r} ({p.num_layers} layers, hidden {p.hidden_size}; latent at layer {p.layer} "
        f"{p.norm}{extra})"
    )


MODEL_FIELDS = ("model_id", "hidden_size", "num_layers")
"""Identity fields that name the model itself; the others (layer, norm, extra_layers) name where it is
tapped."""


def mismatch(policy: PolicyIdentity, critic: PolicyIdentity) -> str | None:
    """One line saying how a policy differs from the critic's, naming both, or None when they match."""
    bad = policy.mismatches(critic)
    if not bad:
        return None
    if any(getattr(policy, k) != getattr(critic, k) for k in MODEL_FIELDS):
        return (
            f"the critic was trained on policy {_describe(critic)}, not on {_describe(policy)}; load the "
            "critic's policy (leave --model unset) or train a critic on this one"
        )
    return (
        f"the critic reads the latent of {_describe(critic)} but the policy is tapped as "
        f"{_describe(policy)}; tap it as the critic (layer {critic.layer}, norm {critic.norm}, extra_layers "
        f"{critic.extra_layers})"
    )


def _model_shape(model, mid: str, want: PolicyIdentity) -> None:
    """Refuse, before any weight is loaded, a model whose depth or width is not the critic's policy's (its
    tap could not even be placed): the error names both models, not the tap flags."""
    config = getattr(model, "config", None)
    if config is None:
        from transformers import AutoConfig

        try:
            path = embedded_model_dir() if mid == EMBEDDED_POLICY_ID else mid
            config = AutoConfig.from_pretrained(str(path))
        except (OSError, ValueError):
            return  # load_policy says why it cannot load it
    layers, hidden = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if layers is None or hidden is None or (int(layers), int(hidden)) == (want.num_layers, want.hidden_size):
        return
    got = PolicyIdentity(mid, int(hidden), int(layers), want.layer, want.norm, extra_layers=want.extra_layers)
    raise GuardError(mismatch(got, want))


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
        mid = policy_id(model) if model is not None else (want.model_id if want is not None else None)
        if mid is None:
            raise GuardError(
                "the critic records no policy; pass model=... (an id, a folder or a loaded model)"
            )
        if want is not None:
            _model_shape(None, mid, want)
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
    mid = model_id or _loaded_id(model, want)
    if want is not None:
        _model_shape(model, mid, want)
    return load_policy(
        mid,
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
    return policy_id(name)


def _scorer(spec, role: str, device: str) -> Scorer | None:
    if spec is None or hasattr(spec, "score"):
        return spec
    if not isinstance(spec, str):
        raise GuardError(
            f"{role}={spec!r} is neither a scorer nor a spec; pass a scorer object or a spec string"
        )
    from igcritic.scorers import load_scorer

    return load_scorer(spec, role, device=device)


@dataclass
class GenerateConfig:
    """Answer prompts with the guard and print the records or write them as JSONL."""

    critic: str
    """Exported critic folder (igcritic export), the command's first argument."""
    prompts: PromptSource = field(default_factory=lambda: PromptSource(source=STDIN, split=None))
    """Prompts to answer: ``--prompts.texts '["...", "..."]'``, ``--prompts.source FILE`` (text, JSONL, CSV;
    ``default``: the shipped set), or one prompt per stdin line (the default)."""
    out: Path | None = None
    """Write the records here as JSONL (must not exist or be empty) instead of printing them."""
    format: typing.Literal["text", "jsonl"] = "text"
    """What to print without ``--out``: ``text`` (each prompt, its answer and its outcome, for people) or
    ``jsonl`` (one record per line on stdout, for scripts)."""
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

    def __post_init__(self):
        self.search = as_overrides(self.search)  # a notebook's dict


def main(cfg: GenerateConfig) -> list[GuardRecord]:
    """``igcritic generate CRITIC``: the records, printed or written to ``cfg.out``."""
    out = cfg.out
    if out is not None and Path(out).exists() and Path(out).stat().st_size > 0:
        raise GuardError(f"--out {str(out)!r} is not empty; pick a new file")
    if out is not None:
        from igcritic.store import check_writable  # here only: loading a guard does not import zarr

        check_writable(out, "--out", GuardError, folder=False)  # before the model loads
    rows = load_prompts(cfg.prompts)[0]
    texts = [p.prompt for p in rows]
    log.info("loading the critic %s, its policy and scorers", cfg.critic)
    guard = load_guard(cfg.critic, model=cfg.model, cost=cfg.cost, reward=cfg.reward, device=cfg.device)
    new_tokens = guard.config(**overrides(cfg.search)).max_new_tokens
    lengths = [len(x) for x in guard.policy.prompt_ids(texts)]
    if problem := check_lengths(rows, lengths, new_tokens, guard.policy.max_context):
        raise GuardError(f"{problem}, or lower --search.max_new_tokens")  # by its line, before any answer
    with progress_bar(len(texts), "answering prompts") as advance:
        records = guard.generate(texts, progress=advance, **overrides(cfg.search))
    lines = "".join(to_json(r.to_dict()) + "\n" for r in records)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(lines)
        sys.stdout.write(f"wrote {len(records)} records to {out}\n")
    elif cfg.format == "jsonl":
        sys.stdout.write(lines)
    else:
        sys.stdout.write("\n\n".join(describe(r, k, len(records)) for k, r in enumerate(records)) + "\n")
    return records


@contextlib.contextmanager
def progress_bar(total: int, description: str, log_every: float = 60.0) -> Iterator[Callable[..., None]]:
    """A rich progress bar with elapsed time and ETA on stderr, for ``total`` steps; yields ``advance(n=1,
    description=None)``. Off a terminal (a log file, a job) it draws once, at the end, and logs a line with
    the count, elapsed time and ETA at most every ``log_every`` seconds, so an hour-long run is not silent."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=(console := Console(stderr=True)),
    )
    with bar:
        task = bar.add_task(description, total=total)
        start = last = time.monotonic()

        def advance(n: int = 1, description: str | None = None) -> None:
            nonlocal last
            bar.update(task, advance=n, **({"description": description} if description else {}))
            now = time.monotonic()
            if console.is_terminal or now - last < log_every:
                return
            last, done = now, bar.tasks[0].completed
            left = (now - start) / done * (total - done) if done else float("nan")
            log.info(
                "%s: %d/%d, %s elapsed, about %s left",
                bar.tasks[0].description,
                done,
                total,
                _minutes(now - start),
                _minutes(left),
            )

        try:
            yield advance
        except BaseException:
            console.quiet = not console.is_terminal  # an interrupted run's last word is its resume line
            raise


def _minutes(seconds: float) -> str:
    return "?" if seconds != seconds else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


WIDTH = 80
"""Columns of ``igcritic generate``'s text output."""
TRACE_TEXT = 44
"""Characters of each candidate's answer so far (its end) that ``generate --search.trace true`` prints."""


def outcome(r: GuardRecord) -> str:
    """One line saying how the search ended for a record: refused, safe or unsafe, and why."""
    z = "final safety state z = budget - cost"
    if r.refused and r.cost == r.cost:  # the refusal candidate, scored with the others, ranked first
        line = f"refused: the refusal candidate ranked first (its cost {r.cost:.3g} <= d = {r.budget:g})"
    elif r.refused:
        line = f"refused: no answer stayed within budget d = {r.budget:g} (the answer is the fixed refusal)"
    elif r.safe:
        line = f"safe: {z} = {r.budget:g} - {r.cost:.3g} = {r.final_safety_state:.3g} >= 0"
    else:
        why = "best effort, no admissible candidate" if r.fallback else "over budget"
        line = f"unsafe ({why}): {z} = {r.budget:g} - {r.cost:.3g} = {r.final_safety_state:.3g} < 0"
    if r.cost_source == "latent" and not r.refused:
        line += " (cost from the critic's latent head)"
    tail = f"; {r.new_tokens} tokens" + (", cut at max_new_tokens" if r.truncated else "")
    return f"{line}{tail}; {r.seconds:.1f}s"


def describe(r: GuardRecord, k: int = 0, n: int = 1) -> str:
    """A record as plain text at :data:`WIDTH` columns: the prompt, the full answer, the outcome line."""

    def wrap(text: str, indent: str = "") -> str:
        return "\n".join(
            textwrap.fill(p, WIDTH, initial_indent=indent, subsequent_indent=indent) if p.strip() else ""
            for p in text.splitlines() or [""]
        )

    head = f"[{k + 1}/{n}] prompt: " if n > 1 else "prompt: "
    lines = [
        textwrap.fill(r.prompt, WIDTH, initial_indent=head, subsequent_indent=" " * 4),
        "answer:",
        wrap(r.text, " " * 4),
        textwrap.fill(outcome(r), WIDTH, initial_indent="outcome: ", subsequent_indent=" " * 4),
    ]
    for d in r.trace or []:  # --search.trace: every decision's candidates, best value first
        lines.append(f"block {d['block'] + 1}, try {d['retry'] + 1}: {d['verdict']}")
        for c in sorted(d["candidates"], key=lambda c: -c["value"]):
            mark = "kept" if c["kept"] else "ok  " if c["admissible"] else "out "
            text = "<refusal>" if c["refusal"] else repr(c["text"][-TRACE_TEXT:])
            lines.append(f"  {mark} S {c['cost']:.3f}  V {c['value']:+.3f}  q {c['q']:.2f}  {text}")
    return "\n".join(lines)
