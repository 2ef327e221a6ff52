"""The latent safety critic: one ``nn.Module`` with a monotone safety head, a value head and a latent-cost
head.

docs/design.md section 3. The critic reads a latent ``h`` of the policy (``(B, H)``) and a safety state ``z``
(remaining budget, ``(B,)``) and predicts

* ``q(h, z) = P[F <= z | h]`` with ``F = S_T - S_t`` the cost still to come. ``q`` is a mixture of logistic
  CDFs in ``z`` whose weights, locations and scales depend on ``h``: non-decreasing in ``z`` by
  construction, for every input and every parameter value;
* ``V(h)``, the discounted reward to go ``E[gamma^(T-t) R]``;
* ``Ŝ(h)``, the cost model's prefix score ``S_t`` (the runtime's fully latent mode).

Inputs are normalised by statistics of the training latents and targets stored as buffers, so an artifact
is self-contained. A post-hoc :class:`Calibration` (fitted on the validation split by ``igcritic fit``) maps
the raw head's q to a calibrated probability at inference; the map is monotone in q, so the calibrated q
stays non-decreasing in z. The artifact is a folder (``save_pretrained`` / ``from_pretrained`` /
``load_critic``): ``critic.safetensors`` (weights and normalisation buffers, no pickle) and
``critic_config.json`` (schema version, config, policy identity, scorers, calibration map, metrics, a
checksum of the weights). No Lightning import here: the runtime loads a critic with torch and safetensors
only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from igcritic import IgcriticError, __version__, one_line, to_json
from igcritic.calibration import Calibration, CalibrationError

SCHEMA_VERSION = 2
"""Version of the artifact layout written by :meth:`Critic.save_pretrained` (2: ``calibration`` in the
JSON)."""
SUPPORTED_SCHEMAS = (1, 2)
"""Schemas :func:`read_config` accepts; a schema-1 artifact has no calibration and loads with the identity
map."""
ARTIFACT_FORMAT = "igcritic-critic"
WEIGHTS_NAME = "critic.safetensors"
CONFIG_NAME = "critic_config.json"
CALIBRATION_KEY = "calibration"
"""Entry of ``critic_config.json`` holding the :class:`Calibration` (schema 2)."""
CKPT_KEY = "igcritic"
"""Entry of a Lightning checkpoint of ``igcritic fit`` holding the critic config, metrics and eval budgets
(written by ``CriticModule``, read by ``igcritic export``)."""
_MIN_SCALE = 1e-3  # smallest logistic scale of a mixture component, in normalised z units


class CriticError(IgcriticError):
    """A critic config or artifact is invalid, unknown or damaged."""


@dataclass
class CriticConfig:
    """Sizes of the critic and what it was trained on (stamped into the artifact)."""

    hidden_size: int
    """Dimension H of the policy latents the critic reads (linked to the store's hidden size)."""
    width: int = 512
    """Hidden width of the trunk MLP (paper Table 3: 4096; 512 is enough for the 135M embedded policy)."""
    depth: int = 2
    """Number of hidden layers of the trunk."""
    dropout: float = 0.1
    """Dropout after each trunk layer (training only)."""
    n_mixture: int = 8
    """Logistic components of the safety CDF ``q(h, z)``."""
    gamma: float = 0.999
    """Discount of the value head's target ``gamma^(T-t) R`` (paper Table 3)."""
    budget_low: float = 0.0
    """Lowest budget drawn in training; q is extrapolated below it."""
    budget_high: float = 1.0
    """Highest budget drawn in training; q is extrapolated above it."""
    budget: float | None = None
    """The budget of the training store(s) (the default at inference)."""
    policy: dict | None = None
    """``PolicyIdentity.to_dict()`` of the policy whose latents the critic reads (None until trained)."""
    cost_scorer: dict | None = None
    """The cost scorer of the training store(s): at least ``id`` and ``sign``."""
    reward_scorer: dict | None = None
    """The reward scorer of the training store(s): at least ``id`` and ``sign``."""
    cost_context: bool = False
    """The latent cost head reads the answer so far, not ``h_t`` alone: ``[h_t, mean(h_0..h_t), h_0]``
    through its own MLP (``cost_hidden`` units), beside the trunk. A prefix cost depends on the prompt and
    on what the answer said before t, which one token's latent holds only in part (docs/design.md
    section 3)."""
    cost_hidden: int = 128
    """Hidden units of the ``cost_context`` head (its input is 3 x ``hidden_size`` wide)."""

    def problems(self) -> list[str]:
        """Every invalid field, as ``name=value (why)`` strings."""
        sizes = ("hidden_size", "width", "depth", "n_mixture", "cost_hidden")
        out = [f"{k}={getattr(self, k)} (must be >= 1)" for k in sizes if getattr(self, k) < 1]
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout={self.dropout} (must be in [0, 1))")
        if not 0.0 < self.gamma <= 1.0:
            out.append(f"gamma={self.gamma} (must be in (0, 1])")
        if not self.budget_low <= self.budget_high:
            out.append(f"budget_low={self.budget_low} > budget_high={self.budget_high}")
        if self.policy is not None:
            width = self.policy.get("hidden_size", self.hidden_size) * (
                1 + len(self.policy.get("extra_layers") or [])
            )
            if width != self.hidden_size:
                out.append(
                    f"policy latent size {width} (hidden_size x tapped layers) != "
                    f"hidden_size={self.hidden_size}"
                )
        return out

    def validate(self) -> CriticConfig:
        if problems := self.problems():
            raise CriticError("invalid critic config: " + "; ".join(problems) + "; fix these fields")
        return self

    @property
    def layer(self) -> int | None:
        """Policy layer the latents come from (None until trained)."""
        return None if self.policy is None else self.policy.get("layer")

    @property
    def norm(self) -> str | None:
        """Norm position of the latents (``post``/``pre``; None until trained)."""
        return None if self.policy is None else self.policy.get("norm")

    @property
    def model_id(self) -> str | None:
        return None if self.policy is None else self.policy.get("model_id")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> CriticConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise CriticError(f"unknown critic config override(s) {unknown}; known fields: {sorted(known)}")
        return cls(**{**{k: v for k, v in d.items() if k in known}, **overrides})


class CriticOutput(NamedTuple):
    """What :meth:`Critic.forward` returns, every field ``(B,)`` float."""

    safe_prob: torch.Tensor
    """q(h, z): probability that the cost still to come fits in the remaining budget z (calibrated)."""
    value: torch.Tensor
    """V(h): discounted reward to go."""
    cost: torch.Tensor
    """Ŝ(h): the predicted prefix cost S_t."""


class Critic(nn.Module):
    """Trunk MLP on normalised latents, with a monotone safety CDF head, a value head and a cost head.

    ``calibration`` travels in the state dict as extra state (so Lightning checkpoints and DDP-spawn copies
    carry it) and in ``critic_config.json`` (the safetensors file holds tensors only)."""

    def __init__(self, config: CriticConfig):
        super().__init__()
        self.config = config.validate()
        self.calibration = Calibration()
        h, w, k = config.hidden_size, config.width, config.n_mixture
        self.register_buffer("h_mean", torch.zeros(h))
        self.register_buffer("h_std", torch.ones(h))
        # loc/scale of F (safety state units), of the value target and of S_t: heads predict normalised values
        self.register_buffer("target_loc", torch.zeros(3))
        self.register_buffer("target_scale", torch.ones(3))
        self.register_buffer("normalized", torch.zeros((), dtype=torch.bool))
        layers: list[nn.Module] = []
        for i in range(config.depth):
            layers += [nn.Linear(h if i == 0 else w, w), nn.GELU(), nn.Dropout(config.dropout)]
        self.trunk = nn.Sequential(*layers)
        self.safety_head = nn.Linear(w, 3 * k)  # mixture logits, locations, raw scales
        self.value_head = nn.Linear(w, 1)
        self.cost_head = (
            nn.Sequential(nn.Linear(3 * h, config.cost_hidden), nn.GELU(), nn.Linear(config.cost_hidden, 1))
            if config.cost_context
            else nn.Linear(w, 1)
        )
        with torch.no_grad():  # spread the initial component locations over [-2, 2] (normalised z)
            self.safety_head.bias[k : 2 * k] = torch.linspace(-2.0, 2.0, k) if k > 1 else 0.0

    # ---- normalisation -------------------------------------------------------------------------------
    def set_normalization(self, stats: dict[str, torch.Tensor | float]) -> None:
        """Set input and target statistics (keys: h_mean, h_std, f_loc, f_scale, v_loc, v_scale, s_loc,
        s_scale, as returned by ``CriticDataModule.normalization_stats``)."""
        with torch.no_grad():
            self.h_mean.copy_(torch.as_tensor(stats["h_mean"], dtype=self.h_mean.dtype))
            self.h_std.copy_(torch.as_tensor(stats["h_std"], dtype=self.h_std.dtype).clamp_min(1e-6))
            loc = [float(stats[k]) for k in ("f_loc", "v_loc", "s_loc")]
            scale = [max(float(stats[k]), 1e-6) for k in ("f_scale", "v_scale", "s_scale")]
            self.target_loc.copy_(torch.tensor(loc))
            self.target_scale.copy_(torch.tensor(scale))
            self.normalized.fill_(True)

    # ---- calibration -----------------------------------------------------------------------------------
    def set_calibration(self, calibration: Calibration | dict | None) -> None:
        """Install a calibration map (a :class:`Calibration`, its dict, or None for the identity)."""
        self.calibration = _calibration(calibration)

    def get_extra_state(self) -> dict:
        return self.calibration.to_dict()

    def set_extra_state(self, state) -> None:
        self.set_calibration(state if isinstance(state, dict) else None)

    # ---- building blocks (the LightningModule reuses them) -------------------------------------------
    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Trunk features of latents ``h`` (B, H) -> (B, width)."""
        if h.shape[-1] != self.config.hidden_size:
            raise CriticError(
                f"latent size {h.shape[-1]} != critic hidden_size {self.config.hidden_size}: "
                "the critic was trained on another policy or layer"
            )
        return self.trunk(self._normalize(h))

    def _normalize(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(device=self.h_mean.device, dtype=self.h_mean.dtype)
        return (h - self.h_mean) / self.h_std

    def _mixture(self, feat: torch.Tensor, z: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-weights and standardised arguments ``u_k = (z_n - mu_k) / s_k``, each (B, K)."""
        k = self.config.n_mixture
        raw = self.safety_head(feat).float()  # (B, 3K)
        logw = F.log_softmax(raw[:, :k], dim=-1)
        mu, scale = raw[:, k : 2 * k], F.softplus(raw[:, 2 * k :]) + _MIN_SCALE
        z = torch.as_tensor(z, dtype=torch.float32, device=feat.device).reshape(-1, 1)  # (B|1, 1)
        zn = (z - self.target_loc[0].float()) / self.target_scale[0].float()
        return logw, (zn - mu) / scale

    def safe_logprob_from_features(
        self, feat: torch.Tensor, z: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log q, log (1 - q))``, each (B,), computed stably (q = sum_k w_k sigmoid(u_k))."""
        return _log_cdf(*self._mixture(feat, z))

    def safe_prob_from_features(
        self, feat: torch.Tensor, z: torch.Tensor | float, calibrated: bool = False
    ) -> torch.Tensor:
        """q (B,): the raw head (what training fits), or with ``calibrated`` the calibration map applied."""
        logw, u = self._mixture(feat, z)
        q = (logw.exp() * torch.sigmoid(u)).sum(-1)
        if not calibrated or self.calibration.is_identity:
            return q
        return self.calibration.apply(q, *_log_cdf(logw, u))

    def value_from_features(self, feat: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        out = self.value_head(feat).float().squeeze(-1)
        return out if normalized else self.target_loc[1] + self.target_scale[1] * out

    def cost_from_features(self, feat: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        """Ŝ from the trunk's features (a critic without ``cost_context``)."""
        if self.config.cost_context:
            raise CriticError(
                "this critic's cost head reads the answer so far (cost_context): call "
                "Critic.cost(h, first, mean), not the trunk-feature cost"
            )
        out = self.cost_head(feat).float().squeeze(-1)
        return out if normalized else self.target_loc[2] + self.target_scale[2] * out

    # ---- the runtime API -------------------------------------------------------------------------------
    def forward(
        self,
        h: torch.Tensor,
        z: torch.Tensor | float,
        first: torch.Tensor | None = None,
        mean: torch.Tensor | None = None,
    ) -> CriticOutput:
        """All three heads from one trunk pass: ``h`` (B, H), ``z`` (B,) or a scalar -> (B,) each;
        ``first``/``mean`` as in :meth:`cost` (a ``cost_context`` critic needs them)."""
        feat = self.encode(h)
        return CriticOutput(
            self.safe_prob_from_features(feat, z, calibrated=True),
            self.value_from_features(feat),
            self.cost(h, first, mean) if self.config.cost_context else self.cost_from_features(feat),
        )

    def safe_prob(self, h: torch.Tensor, z: torch.Tensor | float, calibrated: bool = True) -> torch.Tensor:
        """q(h, z) = P[S_T - S_t <= z | h] (B,), calibrated unless ``calibrated=False``: non-decreasing in
        z."""
        return self.safe_prob_from_features(self.encode(h), z, calibrated=calibrated)

    def value(self, h: torch.Tensor) -> torch.Tensor:
        """V(h) (B,): discounted reward to go."""
        return self.value_from_features(self.encode(h))

    def cost(
        self,
        h: torch.Tensor,
        first: torch.Tensor | None = None,
        mean: torch.Tensor | None = None,
        normalized: bool = False,
    ) -> torch.Tensor:
        """Ŝ (B,): the prefix cost S_t predicted from the latent ``h`` (B, H); a ``cost_context`` critic also
        reads ``first`` = h_0 (the prompt's end) and ``mean`` = the mean of h_0..h_t, each (B, H) and
        normalised like ``h``."""
        if not self.config.cost_context:
            return self.cost_from_features(self.encode(h), normalized)
        if first is None or mean is None:
            raise CriticError(
                "this critic's cost head reads the answer so far (cost_context): pass first=h_0 and "
                "mean=the mean of h_0..h_t beside h"
            )
        x = torch.cat([self._normalize(v) for v in (h, mean, first)], -1)
        out = self.cost_head(x).float().squeeze(-1)
        return out if normalized else self.target_loc[2] + self.target_scale[2] * out

    # ---- the artifact ----------------------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | Path, metrics: dict | None = None, extra: dict | None = None
    ) -> Path:
        """Write ``critic.safetensors`` and ``critic_config.json`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if torch.is_tensor(v)}
        save_file(
            state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "schema_version": str(SCHEMA_VERSION)}
        )
        meta = {
            "schema_version": SCHEMA_VERSION,
            "format": ARTIFACT_FORMAT,
            **self.config.to_dict(),
            "layer": self.config.layer,
            "norm": self.config.norm,
            CALIBRATION_KEY: self.calibration.to_dict(),
            "metrics": dict(metrics or {}),
            "weights_sha256": _sha256(out / WEIGHTS_NAME),
            "software": {"torch": torch.__version__, "igcritic": __version__},
            **(extra or {}),
        }
        (out / CONFIG_NAME).write_text(to_json(meta, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", **overrides
    ) -> Critic:
        """Load an artifact folder written by :meth:`save_pretrained`; ``overrides`` replace config fields
        (e.g. ``dropout=0.0``). Raises :class:`CriticError` on an unknown schema or damaged files."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory)
        meta = read_config(path)
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CriticError(f"{weights} is missing: re-export the critic with `igcritic export`")
        if (want := meta.get("weights_sha256")) and _sha256(weights) != want:
            raise CriticError(f"{weights} is corrupted (checksum differs from {CONFIG_NAME}): re-export it")
        config = CriticConfig.from_dict(meta, **overrides)
        calibration = _calibration(meta.get(CALIBRATION_KEY))  # absent (schema 1): the identity
        try:
            state = load_file(str(weights), device=str(device))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CriticError(f"{weights} is truncated or corrupted ({one_line(e)}): re-export it") from None
        critic = cls(config)
        state["_extra_state"] = calibration.to_dict()
        try:
            critic.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CriticError(
                f"{weights} does not fit {CONFIG_NAME} ({one_line(e, 200)}): re-export it, "
                "or drop overrides that change sizes"
            ) from None
        return critic.to(device)


