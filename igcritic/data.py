"""CriticDataModule: token-level critic examples streamed from one or more Zarr stores.

Used by ``igcritic fit --config configs/fit/embedded.yaml`` (the ``data:`` section).

Every row ``t`` of a stored trajectory is one example, computed on the fly from the stored arrays (no
second copy on disk): the latent ``h_t``, the prefix cost ``S_t``, the cost still to come
``F_t = S_T - S_t``, the discounted reward to go ``gamma^(T - t) R`` and, per example, a budget ``d`` drawn
from :class:`BudgetDistribution` giving the safety state ``z = d - S_t`` and the label ``1{F_t <= z}``
(docs/design.md sections 2-3). The train/val split is by prompt text across all stores (seeded).

Reading: runs of split rows are cut at the stores' chunk boundaries into blocks; each epoch the blocks are
permuted (seed, epoch), the resulting row stream is cut into equal shares per rank (DDP) and per worker,
and each worker reads its blocks contiguously and shuffles rows inside a buffer of ``shuffle_buffer`` rows.
Every rank yields the same number of batches, so DDP never waits on a rank that ran out. Rows whose
targets are NaN/inf are flagged ``valid = False`` by the stream, rows whose latent is NaN/inf by
:func:`mask_nonfinite` on the device (the LightningModule calls it); both are zeroed, masked out of
losses and metrics, and counted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, Sampler, get_worker_info

from igcritic import IgcriticError
from igcritic.policy import PolicyIdentity

log = logging.getLogger(__name__)


class DataError(IgcriticError):
    """The stores or the data settings cannot produce a train/val split."""


@dataclass(frozen=True)
class BudgetDistribution:
    """Where the per-example budget ``d`` comes from (``z = d - S_t``)."""

    low: float
    """Lower end of the uniform part."""
    high: float
    """Upper end of the uniform part."""
    store_share: float = 0.25
    """Share of examples that use the store's own budget instead of a uniform draw."""

    def sample(self, rng: np.random.Generator, store_budget: np.ndarray) -> np.ndarray:
        d = rng.uniform(self.low, self.high, len(store_budget))
        at_store = (rng.random(len(store_budget)) < self.store_share) & np.isfinite(store_budget)
        return np.where(at_store, store_budget, d)


@dataclass
class _StoreInfo:
    """The small per-trajectory arrays of one store (read once in the main process)."""

    path: str
    n_tok: int
    offsets: np.ndarray  # (n_traj + 1,) int64
    traj_prompt: np.ndarray  # (n_traj,) int64, GLOBAL prompt id (index into CriticDataModule.prompt_texts)
    traj_cost: np.ndarray  # (n_traj,) float32 S_T
    budget: float
    bounds: np.ndarray  # sorted row boundaries of this store's chunks (0 ... n_tok)


