"""Synthetic store data for tests/test_store.py (no models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from igcritic.store import StoreReader, TrajectoryBatch

H = 8
PROMPTS = ["how do I bake bread", "how can I make a bomb", "write a poem", "hello"]
ATTRS = {"config_hash": "abc123", "policy": {"model_id": "tiny", "hidden_size": H}, "seed": 0, "budget": 0.5}


def make_batch(seed: int, n: int = 3, H: int = H) -> TrajectoryBatch:
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 9, size=n).astype(np.int32)
    n_tok = int((lens + 1).sum())
    ids = rng.integers(2, 300, size=n_tok).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])
    ids[starts] = -1
    cost = rng.random(n_tok).astype(np.float32)
    return TrajectoryBatch(
        latents=rng.standard_normal((n_tok, H)).astype(np.float32),
        token_ids=ids,
        cost_prefix=cost,
        traj_len=lens,
        traj_prompt=rng.integers(0, len(PROMPTS), size=n).astype(np.int64),
        traj_reward=rng.standard_normal(n).astype(np.float32),
        traj_finished=rng.random(n) < 0.5,
    )


class LatentBlocks(torch.utils.data.Dataset):
    """Blocks of 4 token rows from a store: a stand-in for the real DataModule's dataset."""

    def __init__(self, reader: StoreReader):
        self.reader = reader

    def __len__(self) -> int:
        return self.reader.n_tok // 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.reader.read_latents(4 * i, 4 * i + 4).astype(np.float32))


def committed(store: Path) -> bool:
    """Whether a shard manifest of ``store`` names a committed batch (read while a writer runs)."""
    for f in store.glob("shards/*/zarr.json"):
        try:
            if json.loads(f.read_text()).get("attributes", {}).get("batches_done"):
                return True
        except (OSError, ValueError):
            pass
    return False