def _log_cdf(logw: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log q, log (1 - q))`` of the mixture with log-weights ``logw`` at standardised ``u`` (B, K)."""
    return torch.logsumexp(logw + F.logsigmoid(u), -1), torch.logsumexp(logw + F.logsigmoid(-u), -1)


def read_config(path: str | Path) -> dict:
    """The parsed ``critic_config.json`` of an artifact folder, schema checked."""
    path = Path(path)
    cfg = path / CONFIG_NAME if path.is_dir() or not path.suffix else path
    if not cfg.is_file():
        raise CriticError(f"no {CONFIG_NAME} in {path}: pass the folder written by `igcritic export`")
    try:
        meta = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CriticError(
            f"{cfg} is not valid JSON ({one_line(e)}): the artifact is damaged, re-export it"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise CriticError(
            f"{cfg} is not an igcritic critic config (format != {ARTIFACT_FORMAT!r}): re-export it"
        )
    version = meta.get("schema_version")
    if version not in SUPPORTED_SCHEMAS:
        raise CriticError(
            f"{cfg} has schema_version {version!r}, this igcritic reads {list(SUPPORTED_SCHEMAS)}: "
            "upgrade igcritic or re-export with this version"
        )
    if version >= 2 and CALIBRATION_KEY not in meta:  # schema 2 always writes it, identity included
        raise CriticError(
            f"{cfg} (schema 2) has no {CALIBRATION_KEY!r} entry, so its q would be uncalibrated without "
            "saying so: re-export the critic (`igcritic export --calibrate false` records an uncalibrated "
            "one)"
        )
    return meta


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is a folder ``igcritic export`` wrote: its config is of this format and carries the
    checksum of its weights (a file that merely has the name proves nothing)."""
    try:
        meta = read_config(Path(path))
    except CriticError:
        return False
    digest = meta.get("weights_sha256")
    return isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def load_critic(path: str | Path, device: str | torch.device = "cpu") -> Critic:
    """The critic of an artifact folder, ready for inference (eval mode, no grad needed)."""
    return Critic.from_pretrained(path, device=device).eval().requires_grad_(False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _calibration(calibration: Calibration | dict | None) -> Calibration:
    """A valid map from a :class:`Calibration`, its dict or None (the identity); a bad one is a
    :class:`CriticError` (the artifact's problem)."""
    try:
        cal = calibration if isinstance(calibration, Calibration) else Calibration.from_dict(calibration)
        return cal.validate()
    except CalibrationError as e:
        raise CriticError(str(e)) from None


__all__ = [
    "Calibration",
    "Critic",
    "CriticConfig",
    "CriticError",
    "CriticOutput",
    "load_critic",
    "read_config",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMAS",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "CKPT_KEY",
    "CALIBRATION_KEY",
]
