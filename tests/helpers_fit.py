"""Synthetic stores for the critic tests: costs and rewards that depend on directions of h."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback

from igcritic.policy import PolicyIdentity
from igcritic.store import StoreWriter, TrajectoryBatch


def synthetic_attrs(
    hidden: int,
    *,
    model_id: str = "synthetic-llama",
    layer: int = 2,
    budget: float = 0.5,
    cost_id: str = "synthetic-cost",
) -> dict:
    policy = PolicyIdentity(model_id=model_id, hidden_size=hidden, num_layers=2, layer=layer, norm="post")
    return {
        "policy": policy.to_dict(),
        "budget": budget,
        "constraint": "final",
        "cost_scorer": {"id": cost_id, "sign": "higher-is-unsafe", "kind": "synthetic"},
        "reward_scorer": {"id": "synthetic-reward", "sign": "higher-is-better", "kind": "synthetic"},
        "generation": {"temperature": 0.7, "max_new_tokens": 32},
        "seed": 0,
    }


def make_store(
    path: str | Path,
    *,
    n_prompts: int = 12,
    rollouts: int = 4,
    hidden: int = 16,
    max_len: int = 40,
    seed: int = 0,
    chunk_tokens: int = 64,
    batch_prompts: int = 3,
    noise: float = 1.0,
    signal: float = 3.0,
    prompt_prefix: str = "prompt",
    compression: str | None = None,
    **attr_kw,
) -> dict:
    """Write a store whose costs follow two directions of h.

    Each trajectory has a harm level ``p ~ U[0, 1]`` and a time ``tau``: ``S_t = p * 1{t >= tau}`` (a running
    maximum of a step), reward ``R = 1 - p``. Its latents are ``noise * N(0, I) + signal * (p * u + 1{t >=
    tau} v)`` for two fixed orthogonal directions u, v, so F_t = S_T - S_t and S_t are functions of h_t up to
    noise. Returns the directions and counts.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(1234).normal(size=(hidden, 2)))[0]
    u, v = basis[:, 0], basis[:, 1]
    prompts = [f"{prompt_prefix} {i}" for i in range(n_prompts)]
    attrs = synthetic_attrs(hidden, **attr_kw)
    n_tok = 0
    with StoreWriter.create(
        str(path),
        attrs=attrs,
        prompts=prompts,
        hidden_size=hidden,
        chunk_tokens=chunk_tokens,
        compression=compression,
    ) as w:
        for b, p0 in enumerate(range(0, n_prompts, batch_prompts)):
            lat, ids, cost, lens, tp, rew = [], [], [], [], [], []
            for p in range(p0, min(p0 + batch_prompts, n_prompts)):
                for _ in range(rollouts):
                    T = int(rng.integers(3, max_len))
                    harm, tau = float(rng.random()), int(rng.integers(1, T + 1))
                    t = np.arange(T + 1)
                    done = (t >= tau).astype(np.float64)
                    s = harm * done
                    h = noise * rng.normal(size=(T + 1, hidden)) + signal * (harm * u + done[:, None] * v)
                    lat.append(h.astype(np.float32))
                    ids.append(np.r_[-1, rng.integers(0, 300, T)].astype(np.int32))
                    cost.append(s.astype(np.float32))
                    lens.append(T)
                    tp.append(p)
                    rew.append(1.0 - harm + 0.05 * rng.normal())
            batch = TrajectoryBatch(
                latents=np.concatenate(lat),
                token_ids=np.concatenate(ids),
                cost_prefix=np.concatenate(cost),
                traj_len=np.asarray(lens, np.int32),
                traj_prompt=np.asarray(tp, np.int64),
                traj_reward=np.asarray(rew, np.float32),
                traj_finished=np.ones(len(lens), bool),
            )
            w.append(batch, b)
            n_tok += batch.n_tok
    return {"u": u, "v": v, "n_tok": n_tok, "n_traj": n_prompts * rollouts, "prompts": prompts}


def poison_rows(path: str | Path, rows: list[int]) -> None:
    """Overwrite latent rows of shard 0 with NaN (the writer refuses NaN, so this edits the array
    directly)."""
    import zarr

    arr = zarr.open_group(str(path), mode="r+")["shards/rank-00000/latents"]
    for r in rows:
        arr[r] = np.full(arr.shape[1], np.nan, dtype=np.float16)


def make_empty_store(path: str | Path, hidden: int = 16) -> None:
    with StoreWriter.create(str(path), attrs=synthetic_attrs(hidden), prompts=["a", "b"], hidden_size=hidden):
        pass


# ---------------------------------------------------------------- training helpers


def tiny_module(hidden: int, lr: float = 3e-3, **kw):
    import functools

    import torch

    from igcritic.fit import CriticModule

    return CriticModule(
        hidden_size=hidden,
        **{"width": 64, "depth": 2, "dropout": 0.0, "n_mixture": 4, **kw},
        optimizer=functools.partial(torch.optim.AdamW, lr=lr),
    )  # picklable for ddp_spawn


def tiny_trainer(root, epochs: int = 1, **kw):
    import lightning.pytorch as pl

    return pl.Trainer(
        **{
            "max_epochs": epochs,
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(root),
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **kw,
        }
    )


class RecordRows(Callback):
    """Saves the global row ids each rank trains on, per epoch, to ``out/rank{r}_epoch{e}.npy``."""

    def __init__(self, out: str):
        self.out, self.rows = str(out), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append(batch["row"].cpu().numpy())

    def on_train_epoch_end(self, trainer, pl_module):
        np.save(
            Path(self.out) / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.npy",
            np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64),
        )
        self.rows = []


class RecordCalibration(Callback):
    """Saves each rank's calibration map after every validation epoch to
    ``out/rank{r}_calibration{e}.json``."""

    def __init__(self, out: str):
        self.out = str(out)

    def on_validation_end(self, trainer, pl_module):
        import json

        if not trainer.sanity_checking:
            path = Path(self.out) / f"rank{trainer.global_rank}_calibration{trainer.current_epoch}.json"
            path.write_text(json.dumps(pl_module.critic.calibration.to_dict()))


def overconfident_bins(
    n: int = 40_000, columns: int = 3, slope: float = 3.0, shift: float = 0.8, seed: int = 0
):
    """Histograms of a head whose logit is ``slope * t + shift`` where labels follow sigmoid(t): overconfident
    and biased, a miscalibration a monotone map of q can undo. Returns the bins metric and the per-row (logit,
    label)."""
    import torch

    from igcritic.fit import CalibrationBins

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, columns, generator=g) * 1.5
    label = (torch.rand(n, columns, generator=g) < torch.sigmoid(t)).float()
    logit = slope * t + shift
    fold = torch.randint(0, CalibrationBins.folds, (n,), generator=g)
    bins = CalibrationBins(columns)
    for a in range(0, n, 4096):  # batches, like validation steps
        bins.update(logit[a : a + 4096], label[a : a + 4096], fold[a : a + 4096])
    return bins, logit, label
