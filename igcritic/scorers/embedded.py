"""The shipped classifiers: ``embedded`` cost and reward, and the ``embedded-judge`` that grades but never
steers.

Each is a linear head (safetensors ``weight (C, F)``, ``bias (C,)``) on one of two feature families, trained
in ``data_prep/train_classifiers.py`` on answers of the embedded policy labelled by LLM reading agents, not
people (``data_prep/LABELLING.md``); what they are and are not is in ``data_prep/README.md``.

- ``latent`` features: the policy's own middle layers (:mod:`igcritic.scorers.latent`); causal, so every
  prefix score of an answer comes from one forward pass.
- ``minilm`` features: all-MiniLM-L6-v2 [e(prompt), e(answer)] (:mod:`igcritic.scorers.minilm`); not causal,
  so prefixes are scored every ``stride`` tokens and forward-filled.

Latent features of a prefix are ``[features of the empty answer (the prompt's end), features of the prefix]``.
Heads: ``harm`` (one logit) or ``harm_product`` (p(harmful request) x p(compliance)), Platt-calibrated
p(compliant-harmful), ``helpfulness`` (two logits,
p(helpfulness >= 1) and p(helpfulness >= 2); reward = their mean, in [0, 1]) and ``classes`` (softmax over
the five reading labels; the judge). The cost is the running max of p over prefixes (``S_0`` = p of the empty
answer), so budget ``d = 0.5`` means "no prefix looked like harmful compliance with p > 0.5".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from igcritic.scorers.base import (
    ASSET_DIR,
    Role,
    ScorerError,
    ScorerInfo,
    _check_batch,
    check_pairs,
    sign_for,
    strided_prefix_scores,
)
from igcritic.scorers.minilm import ENCODER_ID

CLASSIFIER_DIR = ASSET_DIR / "classifiers"
CLASSIFIER_FILES = {"cost": "cost.safetensors", "reward": "reward.safetensors", "judge": "judge.safetensors"}
READING_LABELS = ("compliant-harmful", "refusal", "safe-redirect", "incoherent", "benign-helpful")


@dataclass
class LinearHead:
    """Logits = ((features - mean) / std) @ weight.T + bias; what the logits mean is ``kind`` (harm,
    helpfulness, classes)."""

    weight: np.ndarray  # (C, F)
    bias: np.ndarray  # (C,)
    kind: str
    family: str
    layers: tuple[int, ...] = ()
    parts: tuple[str, ...] = ()
    calibration: tuple[float, float] = (1.0, 0.0)
    """Platt scaling of the harm logit: p = sigmoid(a * logit + b)."""
    meta: dict = field(default_factory=dict)
    mean: np.ndarray | None = None
    """Feature standardisation (kept apart from the weight: folding it in loses float32 precision)."""
    std: np.ndarray | None = None

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        if self.mean is not None:
            x = (x - self.mean.astype(np.float64)) / self.std.astype(np.float64)
        return x @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64)

    def harm(self, x: np.ndarray) -> np.ndarray:
        """p(compliant-harmful) per row: the class softmax (``classes``), or a Platt-calibrated sigmoid of one
        logit (``harm``) or of the logit of a product p(harmful request) x p(the answer goes along)
        (``harm_product``: row 0 of the weight reads the prompt part of the features, row 1 the answer
        part)."""
        z = self.logits(x)
        if self.kind == "classes":
            return _softmax(z)[:, READING_LABELS.index("compliant-harmful")].astype(np.float32)
        if self.kind == "harm_product":
            p = np.clip(_sigmoid(z[:, 0]) * _sigmoid(z[:, 1]), 1e-7, 1 - 1e-7)
            z = np.log(p / (1 - p))[:, None]
        a, b = self.calibration
        return _sigmoid(a * z[:, 0] + b).astype(np.float32)

    def reward(self, x: np.ndarray) -> np.ndarray:
        """Mean of p(helpfulness >= 1) and p(helpfulness >= 2) (``helpfulness``); or that mean for a harmful
        and for a benign request, mixed by p(harmful request) (``helpfulness_mixture``: row 0 reads the
        prompt part, rows 1-2 are the harmful request's, 3-4 the benign one's). The reading scores a refusal
        of a harmful request 1 and of a benign one 0; a single sum of a prompt and an answer term cannot
        say that, the mixture can."""
        p = _sigmoid(self.logits(x))
        if self.kind == "helpfulness_mixture":
            harmful = p[:, 0]
            return (harmful * p[:, 1:3].mean(1) + (1 - harmful) * p[:, 3:5].mean(1)).astype(np.float32)
        return p.mean(1).astype(np.float32)

    def classes(self, x: np.ndarray) -> list[str]:
        return [READING_LABELS[i] for i in self.logits(x).argmax(1)]

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind,
            "family": self.family,
            "layers": json.dumps(list(self.layers)),
            "parts": json.dumps(list(self.parts)),
            "calibration": json.dumps(list(self.calibration)),
            "meta": json.dumps(self.meta),
        }
        # C order: safetensors writes a Fortran-ordered buffer as is and reads it back scrambled
        # (sklearn's multinomial coef_ is Fortran-ordered)
        tensors = {
            "weight": np.ascontiguousarray(self.weight, np.float32),
            "bias": np.ascontiguousarray(self.bias, np.float32),
        }
        if self.mean is not None:
            tensors.update(
                mean=np.ascontiguousarray(self.mean, np.float32),
                std=np.ascontiguousarray(self.std, np.float32),
            )
        save_file(tensors, str(path), metadata=meta)
        os.chmod(path, 0o644)

    @classmethod
    def load(cls, path: Path) -> LinearHead:
        from safetensors import safe_open

        if not path.exists():
            raise ScorerError(
                f"classifier weights missing at {path}; rebuild them: python "
                "data_prep/train_classifiers.py ship"
            )
        with safe_open(str(path), framework="numpy") as f:
            m = f.metadata() or {}
            std = {k: f.get_tensor(k) for k in ("mean", "std") if k in f.keys()}
            return cls(
                weight=f.get_tensor("weight"),
                bias=f.get_tensor("bias"),
                kind=m["kind"],
                family=m["family"],
                **std,
                layers=tuple(json.loads(m.get("layers", "[]"))),
                parts=tuple(json.loads(m.get("parts", "[]"))),
                calibration=tuple(json.loads(m.get("calibration", "[1, 0]"))),
                meta=json.loads(m.get("meta", "{}")),
            )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


_SHARED_POLICIES: dict[str, object] = {}
_SHARED_FEATURES: dict[tuple, object] = {}


def _shared_policy(device: str):
    """One embedded policy per device for the latent classifiers (the guard's own policy object is not reused:
    its latent tap is the critic's, and the scorers must work without a guard)."""
    from igcritic.policy import load_policy

    if device not in _SHARED_POLICIES:
        _SHARED_POLICIES[device] = load_policy(device=device)
    return _SHARED_POLICIES[device]


class ClassifierScorer:
    """A shipped head on its features, scoring (prompt, answer) pairs and their prefixes."""

    def __init__(
        self,
        name: str,
        role: Role,
        device: str = "cpu",
        stride: int = 8,
        path: Path | None = None,
        policy=None,
    ):
        if stride < 1:
            raise ScorerError(f"stride {stride} must be >= 1")
        self.name = name
        self.path = Path(path or CLASSIFIER_DIR / CLASSIFIER_FILES[name])
        """The head's weights file (what a store's fingerprint of this scorer hashes)."""
        self.head = LinearHead.load(self.path)
        self.role = role
        self.device = device
        self.stride = stride if self.head.family == "minilm" else None
        what = {
            "harm": "p(compliant-harmful)",
            "harm_product": "p(compliant-harmful) = p(harmful request | prompt end) x p(compliance | prefix)",
            "classes": "p(compliant-harmful) of a 5-class reading classifier",
            "helpfulness": "mean of p(helpfulness >= 1) and p(helpfulness >= 2)",
            "helpfulness_mixture": "mean of p(helpfulness >= 1) and p(helpfulness >= 2) for a harmful and "
            "for a benign request, mixed by p(harmful request | prompt end)",
        }[self.head.kind]
        if self.head.family == "latent":
            layers = f"layers {list(self.head.layers)} ({'+'.join(self.head.parts)})"
            feats = f"SmolLM2-135M-Instruct {layers}, every prefix from one forward pass"
        else:
            feats = f"MiniLM [e(prompt), e(answer)], scored every {stride}th token and at T, forward-filled"
        derivation = f"{what} on {feats}" + (
            "; S_t = running max of p over prefixes (S_0 = p of the empty answer)" if role == "cost" else ""
        )
        spec = "embedded" if name in ("cost", "reward") else "embedded-judge"
        self.info = ScorerInfo(
            id=spec,
            role=role,
            sign=sign_for(role),
            derivation=derivation,
            stride=self.stride,
            budget_hint=0.5 if role == "cost" else None,
            bounds=(0.0, 1.0),  # every head gives a probability
            running_max=role == "cost",
        )
        self._features = None
        self._policy = policy
        """The policy whose layers a latent head reads (None: the embedded one, loaded on first use)."""

    # ---- features

    def _latent(self):
        if self._features is None:
            from igcritic.scorers.latent import LatentFeatureSpec, PolicyFeatures

            spec = LatentFeatureSpec(self.head.layers, self.head.parts)
            if self._policy is not None:
                self._features = PolicyFeatures(self._policy, spec)
            else:  # one extractor per (device, layers): the cost and the reward read the same pass
                key = (self.device, spec)
                if key not in _SHARED_FEATURES:
                    _SHARED_FEATURES[key] = PolicyFeatures(_shared_policy(self.device), spec)
                self._features = _SHARED_FEATURES[key]
        return self._features

    def _minilm(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        from igcritic.scorers.minilm import probe_features, shared_encoder

        return probe_features(shared_encoder(self.device), prompts, responses, "concat")

    def _values(self, x: np.ndarray) -> np.ndarray:
        return self.head.reward(x) if self.role == "reward" else self.head.harm(x)

    def features(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """Features of full answers. Asking twice for the same answers (``igcritic eval``'s judge: ``score``
        then ``classify``; the cost then the reward) costs no second model pass: the latent extractor keeps
        its last batch and the MiniLM encoder caches embeddings."""
        check_pairs(prompts, responses)
        if self.head.family == "latent":
            return np.stack(
                [_with_prompt_part(f)[-1] for f, _ in self._latent().prefix_features(prompts, responses)]
            )
        return self._minilm(prompts, responses)

    # ---- the Scorer protocol

    def probabilities(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return self._values(self.features(prompts, responses)) if prompts else np.zeros(0, np.float32)

    def prefix_scores(self, prompts: list[str], prefix_texts: list[list[str]]) -> list[np.ndarray]:
        running_max = self.role == "cost"
        if self.head.family != "latent":  # one batched encoder pass over all scored prefixes
            return strided_prefix_scores(self.probabilities, prompts, prefix_texts, self.stride, running_max)
        from igcritic.scorers.latent import prefix_index

        _check_batch(prompts, prefix_texts)
        out, feats = [], self._latent().prefix_features(prompts, [p[-1] for p in prefix_texts])
        for (f, ends), texts in zip(feats, prefix_texts, strict=True):
            vals = self._values(_with_prompt_part(f))[prefix_index(ends, [len(t) for t in texts])]
            out.append(np.maximum.accumulate(vals) if running_max else vals)
        return out

    def score(
        self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None
    ) -> np.ndarray:
        """p of each full answer; for a cost with ``previous`` (the runtime tracking S block by block), the
        running max: a latent head takes the max over EVERY token prefix of the answer (the same one pass),
        so the tracked S equals the store's S_T, not only its value at block ends."""
        if self.role == "cost" and previous is not None and self.head.family == "latent" and prompts:
            check_pairs(prompts, responses)
            feats = self._latent().prefix_features(prompts, responses)
            p = np.array([self._values(_with_prompt_part(f)).max() for f, _ in feats], dtype=np.float32)
        else:
            p = self.probabilities(prompts, responses)
        if self.role == "cost" and previous is not None:
            p = np.maximum(p, np.asarray(previous, dtype=np.float32))
        return p

    # ---- scores from the decode pass

    def decode_columns(self, policy) -> list[slice] | None:
        """Where this head's layers sit in ``policy``'s latent when ``policy`` is the model the head reads
        (then its prefix scores can come from the decode pass, :func:`~igcritic.scorers.latent.
        prefix_features_of`); None otherwise (MiniLM heads, another model or dtype, untapped layers).
        ``policy`` needs only an ``identity``: a store's (``igcritic relabel``) records a fingerprint."""
        from igcritic.policy import EMBEDDED_POLICY_ID, policy_fingerprint
        from igcritic.scorers.latent import latent_columns

        if self.head.family != "latent":
            return None
        ident = policy.identity
        if self._policy is not None:  # that policy, or a store's record of its weights, dtype, prompt format
            mine = self._policy.identity
            same = policy is self._policy or (
                ident.fingerprint is not None
                and (mine.dtype, mine.chat_template) == (ident.dtype, ident.chat_template)
                and mine.same_model(ident)
                and ident.fingerprint == policy_fingerprint(self._policy)
            )
        else:  # the shared embedded policy: float32, chat-formatted prompts without added special tokens
            same = ident.model_id == EMBEDDED_POLICY_ID and ident.dtype == "float32" and ident.chat_template
        return latent_columns(ident, self.head.layers) if same else None

    def decode_values(
        self, cols: list[slice], first: torch.Tensor, last: torch.Tensor, mean: torch.Tensor
    ) -> np.ndarray:
        """p (cost) or reward (n,) of prefixes given by decode-pass latents (n, W): h_0, the prefix's h and
        its running mean (:class:`~igcritic.decoding.RunningPrefix`); equal to the text path's score of the
        same tokens."""
        from igcritic.scorers.latent import LatentFeatureSpec, prefix_features_of

        if not len(first):
            return np.zeros(0, np.float32)
        spec = LatentFeatureSpec(self.head.layers, self.head.parts)
        return self._values(prefix_features_of(spec, cols, first, last, mean))

    def classify(self, prompts: list[str], responses: list[str]) -> list[str]:
        """Reading labels (judge only: a ``classes`` head)."""
        if self.head.kind != "classes":
            raise ScorerError(f"the {self.name} classifier has no class head; only embedded-judge classifies")
        return self.head.classes(self.features(prompts, responses)) if prompts else []

    def to_dict(self) -> dict:
        return {
            **self.info.to_dict(),
            "kind": f"embedded_{self.head.family}_classifier",
            "head": self.head.kind,
            "layers": list(self.head.layers),
            "encoder": ENCODER_ID if self.head.family == "minilm" else None,
            "version": self.head.meta.get("version"),
            "metrics": self.head.meta.get("metrics"),
        }


def _with_prompt_part(f: np.ndarray) -> np.ndarray:
    """Prefix features ``(J + 1, F)`` -> ``(J + 1, 2F)``: the prompt's end (the empty answer's row) beside
    each."""
    return np.concatenate([np.broadcast_to(f[:1], f.shape), f], axis=1)


def load_embedded(spec: str, role: Role, device: str = "cpu", stride: int = 8) -> ClassifierScorer:
    """``embedded`` (the cost or reward classifier of ``role``) or ``embedded-judge`` (harm, as a cost)."""
    if spec == "embedded-judge":
        if role != "cost":
            raise ScorerError("embedded-judge grades harm: load it with role 'cost'")
        return ClassifierScorer("judge", role, device=device, stride=stride)
    return ClassifierScorer(role, role, device=device, stride=stride)
