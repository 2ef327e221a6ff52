"""Cost and reward scorers behind one protocol: prefix scores ``S_t`` for a batch of (prompt, response) pairs.

Five kinds, chosen by a spec string (:func:`load_scorer`):

- ``embedded``: the shipped classifiers (:mod:`igcritic.scorers.embedded`), trained in ``data_prep/`` on the
  embedded policy's answers labelled by LLM reading agents (not people). Cost = p(harmful compliance), its
  running max over prefixes, so the budget ``d = 0.5`` means "no prefix looked like harmful compliance with
  p > 0.5"; reward = expected helpfulness in [0, 1].
- ``embedded-judge``: a classifier with other features and other training prompts than the cost, for
  grading answers in ``igcritic eval`` (never for steering); it also classifies into the reading labels.
- ``beaver:<folder>``: a safe-rlhf score model (``LlamaForScore``: ``model.*`` + ``score_head.*``) loaded with
  plain transformers. Causal, so ONE forward per trajectory gives every prefix score. Cost > 0 is unsafe.
- ``seqcls:<folder>[:label_index]``: any ``AutoModelForSequenceClassification``, scored at a stride.
- ``guardlm:<folder>[:preset]``: a generative guard model (Llama Guard 3, Qwen3Guard-Gen, ShieldGemma) read as
  P(unsafe) of its verdict token (:mod:`igcritic.scorers.guardlm`), scored at a stride.

What a scorer sees of a conversation (a prompt string holding several messages, :mod:`igcritic.prompts`):
the ``embedded`` cost and reward read it as the policy does, through the policy's chat template
(:meth:`igcritic.policy.Policy.format_prompt`); ``beaver:`` in safe-rlhf's own dialogue format
(:func:`~igcritic.scorers.beaver.beaver_prompt`: earlier turns included, a system message opening the first
user turn); ``seqcls:`` and ``embedded-judge`` (MiniLM) its :func:`igcritic.prompts.transcript`, one
``role: content`` line per message; ``guardlm:`` through the guard model's own chat template
(:func:`~igcritic.scorers.guardlm.guard_chat`: every message, then the response as the last assistant turn).
A one-turn prompt is its text everywhere, as before.

Prefix convention (docs/design.md section 2): ``prefix_texts[i]`` holds the T_i + 1 decoded response prefixes
``y_<=t`` (``""`` first, the full response last) and the scorer returns ``S_0..S_T`` as float32.
"""

from __future__ import annotations

from pathlib import Path

from igcritic import one_line
from igcritic.scorers.base import (
    ASSET_DIR,
    ROLES,
    Role,
    Scorer,
    ScorerError,
    ScorerInfo,
    forward_fill,
    stride_points,
)
from igcritic.scorers.beaver import BEAVER_TEMPLATE, BeaverScorer, beaver_prompt
from igcritic.scorers.embedded import ClassifierScorer, LinearHead, load_embedded
from igcritic.scorers.guardlm import PRESETS, GuardLMConfig, GuardLMScorer, guard_chat
from igcritic.scorers.minilm import ENCODER_ID, TextEncoder, encoder_dir, probe_features, shared_encoder
from igcritic.scorers.seqcls import SeqClsScorer

SPEC_FORMS = (
    "embedded, embedded-judge, beaver:<folder>, seqcls:<folder>[:label_index], guardlm:<folder>[:preset]"
)
__all__ = [
    "ASSET_DIR",
    "BEAVER_TEMPLATE",
    "ENCODER_ID",
    "PRESETS",
    "ROLES",
    "SPEC_FORMS",
    "BeaverScorer",
    "ClassifierScorer",
    "GuardLMConfig",
    "GuardLMScorer",
    "LinearHead",
    "Role",
    "Scorer",
    "ScorerError",
    "ScorerInfo",
    "SeqClsScorer",
    "TextEncoder",
    "beaver_prompt",
    "encoder_dir",
    "forward_fill",
    "guard_chat",
    "load_embedded",
    "load_scorer",
    "probe_features",
    "shared_encoder",
    "stride_points",
]


def load_scorer(
    spec: str, role: str, device: str = "cpu", stride: int = 8, dtype: str | None = None
) -> Scorer:
    """Build a scorer from ``embedded``, ``embedded-judge``, ``beaver:<folder>``,
    ``seqcls:<folder>[:label_index]`` or ``guardlm:<folder>[:preset]`` (a preset name or a ``.json`` file)."""
    if role not in ROLES:
        raise ScorerError(f"scorer role {role!r} is not one of {', '.join(ROLES)}")
    spec = (spec or "").strip()
    if spec in ("embedded", "embedded-judge"):
        return load_embedded(spec, role, device=device, stride=stride)  # type: ignore[arg-type]
    kind, _, rest = spec.partition(":")
    if kind not in ("beaver", "seqcls", "guardlm") or not rest:
        raise ScorerError(f"unknown {role} scorer {spec!r}; use one of: {SPEC_FORMS}")
    label_index, preset = None, None
    head, _, tail = rest.rpartition(":")
    if kind == "seqcls" and head and tail.isdigit():
        rest, label_index = head, int(tail)
    if kind == "guardlm" and head and not (Path(rest).expanduser() / "config.json").is_file():
        rest, preset = head, tail  # a name that is no preset gets its own error from the scorer
    folder = Path(rest).expanduser()
    if not (folder / "config.json").is_file():
        raise ScorerError(
            f"{role} scorer {spec!r}: no config.json in {folder}; pass a local model folder ({SPEC_FORMS})"
        )
    try:
        if kind == "beaver":
            return BeaverScorer(folder, role, device=device, dtype=dtype)  # type: ignore[arg-type]
        if kind == "guardlm":
            return GuardLMScorer(folder, role, preset, device=device, stride=stride, dtype=dtype)  # type: ignore[arg-type]
        return SeqClsScorer(folder, role, label_index=label_index, device=device, stride=stride, dtype=dtype)  # type: ignore[arg-type]
    except ScorerError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = one_line(e, first_line=True)
        raise ScorerError(
            f"cannot load {role} scorer {spec!r} ({first}); check the folder ({SPEC_FORMS})"
        ) from None
