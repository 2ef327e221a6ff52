"""Synthetic store data for tests/test_store.py (no models); probes of a store a running collect writes."""

from __future__ import annotations

import json
import subprocess
import time
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


COMMIT_DEADLINE_S = 900.0
"""How long a test waits for a child collect's first commit: a hang guard, not a speed check (the first
commit takes seconds alone; a child starting torch on a loaded 2-core machine has taken minutes)."""


def store_state(store: Path) -> str:
    """What a running collect has written to ``store`` so far, in words (for a failure message)."""
    if not store.exists():
        return "no store yet"
    shards = sorted(store.glob("shards/*/zarr.json"))
    if not shards:
        return "a store without shard manifests yet"
    done = []
    for f in shards:
        try:
            done.append(len(json.loads(f.read_text()).get("attributes", {}).get("batches_done") or []))
        except (OSError, ValueError) as e:
            done.append(f"unreadable ({type(e).__name__})")
    return f"{len(shards)} shard manifest(s), batches committed per shard: {done}"


def wait_for_commit(
    proc: subprocess.Popen, store: Path, log: Path, deadline_s: float = COMMIT_DEADLINE_S
) -> None:
    """Return once a shard manifest of ``store`` names a committed batch of the collect ``proc`` runs (its
    stderr goes to ``log``); raise naming the state seen if it exits first or the deadline passes."""
    end = time.monotonic() + deadline_s
    while not committed(store):
        if proc.poll() is not None:
            raise AssertionError(
                f"collect exited with status {proc.returncode} before its first commit; {store}: "
                f"{store_state(store)}; its stderr ends: {log.read_text(errors='replace')[-2000:]}"
            )
        if time.monotonic() > end:
            raise AssertionError(
                f"collect (pid {proc.pid}, still running) committed no batch within {deadline_s:.0f} s; "
                f"{store}: {store_state(store)}; its stderr ends: {log.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.1)