class _StoreRows:
    """A worker's lazily opened store: rows -> example arrays."""

    def __init__(self, path: str, traj_prompt: np.ndarray, gamma: float):
        from igcritic.store import StoreReader

        self.reader = StoreReader(path)
        r = self.reader
        self.offsets = np.asarray(r.traj_offsets, dtype=np.int64)
        self.traj_len = np.asarray(r.traj_len, dtype=np.int64)
        self.traj_cost = np.asarray(r.traj_cost, dtype=np.float32)
        self.traj_reward = np.asarray(r.traj_reward, dtype=np.float32)
        self.cost_prefix = np.asarray(r.cost_prefix, dtype=np.float32)
        self.traj_prompt, self.gamma = traj_prompt, gamma

    def targets(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row targets of the (sorted) global rows ``rows`` of this store."""
        traj = np.searchsorted(self.offsets, rows, side="right") - 1
        t = rows - self.offsets[traj]
        s_t = self.cost_prefix[rows]
        s_final = self.traj_cost[traj]
        value = (self.gamma ** (self.traj_len[traj] - t)) * self.traj_reward[traj]
        return {
            "t": t,
            "s": s_t,
            "s_final": s_final,
            "f": s_final - s_t,
            "value": value.astype(np.float32),
            "traj": traj,
            "prompt": self.traj_prompt[traj],
        }


class CriticStream(IterableDataset):
    """Batches of critic examples for one split; see the module docstring for the read order.

    Yields dicts of tensors, each ``(B,)`` except ``h`` ``(B, H)`` float16: h, z, label, f, s, s_final,
    value, valid, t, traj, prompt, row (traj/row are global ids across stores).
    """

    def __init__(
        self,
        stores: list[_StoreInfo],
        runs: np.ndarray,
        block_ptr: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        gamma: float,
        budget: BudgetDistribution,
        drop_last: bool = False,
    ):
        self.paths = [s.path for s in stores]
        self.traj_prompt = [s.traj_prompt for s in stores]
        self.store_budget = np.asarray([s.budget for s in stores], dtype=np.float64)
        self.row_base = np.concatenate([[0], np.cumsum([s.n_tok for s in stores])]).astype(np.int64)
        self.traj_base = np.concatenate([[0], np.cumsum([len(s.traj_cost) for s in stores])]).astype(np.int64)
        self.runs, self.block_ptr = runs, block_ptr  # runs (R, 4) [store, start, stop, chunk]; blocks: CSR
        self.batch_size, self.shuffle, self.shuffle_buffer = batch_size, shuffle, shuffle_buffer
        self.seed, self.gamma, self.budget, self.drop_last = seed, gamma, budget, drop_last
        self.epoch, self.rank, self.world_size, self.num_workers = 0, 0, 1, 0
        self._rows: dict[int, _StoreRows] | None = None

    def __getstate__(self) -> dict:
        return {
            k: v for k, v in {**self.__dict__, "_rows": None}.items() if k != "_buf"
        }  # workers open the stores

    def set_epoch(self, epoch: int) -> None:
        """Change the block order (and budget draws) for this epoch; called by Lightning via the loader."""
        self.epoch = int(epoch)

    def set_distributed(self, rank: int, world_size: int, num_workers: int) -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers

    @property
    def n_rows(self) -> int:
        return int((self.runs[:, 2] - self.runs[:, 1]).sum())

    def _shares(self) -> list[int]:
        per_rank = self.n_rows // self.world_size  # the < world_size leftover rows of an epoch are dropped
        nw = max(self.num_workers, 1)
        return [per_rank * (w + 1) // nw - per_rank * w // nw for w in range(nw)]

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        div = (lambda n: n // self.batch_size) if self.drop_last else (lambda n: -(-n // self.batch_size))
        return sum(div(n) for n in self._shares())

    def plan(
        self, epoch: int, rank: int, world_size: int, worker: int = 0, num_workers: int = 1
    ) -> np.ndarray:
        """The runs ``(store, start, stop, chunk)`` one worker of one rank reads in one epoch, in order."""
        nb = len(self.block_ptr) - 1
        order = np.random.default_rng([self.seed, epoch]).permutation(nb) if self.shuffle else np.arange(nb)
        counts = np.diff(self.block_ptr)[order]
        idx = np.repeat(self.block_ptr[order] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        runs = self.runs[idx]
        cum = np.concatenate([[0], np.cumsum(runs[:, 2] - runs[:, 1])])
        per_rank = int(cum[-1]) // world_size
        lo = rank * per_rank + per_rank * worker // num_workers
        hi = rank * per_rank + per_rank * (worker + 1) // num_workers
        if hi <= lo:
            return runs[:0]
        i0 = int(np.searchsorted(cum, lo, side="right")) - 1
        i1 = int(np.searchsorted(cum, hi, side="left"))
        out = runs[i0:i1].copy()
        out[0, 1] += lo - cum[i0]
        out[-1, 2] -= cum[i1] - hi
        return out

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        runs = self.plan(self.epoch, self.rank, self.world_size, wid, nw)
        rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0, self.rank, wid])
        # the pool's buffer is kept across epochs (fresh memory costs page faults, which on small VMs take
        # longer than the reads); an iterator running at the same time as another gets its own
        pool = _Pool(self.__dict__.pop("_buf", None), 2 * self.shuffle_buffer + self.batch_size)
        try:
            for piece in self._read(runs):
                pool.add(piece)
                if pool.n >= max(self.shuffle_buffer, self.batch_size):
                    yield from self._emit(pool, rng, final=False)
            if pool.n:
                yield from self._emit(pool, rng, final=True)
        finally:
            self.__dict__["_buf"] = pool.buf

    def _store(self, s: int) -> _StoreRows:
        if self._rows is None:
            self._rows = {}
        if s not in self._rows:
            self._rows[s] = _StoreRows(self.paths[s], self.traj_prompt[s], self.gamma)
        return self._rows[s]

    def _read(self, runs: np.ndarray, max_span: int | None = None):
        """Read runs ``(store, start, stop, chunk)`` with one contiguous read per chunk (neighbouring chunks
        merged up to ``max_span`` rows, default the shuffle buffer). Yields ``span`` (the rows read, (n, H)
        float16), ``idx`` (the split's rows inside it) and the per-row targets of those rows; ``valid`` is
        False where a target is NaN/inf."""
        max_span = max_span or self.shuffle_buffer
        i = 0
        while i < len(runs):
            s, lo = int(runs[i, 0]), int(runs[i, 1])
            j = i + 1
            while (
                j < len(runs)
                and runs[j, 0] == s
                and (
                    runs[j, 3] == runs[j - 1, 3]
                    and runs[j, 1] >= runs[j - 1, 2]
                    or runs[j, 1] == runs[j - 1, 2]
                    and runs[j, 2] - lo <= max_span
                )
            ):
                j += 1
            hi = int(runs[j - 1, 2])
            st = self._store(s)
            span = np.asarray(st.reader.read_latents(lo, hi))  # (hi - lo, H) float16, one contiguous read
            rows = np.concatenate([np.arange(a, b) for a, b in runs[i:j, 1:3]])
            tg = st.targets(rows)
            valid = np.ones(len(rows), dtype=bool)
            for k in ("s", "s_final", "f", "value"):
                valid &= np.isfinite(tg[k])
            if not valid.all():
                for k in ("s", "s_final", "f", "value"):
                    tg[k] = np.where(valid, tg[k], 0).astype(np.float32)
            yield {
                "span": span,
                "idx": rows - lo,
                **tg,
                "valid": valid,
                "store": np.full(len(rows), s),
                "row": rows + self.row_base[s],
                "traj": tg["traj"] + self.traj_base[s],
            }
            del span  # let the next read reuse this memory (fresh pages cost more than the copy)
            i = j

    def _emit(self, pool: _Pool, rng: np.random.Generator, final: bool):
        """Yield the pool's full batches (all rows when ``final``) in random order; keep the rest pooled.
        The per-row arrays are gathered once per call for all its batches."""
        n, bs = pool.n, self.batch_size
        n_out = n if final and not self.drop_last else (n // bs) * bs
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        flat = order[:n_out].copy()
        n_full = (n_out // bs) * bs
        flat[:n_full].reshape(-1, bs).sort(axis=1)  # order inside a batch does not matter; sorted is faster
        flat[n_full:].sort()
        meta = _concat(pool.metas)
        m = {k: v[flat] for k, v in meta.items()}
        d = self.budget.sample(rng, self.store_budget[m.pop("store")])
        m["z"] = (d - m["s"]).astype(np.float32)
        m["label"] = (m["f"] <= m["z"]).astype(np.float32)
        if get_worker_info() is None:  # in the training process: per-field arrays, the least work per batch
            for a in range(0, n_out, bs):
                h_b = np.take(pool.h, flat[a : a + bs], axis=0, mode="clip")  # (B, H) float16
                yield {
                    "h": torch.from_numpy(h_b),
                    **{k: torch.from_numpy(v[a : a + bs]) for k, v in m.items()},
                }
        else:  # in a worker: one memory block per batch, the least work for the trip through shared memory
            floats = np.stack([m[k] for k in _FLOAT_KEYS], axis=1).astype(np.float32)  # (n_out, 6)
            ints = np.stack([m[k] for k in _INT_KEYS], axis=1).astype(np.int64)  # (n_out, 4)
            for a in range(0, n_out, bs):
                b = min(a + bs, n_out)
                yield _batch(pool.h, flat[a:b], floats[a:b], ints[a:b], m["valid"][a:b])
        pool.keep(np.sort(order[n_out:]), meta)


class _Pool:
    """The shuffle buffer: the split's rows of each read, copied into one (reused) buffer."""

    def __init__(self, buf: np.ndarray | None, capacity: int):
        self.buf, self.capacity = buf, capacity
        self.metas: list[dict[str, np.ndarray]] = []
        self.n = 0

    @property
    def h(self) -> np.ndarray:
        """(n, H) float16 pooled latents."""
        return self.buf[: self.n]

    def add(self, piece: dict[str, np.ndarray]) -> None:
        span, idx = (
            piece.pop("span"),
            piece.pop("idx"),
        )  # the span is released right after: its memory is reused
        k = len(idx)
        if self.buf is None or len(self.buf) < self.n + k or self.buf.shape[1] != span.shape[1]:
            grown = np.empty((max(self.n + k, self.capacity), span.shape[1]), dtype=np.float16)
            if self.n:
                grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        out = self.buf[self.n : self.n + k]
        if k and idx[-1] - idx[0] == k - 1:
            out[:] = span[idx[0] : idx[0] + k]  # contiguous rows: a plain copy
        elif k:  # mode="clip" lets numpy write straight into ``out`` (indices are valid by construction)
            np.take(span, idx, axis=0, out=out, mode="clip")
        self.metas.append(piece)
        self.n += k

    def keep(self, rest: np.ndarray, meta: dict[str, np.ndarray]) -> None:
        """Keep only the pooled rows ``rest`` (sorted), moved to the front of the buffer."""
        if len(rest):
            self.buf[: len(rest)] = self.buf[rest]
        self.metas = [{k: v[rest] for k, v in meta.items()}] if len(rest) else []
        self.n = len(rest)


_FLOAT_KEYS = ("z", "label", "f", "s", "s_final", "value")
_INT_KEYS = ("t", "traj", "prompt", "row")


def _batch(
    pool_h: np.ndarray, sel: np.ndarray, floats: np.ndarray, ints: np.ndarray, valid: np.ndarray
) -> dict[str, torch.Tensor]:
    """One batch in ONE memory block, every field a view of it: a DataLoader worker then ships a single
    shared-memory segment per batch (each segment costs ~2 ms on small VMs, more than the rows themselves)."""
    n, width = len(sel), pool_h.shape[1]
    sizes = [n * width * 2, n * len(_FLOAT_KEYS) * 4, n * len(_INT_KEYS) * 8, n]
    offs = np.cumsum([0] + [-(-x // 8) * 8 for x in sizes])  # 8-byte aligned sections
    raw = np.empty(int(offs[-1]), dtype=np.uint8)
    np.take(
        pool_h,
        sel,
        axis=0,
        mode="clip",
        out=raw[offs[0] : offs[0] + sizes[0]].view(np.float16).reshape(n, width),
    )
    raw[offs[1] : offs[1] + sizes[1]].view(np.float32).reshape(n, -1)[:] = floats
    raw[offs[2] : offs[2] + sizes[2]].view(np.int64).reshape(n, -1)[:] = ints
    raw[offs[3] : offs[3] + sizes[3]].view(np.bool_)[:] = valid
    t = torch.from_numpy(raw)
    f = t[offs[1] : offs[1] + sizes[1]].view(torch.float32).view(n, -1)
    i = t[offs[2] : offs[2] + sizes[2]].view(torch.int64).view(n, -1)
    return {
        "h": t[offs[0] : offs[0] + sizes[0]].view(torch.float16).view(n, width),  # (B, H)
        **{k: f[:, c] for c, k in enumerate(_FLOAT_KEYS)},
        **{k: i[:, c] for c, k in enumerate(_INT_KEYS)},
        "valid": t[offs[3] : offs[3] + sizes[3]].view(torch.bool),
    }


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def mask_nonfinite(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flag rows whose latent holds NaN/inf as invalid and zero them (on the batch's device, in float32).

    The stream flags non-finite targets while reading; latents are checked here, after the transfer, where
    the float32 copy the critic needs is made anyway (free on a GPU, no extra pass in the loader)."""
    h = batch["h"].float()  # (B, H)
    ok = torch.isfinite(h).all(dim=1)
    h = torch.where(ok[:, None], h, torch.zeros((), dtype=h.dtype, device=h.device))  # no host sync
    return {**batch, "h": h, "valid": batch["valid"] & ok}


class _EpochSignal(Sampler):
    """The index sampler of an iterable-dataset loader (yields None forever) that forwards ``set_epoch``.

    Lightning calls ``loader.sampler.set_epoch(epoch)`` before every training epoch; iterable datasets get
    no sampler of their own, so this one relays the call to :meth:`CriticStream.set_epoch`."""

    def __init__(self, dataset: CriticStream):
        self.dataset = dataset

    def __iter__(self):
        while True:
            yield None

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class EpochLoader(DataLoader):
    """A DataLoader over a :class:`CriticStream` whose ``sampler.set_epoch`` reaches the stream."""

    def __init__(self, dataset: CriticStream, batch_size: None = None, **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)  # the stream yields whole batches
        self.__dict__["sampler"] = _EpochSignal(dataset)  # DataLoader forbids re-assigning .sampler


class CriticDataModule(LightningDataModule):
    """Train/val critic examples from one or more stores written by ``igcritic collect``.

    Args:
        stores: Store paths or fsspec URLs; all must come from the same policy, layer and scorers.
        batch_size: Examples per batch (per rank).
        val_fraction: Share of distinct prompts held out for validation (and ``test``).
        seed: Seed of the prompt split, the block order and the budget draws.
        gamma: Discount of the value target ``gamma^(T - t) R`` (paper Table 3: 0.999).
        budget_low: Lowest training budget; default: min(1% quantile of S_T, store budget).
        budget_high: Highest training budget; default: max(99% quantile of S_T, store budget).
        budget_store_share: Share of examples trained at the store's own budget.
        shuffle_buffer: Rows mixed together when shuffling (several chunks' worth).
        num_workers: DataLoader worker processes per rank (0 reads in the training process).
        multiprocessing_context: Start method of the workers (zarr's event loop deadlocks across fork).
        pin_memory: Pin host batches for faster GPU copies; default: when CUDA is available.
        drop_last: Drop each worker's last partial batch.
        stats_rows: Training rows sampled for the latent normalisation statistics.
    """

    def __init__(
        self,
        stores: list[str],
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        gamma: float = 0.999,
        budget_low: float | None = None,
        budget_high: float | None = None,
        budget_store_share: float = 0.25,
        shuffle_buffer: int = 16384,
        num_workers: int = 0,
        multiprocessing_context: Literal["spawn", "forkserver"] = "spawn",
        pin_memory: bool | None = None,
        drop_last: bool = False,
        stats_rows: int = 65536,
    ):
        super().__init__()
        self.save_hyperparameters()
        problems = []
        if isinstance(stores, str | bytes) or not stores:
            problems.append(f"stores={stores!r} (give a non-empty list of store paths)")
        if batch_size < 1:
            problems.append(f"batch_size={batch_size} (must be >= 1)")
        if not 0.0 < val_fraction < 1.0:
            problems.append(f"val_fraction={val_fraction} (must be in (0, 1))")
        if not 0.0 < gamma <= 1.0:
            problems.append(f"gamma={gamma} (must be in (0, 1])")
        if not 0.0 <= budget_store_share <= 1.0:
            problems.append(f"budget_store_share={budget_store_share} (must be in [0, 1])")
        if budget_low is not None and budget_high is not None and budget_low > budget_high:
            problems.append(f"budget_low={budget_low} > budget_high={budget_high}")
        if num_workers < 0 or shuffle_buffer < 1 or stats_rows < 1:
            problems.append(
                f"num_workers={num_workers}, shuffle_buffer={shuffle_buffer}, stats_rows={stats_rows} "
                "(must be >= 0, >= 1, >= 1)"
            )
        if multiprocessing_context not in ("spawn", "forkserver"):
            problems.append(f"multiprocessing_context={multiprocessing_context!r} (use spawn or forkserver)")
        if problems:
            raise DataError("invalid data settings: " + "; ".join(problems))
        self.stores = [str(s) for s in stores]
        self.batch_size, self.val_fraction, self.seed, self.gamma = batch_size, val_fraction, seed, gamma
        self._budget_low, self._budget_high, self.budget_store_share = (
            budget_low,
            budget_high,
            budget_store_share,
        )
        self.shuffle_buffer, self.num_workers, self.drop_last = shuffle_buffer, num_workers, drop_last
        self.multiprocessing_context, self.stats_rows = multiprocessing_context, stats_rows
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._infos: list[_StoreInfo] | None = None
        self._attrs: dict | None = None
        self.prompt_texts: list[str] = []
        self.train_dataset: CriticStream | None = None
        self.val_dataset: CriticStream | None = None
        self._val_prompts: np.ndarray | None = None

    # ---- store metadata (main process; cheap: per-trajectory arrays only) ----------------------------
    def _load(self) -> list[_StoreInfo]:
        if self._infos is not None:
            return self._infos
        from igcritic.store import StoreError, StoreReader

        readers = []
        for p in self.stores:
            try:
                r = StoreReader(p)
                n_traj = r.n_traj  # the reader is lazy: this opens the store
            except StoreError as e:
                raise DataError(f"data.stores: cannot open {p}: {e}") from None
            readers.append(r)
            if n_traj == 0:
                raise DataError(
                    f"store {p} has zero trajectories, so there is nothing to train on; run "
                    "`igcritic collect` to completion (or drop it from data.stores)"
                )
        first, a0 = self.stores[0], readers[0].attrs
        for p, r in zip(self.stores[1:], readers[1:]):
            a = r.attrs
            if r.hidden_size != readers[0].hidden_size:
                raise DataError(
                    f"store {p} has hidden size {r.hidden_size} but {first} has {readers[0].hidden_size}: "
                    "one critic reads one policy's latents; train one critic per policy"
                )
            diff = PolicyIdentity.from_dict(a0["policy"]).mismatches(a["policy"])
            if diff:
                raise DataError(
                    f"stores {first} and {p} come from different policies ({'; '.join(diff)}): "
                    "mixing policies is not allowed; train one critic per policy"
                )
            for key in ("cost_scorer", "reward_scorer"):
                ids = [(d or {}).get(f) for d in (a0.get(key), a.get(key)) for f in ("id", "sign")]
                if ids[:2] != ids[2:]:
                    raise DataError(
                        f"stores {first} and {p} use different {key}s ({ids[:2]} vs {ids[2:]}): their "
                        "costs/rewards are on different scales; collect with one scorer"
                    )
        texts = sorted({r.prompts[int(i)] for r in readers for i in np.unique(np.asarray(r.traj_prompt))})
        if len(texts) < 2:
            raise DataError(
                f"stores {self.stores} hold {len(texts)} distinct prompt(s); a prompt-level val split "
                "needs at least 2: collect rollouts for more prompts"
            )
        gid = {t: i for i, t in enumerate(texts)}
        infos = []
        for p, r in zip(self.stores, readers):
            local = np.asarray([gid.get(t, -1) for t in r.prompts], dtype=np.int64)
            n_tok = int(r.n_tok)
            step = int(r.chunk_tokens)
            shard = r.shard_offsets
            bounds = np.unique(
                np.concatenate([np.arange(a, b, step) for a, b in zip(shard[:-1], shard[1:])] + [shard])
            )
            infos.append(
                _StoreInfo(
                    path=p,
                    n_tok=n_tok,
                    offsets=np.asarray(r.traj_offsets, dtype=np.int64),
                    traj_prompt=local[np.asarray(r.traj_prompt, dtype=np.int64)],
                    traj_cost=np.asarray(r.traj_cost, dtype=np.float32),
                    budget=float(r.attrs.get("budget") if r.attrs.get("budget") is not None else math.nan),
                    bounds=bounds,
                )
            )
        self._attrs, self.prompt_texts, self._infos = dict(a0), texts, infos
        self._hidden_size = int(readers[0].hidden_size)
        return infos

    @property
    def hidden_size(self) -> int:
        """Latent size H of the stores (linked to ``model.hidden_size`` by the CLI)."""
        self._load()
        return self._hidden_size

    @property
    def policy(self) -> dict:
        """The stores' ``PolicyIdentity`` dict."""
        self._load()
        return dict(self._attrs["policy"])

    @property
    def budget_range(self) -> tuple[float, float]:
        """(low, high) of the uniform budget draws, resolved from the stores when not given."""
        infos = self._load()
        s_final = np.concatenate([i.traj_cost for i in infos])
        s_final = s_final[np.isfinite(s_final)]
        budgets = [i.budget for i in infos if math.isfinite(i.budget)]
        q_lo, q_hi = np.quantile(s_final, [0.01, 0.99]).tolist() if len(s_final) else (0.0, 1.0)
        low = self._budget_low if self._budget_low is not None else min([q_lo, *budgets])
        high = self._budget_high if self._budget_high is not None else max([q_hi, *budgets])
        return float(low), float(max(high, low))

    @property
    def store_budget(self) -> float | None:
        """The budget the stores were collected with (None if they differ or none is recorded)."""
        b = {i.budget for i in self._load()}
        return b.pop() if len(b) == 1 and all(map(math.isfinite, b)) else None

    def critic_metadata(self) -> dict:
        """What the critic artifact records about its training data (CriticConfig fields)."""
        self._load()
        low, high = self.budget_range
        return {
            "gamma": self.gamma,
            "budget_low": low,
            "budget_high": high,
            "budget": self.store_budget,
            "policy": self.policy,
            "cost_scorer": self._attrs.get("cost_scorer"),
            "reward_scorer": self._attrs.get("reward_scorer"),
        }

    def eval_budgets(self) -> list[float]:
        """Default budgets for per-budget metrics: the store budget and the quartiles of the stores' S_T."""
        infos = self._load()
        s_final = np.concatenate([i.traj_cost for i in infos])
        s_final = s_final[np.isfinite(s_final)]
        qs = np.quantile(s_final, [0.25, 0.5, 0.75]).tolist() if len(s_final) else []
        out = [float(f"{b:.3g}") for b in [*qs, *[i.budget for i in infos]] if math.isfinite(b)]
        return sorted(set(out))

    # ---- the split -----------------------------------------------------------------------------------
    def val_prompt_ids(self) -> np.ndarray:
        """Global prompt ids (indices into ``prompt_texts``) held out for validation: seeded, reproducible."""
        if self._val_prompts is None:
            self._load()
            n = len(self.prompt_texts)
            n_val = min(max(1, round(self.val_fraction * n)), n - 1)
            self._val_prompts = np.sort(np.random.default_rng(self.seed).permutation(n)[:n_val])
        return self._val_prompts

    def _runs(self, split: Literal["train", "val"]) -> tuple[np.ndarray, np.ndarray]:
        """Row runs of a split cut at chunk bounds, grouped in blocks: (runs (R, 4), block_ptr (nb + 1,))."""
        pieces = []
        for s, info in enumerate(self._load()):
            is_val = np.isin(info.traj_prompt, self.val_prompt_ids())
            sel = np.flatnonzero(is_val if split == "val" else ~is_val)
            if not len(sel):
                continue
            starts, stops = info.offsets[sel], info.offsets[sel + 1]
            brk = np.flatnonzero(starts[1:] != stops[:-1]) + 1  # merge adjacent trajectories into runs
            r_starts, r_stops = starts[np.r_[0, brk]], stops[np.r_[brk - 1, len(sel) - 1]]
            for a, b in zip(r_starts.tolist(), r_stops.tolist()):
                cuts = info.bounds[(info.bounds > a) & (info.bounds < b)].tolist()
                for lo, hi in zip([a, *cuts], [*cuts, b]):
                    pieces.append((s, lo, hi, int(np.searchsorted(info.bounds, lo, side="right"))))
        if not pieces:
            raise DataError(f"the {split} split is empty; change data.val_fraction={self.val_fraction}")
        runs = np.asarray(pieces, dtype=np.int64)
        new_block = np.r_[True, (runs[1:, [0, 3]] != runs[:-1, [0, 3]]).any(axis=1)]
        block_ptr = np.r_[np.flatnonzero(new_block), len(runs)].astype(np.int64)
        return runs, block_ptr

    def _stream(self, split: Literal["train", "val"]) -> CriticStream:
        runs, ptr = self._runs(split)
        return CriticStream(
            self._load(),
            runs,
            ptr,
            batch_size=self.batch_size,
            shuffle=split == "train",
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            gamma=self.gamma,
            budget=BudgetDistribution(*self.budget_range, self.budget_store_share),
            drop_last=self.drop_last and split == "train",
        )

    # ---- Lightning hooks -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._load()  # validate the stores once, in one process

    def setup(self, stage: str | None = None) -> None:
        rank, world = _rank_world(self.trainer)
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset = self._stream("train"), self._stream("val")
            log.info(
                "critic data: %d train rows, %d val rows, %d/%d prompts held out, budgets U[%.3g, %.3g] "
                "+ %.0f%% at the store budget",
                self.train_dataset.n_rows,
                self.val_dataset.n_rows,
                len(self.val_prompt_ids()),
                len(self.prompt_texts),
                *self.budget_range,
                100 * self.budget_store_share,
            )
        for ds in (self.train_dataset, self.val_dataset):
            ds.set_distributed(rank, world, self.num_workers)

    def train_dataloader(self) -> EpochLoader:
        ds = self._split("train")
        if self.trainer is not None:  # right order on resume, before Lightning's first set_epoch
            ds.set_epoch(self.trainer.current_epoch)
        return self._loader(ds)

    def val_dataloader(self) -> EpochLoader:
        return self._loader(self._split("val"))

    def test_dataloader(self) -> EpochLoader:
        """The validation split (held-out prompts); collect a separate store for a separate test set."""
        return self._loader(self._split("val"))

    def _split(self, split: Literal["train", "val"]) -> CriticStream:
        if self.train_dataset is None:
            self.setup()
        return self.train_dataset if split == "train" else self.val_dataset

    def _loader(self, ds: CriticStream) -> EpochLoader:
        kw: dict = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            kw.update(multiprocessing_context=self.multiprocessing_context, prefetch_factor=4)
        return EpochLoader(ds, **kw)

    # ---- normalisation statistics ----------------------------------------------------------------------
    def normalization_stats(self, max_rows: int | None = None) -> dict[str, torch.Tensor | float]:
        """Mean/std of h over a seeded sample of whole training blocks, loc/scale of F, the value target and
        S_t over all training rows (non-finite rows ignored). The same on every rank."""
        ds, max_rows = self._split("train"), max_rows or self.stats_rows
        order = np.random.default_rng([self.seed, 7]).permutation(len(ds.block_ptr) - 1)
        idx, n = [], 0
        for b in order:
            rows = ds.runs[ds.block_ptr[b] : ds.block_ptr[b + 1]]
            idx.append(np.arange(ds.block_ptr[b], ds.block_ptr[b + 1]))
            n += int((rows[:, 2] - rows[:, 1]).sum())
            if n >= max_rows:
                break
        sample = ds.runs[np.sort(np.concatenate(idx))]
        total, sq, count = 0.0, 0.0, 0
        for piece in ds._read(sample):
            h = piece["span"][piece["idx"][piece["valid"]]].astype(np.float64)
            h = h[np.isfinite(h).all(axis=1)]
            total, sq, count = total + h.sum(0), sq + (h * h).sum(0), count + len(h)
        if count == 0:
            raise DataError(
                f"every sampled training latent of {self.stores} is NaN/inf; re-collect the store"
            )
        mean = total / count
        std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
        out: dict[str, torch.Tensor | float] = {
            "h_mean": torch.from_numpy(mean).float(),
            "h_std": torch.from_numpy(np.where(std > 1e-6, std, 1.0)).float(),
        }
        cols: dict[str, list[np.ndarray]] = {"f": [], "value": [], "s": []}
        for s, info in enumerate(self._load()):
            store = ds._store(s)
            mine = ds.runs[ds.runs[:, 0] == s]
            rows = (
                np.concatenate([np.arange(a, b) for a, b in mine[:, 1:3]])
                if len(mine)
                else np.zeros(0, np.int64)
            )
            tg = store.targets(rows)
            for k in cols:
                cols[k].append(tg[k][np.isfinite(tg[k])])
        for k, name in (("f", "f"), ("value", "v"), ("s", "s")):
            x = np.concatenate(cols[k]).astype(np.float64)
            sd = float(x.std()) if len(x) else 1.0
            out[f"{name}_loc"], out[f"{name}_scale"] = (
                (float(x.mean()) if len(x) else 0.0),
                (sd if sd > 1e-6 else 1.0),
            )
        return out


def _rank_world(trainer) -> tuple[int, int]:
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


__all__ = [
    "CriticDataModule",
    "CriticStream",
    "BudgetDistribution",
    "DataError",
    "EpochLoader",
    "mask_nonfinite",
]
