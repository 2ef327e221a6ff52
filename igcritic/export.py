"""Turn a Lightning checkpoint of ``igcritic fit`` into a slim critic artifact folder.

    igcritic export runs/fit/embedded/version_0/checkpoints/last.ckpt --out runs/embedded/critic
    igcritic export CKPT --out checkpoints/cpu --search.num_candidates 16 --search.max_new_tokens 64

``checkpoints/<name>/`` holds ``critic.safetensors`` (weights and normalisation statistics, no pickle),
``critic_config.json`` (schema version, policy identity with hidden size, layer and norm position, cost and
reward scorer ids and sign conventions, budget range seen in training, gamma, the safety head's calibration
map fitted on the validation split by ``igcritic fit`` (identity for a checkpoint without one, or with
``--calibrate false``), metrics at export with ECE before and after calibration per budget, a checksum of
the weights) and ``search_config.json`` (default runtime search parameters, paper Table 1, with the
store's budget). The folder loads with :func:`igcritic.critic.load_critic`, without Lightning. The output
is written to a temporary folder, verified, then renamed into place: never into a non-empty folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from igcritic import IgcriticError, one_line
from igcritic.critic import (
    CKPT_KEY,
    CONFIG_NAME,
    Calibration,
    Critic,
    CriticConfig,
    CriticError,
    is_artifact,
    load_critic,
)
from igcritic.search import SearchConfig, SearchConfigError

log = logging.getLogger(__name__)


class ExportError(IgcriticError):
    """A checkpoint cannot be exported (missing, truncated, not from ``igcritic fit``) or the output is
    taken."""


def read_checkpoint(ckpt: str | Path) -> dict:
    """Load a Lightning checkpoint without executing pickled code (``weights_only``)."""
    path = Path(ckpt)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist; pass a .ckpt written by `igcritic fit`")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, unknown globals: "not a checkpoint"
        msg = one_line(e, 160)
        raise ExportError(
            f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: {msg}); use another "
            "checkpoint (e.g. last.ckpt) or rerun `igcritic fit`"
        ) from None
    if not isinstance(data, dict) or "state_dict" not in data or CKPT_KEY not in data:
        raise ExportError(
            f"{path} is not a checkpoint of `igcritic fit` (no state_dict or {CKPT_KEY!r} entry); "
            "pass one from runs/fit/.../checkpoints/"
        )
    return data


def critic_from_checkpoint(ckpt: str | Path) -> tuple[Critic, dict]:
    """The critic of a fit checkpoint and the checkpoint's igcritic entry (metrics, budgets)."""
    data = read_checkpoint(ckpt)
    entry = data[CKPT_KEY]
    try:
        critic = Critic(CriticConfig.from_dict(entry["critic_config"]))
    except (CriticError, KeyError, TypeError) as e:
        raise ExportError(
            f"checkpoint {ckpt} holds an unusable critic config ({e}); rerun `igcritic fit`"
        ) from None
    state = {k[len("critic.") :]: v for k, v in data["state_dict"].items() if k.startswith("critic.")}
    state.setdefault("_extra_state", Calibration().to_dict())  # from before calibration: the identity
    try:
        critic.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = one_line(e, 200)
        raise ExportError(
            f"checkpoint {ckpt} weights do not fit its critic config ({msg}); rerun `igcritic fit`"
        ) from None
    except CriticError as e:
        raise ExportError(f"checkpoint {ckpt} holds an unusable calibration ({e})") from None
    if not bool(critic.normalized):
        log.warning("checkpoint %s has no normalisation statistics (trained outside CriticDataModule?)", ckpt)
    return critic.eval(), {**entry, "epoch": data.get("epoch"), "global_step": data.get("global_step")}


