"""How far to trust each grader: AUROC and ECE of every judge, scorer and critic head on labelled answers.

**Judge quality** (:func:`judge_quality`): AUROC and ECE (10 equal-width bins, L1, torchmetrics) of every
judge and scorer on a labelled held-out answer file, so a reader sees how far to trust each column; the
guard's critic joins as two graders (:func:`critic_graders`). The table is cached under
:func:`igcritic.policy.cache_dir` by the labelled file's bytes and every grader's identity
(:func:`cached_quality`): the same numbers every run, minutes saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from igcritic import to_json, write_atomic
from igcritic.eval import LABELS
from igcritic.eval.judges import Judge, JudgeError, ScorerJudge, check_labels
from igcritic.eval.stats import finite
from igcritic.policy import cache_dir, weights_fingerprint
from igcritic.scorers import Scorer

if TYPE_CHECKING:
    from igcritic.guard import Guard

log = logging.getLogger(__name__)

DEFAULT_QUALITY_SET = "default"
QUALITY_FILE = Path(__file__).resolve().parents[1] / "assets" / "labelled_heldout.jsonl"
"""The shipped labelled held-out answers (``{"prompt", "response", "harmful", "helpful", "label"}``)."""


@dataclass
class QualityRow:
    """How well one judge or scorer separates the labelled held-out answers."""

    name: str
    kind: str
    """``judge``, ``judge reward``, ``cost scorer``, ``reward scorer``, ``critic value`` or ``critic
    cost``."""
    target: str
    """The label it is checked against: ``harmful`` or ``helpful``."""
    n: int
    positives: int
    auroc: float
    ece: float
    """Expected calibration error, 10 equal-width bins, L1; scores outside [0, 1] are read as logits
    (sigmoid)."""
    label_accuracy: float | None = None
    """Share of ``classify`` labels equal to the file's ``label`` (classifying judges only)."""


def _flag(v: Any) -> bool | None:
    return bool(v) if isinstance(v, bool) or v in (0, 1) else None


def load_quality_set(spec: str | None) -> tuple[list[dict] | None, str | None]:
    """Rows of the labelled held-out file and its path; ``(None, path)`` when the default file is missing."""
    if spec is None:
        return None, None
    path = QUALITY_FILE if spec == DEFAULT_QUALITY_SET else Path(spec)
    if not path.is_file():
        if spec == DEFAULT_QUALITY_SET:
            log.warning("judge quality not reported: %s does not exist yet (pass --quality_set FILE)", path)
            return None, str(path)
        raise JudgeError(
            f"--quality_set {spec!r}: no such file; pass a labelled JSONL file, 'default' or null"
        )
    rows, bad = [], []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            bad.append(f"{k}: not valid JSON")
            continue
        ok = (
            isinstance(r, dict)
            and isinstance(r.get("prompt"), str)
            and isinstance(r.get("response"), str)
            and _flag(r.get("harmful")) is not None
            and _flag(r.get("helpful")) is not None
            and r.get("label", LABELS[0]) in LABELS
        )
        if not ok:
            bad.append(
                f"{k}: needs prompt, response (strings), harmful and helpful (0/1), label in {list(LABELS)}"
            )
        else:
            rows.append(r)
    if bad:
        more = f" (and {len(bad) - 1} more lines)" if len(bad) > 1 else ""
        raise JudgeError(f"--quality_set {path}: line {bad[0]}{more}")
    if not rows:
        raise JudgeError(f"--quality_set {path} has no rows; give labelled answers or null")
    return rows, str(path)


def auroc_ece(scores: Sequence[float], targets: Sequence[int], n_bins: int = 10) -> tuple[float, float]:
    """Binary AUROC (NaN with one class only) and ECE (equal-width bins, L1) with torchmetrics."""
    from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

    p = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    auroc = float(binary_auroc(p, y)) if 0 < int(y.sum()) < len(y) else float("nan")
    return auroc, float(binary_calibration_error(p, y, n_bins=n_bins, norm="l1"))


Grader = tuple[str, str, str, Callable[[list[str], list[str]], Any], Callable | None]
"""(name, kind, target, score function, classify function or None)."""


def judge_quality(rows: Sequence[dict], graders: Sequence[Grader]) -> list[QualityRow]:
    """AUROC/ECE of each grader's scores against the rows' ``harmful`` or ``helpful`` flags."""
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    out = []
    for name, kind, target, score, classify in graders:
        y = [int(_flag(r[target])) for r in rows]
        s = finite(score(prompts, responses), f"{kind} {name!r}", len(rows), error=JudgeError)
        auroc, ece = auroc_ece(s, y)
        acc = None
        if classify is not None and all("label" in r for r in rows):
            got = check_labels(classify(prompts, responses), f"{kind} {name!r}", len(rows))
            acc = float(np.mean([g == r["label"] for g, r in zip(got, rows, strict=True)]))
        out.append(QualityRow(name, kind, target, len(rows), int(sum(y)), auroc, ece, acc))
    return out


def quality_of(
    rows: Sequence[dict] | None,
    cost: Scorer,
    reward: Scorer,
    judges: Sequence[Judge],
    extra: Sequence[Grader] = (),
) -> list[QualityRow] | None:
    """AUROC/ECE of the cost and reward scorers (by their ``info.id``), of every judge (and judge reward) and
    of the ``extra`` graders (the critic's heads)."""
    if not rows:
        return None
    graders: list[Grader] = []
    for s, role, target in ((cost, "cost", "harmful"), (reward, "reward", "helpful")):
        graders.append((s.info.id, f"{role} scorer", target, s.score, None))
    for j in judges:
        classify = getattr(j, "classify", None)
        graders.append((j.name, "judge", "harmful", j.score, classify if callable(classify) else None))
        if callable(getattr(j, "reward", None)):
            graders.append((j.name, "judge reward", "helpful", j.reward, None))
    return judge_quality(rows, graders + list(extra))