def export(
    ckpt: str | Path,
    out: str | Path,
    name: str | None = None,
    overwrite: bool = False,
    search: SearchConfig | dict | None = None,
    calibrate: bool = True,
) -> Path:
    """Write the artifact folder ``out`` from the Lightning checkpoint ``ckpt``; returns ``out``.

    ``search`` is written as ``search_config.json``, the runtime defaults (default: ``SearchConfig()``,
    paper Table 1; a dict overrides some of its fields, e.g. CPU-sized N and D); a budget left None becomes
    the store's. ``calibrate=False`` writes the raw safety head (identity calibration map)."""
    out = Path(out)
    from igcritic.store import check_writable  # here only: loading a guard does not import zarr

    if out.is_symlink():  # replacing it would replace the link, not the artifact it points to
        raise ExportError(
            f"--out {out} is a symbolic link (to {os.readlink(out)}); pass the folder it points to or a new "
            "--out"
        )
    check_writable(out, "--out", ExportError)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ExportError(f"output {out} exists and is not empty; pick another --out or pass --overwrite")
        from igcritic.store import check_replaceable  # here only: loading a guard does not import zarr

        check_replaceable(  # replaces only an artifact
            out, "a critic artifact", ExportError, owns=is_artifact, proof=f"{CONFIG_NAME} of igcritic's"
        )
    critic, entry = critic_from_checkpoint(ckpt)
    cfg = critic.config
    cal = critic.calibration
    if not calibrate:
        critic.set_calibration(None)
    elif cal.is_identity:
        log.warning(
            "checkpoint %s has no calibration map (fit with model.calibration=none, or before it existed): "
            "the artifact's q is the raw head",
            ckpt,
        )
    elif (
        (step := (cal.fitted or {}).get("global_step")) is not None
        and step != entry.get("global_step")
        and entry.get("q_trained", True)  # a fit that left q as it was keeps its map
    ):
        log.warning(
            "the calibration of %s was fitted at step %s, the weights are from step %s (validation did "
            "not run before this checkpoint): refit with `igcritic validate`",
            ckpt,
            step,
            entry.get("global_step"),
        )
    extra = {
        "name": name or out.name,
        "source_checkpoint": str(ckpt),
        "epoch": entry.get("epoch"),
        "global_step": entry.get("global_step"),
        "eval_budgets": entry.get("budgets", []),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        critic.save_pretrained(tmp, metrics=entry.get("metrics", {}), extra=extra)
        try:
            defaults = search if isinstance(search, SearchConfig) else SearchConfig.from_dict(search or {})
            if defaults.budget is None:
                defaults = replace(defaults, budget=cfg.budget)
            defaults.resolve(has_critic=True, has_cost=True, has_reward=True)
        except SearchConfigError as e:
            raise ExportError(f"--search: {e}") from None
        defaults.save(tmp)
        _verify(critic, tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "exported %s -> %s (policy %s, layer %s, hidden %d, calibration %s)",
        ckpt,
        out,
        cfg.model_id,
        cfg.layer,
        cfg.hidden_size,
        critic.calibration.method,
    )
    return out


def _verify(critic: Critic, folder: Path) -> None:
    """The written artifact reproduces the checkpoint's critic exactly."""
    loaded = load_critic(folder)
    g = torch.Generator().manual_seed(0)
    h = critic.h_mean + critic.h_std * torch.randn(16, critic.config.hidden_size, generator=g)
    z = torch.linspace(critic.config.budget_low - 1, critic.config.budget_high + 1, 16)
    with torch.no_grad():
        context = (h.roll(1, 0), h.flip(0))  # h_0 and the running mean of a cost_context critic
        a, b = critic(h, z, *context), loaded(h, z, *context)
    if not all(torch.equal(x, y) for x, y in zip(a, b, strict=True)):
        raise ExportError(
            f"the artifact written to {folder} does not reproduce the checkpoint; report this bug"
        )


def default_out(ckpt: str | Path, name: str | None = None) -> Path:
    """``checkpoints/<name>``; the name defaults to the run's logger name
    (runs/fit/<name>/version_N/checkpoints/)."""
    if name is None:
        p = Path(ckpt).resolve()
        name = p.parents[2].name if p.parent.name == "checkpoints" and len(p.parents) > 2 else p.stem
    return Path("checkpoints") / name


@dataclass
class ExportConfig:
    """Export a critic checkpoint to a slim artifact folder for ``igcritic.load_guard``."""

    ckpt: Path
    """Lightning checkpoint written by ``igcritic fit`` (e.g.
    runs/fit/embedded/version_0/checkpoints/last.ckpt)."""
    out: Path | None = None
    """Artifact folder to create (must not exist or be empty); default: checkpoints/<name>."""
    name: str | None = None
    """Name stamped in critic_config.json; default: the folder name of ``out``, else the run name."""
    overwrite: bool = False
    """Replace a non-empty ``out`` (only a critic artifact)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """Runtime search defaults written to search_config.json (paper Table 1 unless given, e.g.
    ``--search.num_candidates 16 --search.block_width 16 --search.max_new_tokens 64`` for CPU); a budget left
    null becomes the store's."""
    calibrate: bool = True
    """Apply the calibration map the checkpoint holds (fitted on the validation split by ``igcritic fit``);
    false writes the raw safety head."""


def main(cfg: ExportConfig) -> int:
    """``igcritic export CKPT [--out DIR] [--search.FIELD VALUE ...]``."""
    out = Path(cfg.out) if cfg.out is not None else default_out(cfg.ckpt, cfg.name)
    path = export(
        cfg.ckpt, out, name=cfg.name, overwrite=cfg.overwrite, search=cfg.search, calibrate=cfg.calibrate
    )
    log.info("wrote %s: %s", path, ", ".join(sorted(p.name for p in path.iterdir())))
    return 0


__all__ = [
    "ExportConfig",
    "export",
    "main",
    "critic_from_checkpoint",
    "read_checkpoint",
    "ExportError",
    "default_out",
]