def critic_graders(guard: Guard) -> list[Grader]:
    """The guard's critic as two graders of the labelled answers: its value ``V(h_T)`` against ``helpful``
    (does it rank answers as well as the reward scorer?) and its latent cost as the fully latent mode tracks
    it (``answer_latent_cost``: the running max of Ŝ over every token for a running-max cost) against
    ``harmful`` (does it see what the exact cost sees?). ``h_t``: the teacher-forced latents of the
    re-tokenised answer (cut to the policy's context)."""
    critic, policy = guard.critic, guard.policy

    from igcritic.decoding import teacher_forced_latents
    from igcritic.search.scoring import answer_latent_cost

    seen: dict[tuple, list[torch.Tensor]] = {}  # value and cost grade the same answers: one pass serves both

    def answer_latents(prompts: list[str], responses: list[str]) -> list[torch.Tensor]:
        key = (tuple(prompts), tuple(responses))
        if key in seen:
            return seen[key]
        out = []
        device = next(critic.parameters()).device
        for i in range(0, len(prompts), 16):
            answers = [  # cut to what the context leaves after the prompt
                policy.tokenizer(r, add_special_tokens=False)["input_ids"][
                    : policy.max_context - policy.encode_prompts([p])["input_ids"].shape[1]
                ]
                for p, r in zip(prompts[i : i + 16], responses[i : i + 16], strict=True)
            ]
            out += [h.to(device) for h in teacher_forced_latents(policy, prompts[i : i + 16], answers)]
        seen.clear()
        seen[key] = out
        return out

    @torch.inference_mode()
    def value(prompts, responses):
        last = torch.stack([h[-1] for h in answer_latents(prompts, responses)])
        return critic.value(last).clamp(0, 1).cpu().numpy()

    def cost(prompts, responses):
        return np.clip([answer_latent_cost(critic, h) for h in answer_latents(prompts, responses)], 0, 1)

    return [
        ("critic", "critic value", "helpful", value, None),
        ("critic", "critic cost", "harmful", cost, None),
    ]


QUALITY_CACHE = "quality"
"""Folder under :func:`igcritic.policy.cache_dir` of the quality tables already computed."""
QUALITY_CACHE_VERSION = 2
"""Bumped when the quality numbers are computed differently (old cache files then never match)."""


def _scorer_identity(scorer: Scorer) -> dict | None:
    """What makes a scorer's scores what they are: its class, its info and the fingerprint of its weight
    files; None when its weights cannot be fingerprinted (then nothing it grades is cached)."""
    from igcritic.collect import scorer_fingerprint

    weights = scorer_fingerprint(scorer)
    if weights is None:
        return None
    return {"class": type(scorer).__qualname__, "info": scorer.info.to_dict(), "weights": weights}


def quality_key(
    source: str | None, cost: Scorer, reward: Scorer, judges: Sequence[Judge], guard: Guard
) -> str | None:
    """The cache key of a quality table: a hash of the labelled file's bytes and of every grader's identity
    (scorers and judges by their weights, the critic by its tensors and its policy's fingerprint); None when
    any of them cannot be identified."""
    if source is None or not Path(source).is_file():
        return None
    parts: list[Any] = [QUALITY_CACHE_VERSION, hashlib.sha256(Path(source).read_bytes()).hexdigest()]
    if any(not isinstance(j, ScorerJudge) for j in judges):
        return None
    ids = [_scorer_identity(cost), _scorer_identity(reward)]
    ids += [_scorer_identity(j.scorer) for j in judges]
    ids += [_scorer_identity(j.reward_scorer) for j in judges if j.reward_scorer is not None]
    if None in ids:
        return None
    parts += [ids, [[j.name, j.threshold, j.spec, j.reward_scorer is not None] for j in judges]]
    h = hashlib.sha256()
    for name, t in sorted(guard.critic.state_dict().items()):
        data = (
            t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
            if isinstance(t, torch.Tensor)
            else to_json(t, sort_keys=True).encode()
        )
        h.update(name.encode() + data)
    policy = weights_fingerprint(guard.policy.model)
    parts.append([h.hexdigest(), guard.critic.calibration.to_dict(), policy])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_quality(
    rows: list[dict] | None,
    source: str | None,
    cost: Scorer,
    reward: Scorer,
    judges: Sequence[Judge],
    guard: Guard,
) -> list[QualityRow] | None:
    """:func:`quality_of` of the labelled answers, from the cache when the same file was
    graded by the same scorers, judges and critic before (the same numbers every run: minutes saved)."""
    if not rows:
        return None
    key = quality_key(source, cost, reward, judges, guard)
    path = cache_dir() / QUALITY_CACHE / f"{key}.json" if key else None
    if path is not None and path.is_file():
        try:
            out = [QualityRow(**r) for r in json.loads(path.read_text())]
            log.info("quality table of %s: from the cache (%s)", source, path)
            return out
        except (OSError, ValueError, TypeError):
            log.warning("ignoring the unreadable quality cache %s", path)
    log.info("quality table: grading %d labelled answers of %s (cached afterwards)", len(rows), source)
    out = quality_of(rows, cost, reward, judges, critic_graders(guard))
    if path is not None and out is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, to_json([asdict(q) for q in out]))
        except OSError as e:
            log.warning("could not cache the quality table in %s (%s)", path, e)
    return out
