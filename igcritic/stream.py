"""The critic's example stream: token-level examples read from Zarr stores, shuffled, sharded, batched.

Every row ``t`` of a stored trajectory is one example, computed on the fly from the stored arrays (no
second copy on disk): the latent ``h_t``, the prefix cost ``S_t``, the cost still to come
``F_t = S_T - S_t``, the discounted reward to go ``gamma^(T - t) R`` and, per example, a budget ``d`` drawn
from :class:`BudgetDistribution` giving the safety state ``z = d - S_t`` and the label ``1{F_t <= z}``
(docs/design.md sections 2-3). :mod:`igcritic.data` splits the stores' rows by prompt and hands them here.

Reading: runs of split rows are cut at the stores' chunk boundaries into blocks; each epoch the blocks are
permuted (seed, epoch), the resulting row stream is cut into equal shares per rank (DDP) and per worker,
and each worker pools its blocks' rows in windows of at least ``shuffle_buffer`` rows. A window's rows are
shuffled first and then read straight into their batch slots (:meth:`StoreReader.read_latents_into`), so
the only copy of a latent is the read itself; targets are computed for a whole window at once. Every rank
yields the same number of batches, so DDP never waits on a rank that ran out. Rows whose targets are
NaN/inf are flagged ``valid = False`` here, rows whose latent is NaN/inf by :func:`mask_nonfinite` on the
device (the LightningModule calls it); both are zeroed, masked out of losses and metrics, and counted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler, get_worker_info

FLOAT_KEYS = ("z", "label", "f", "s", "s_final", "value")
INT_KEYS = ("t", "traj", "prompt", "row")
_TARGETS = ("s", "s_final", "f", "value")
RUN_COLUMNS = ("store", "start", "stop", "chunk")
"""Columns of a run array ``(R, 4)`` int64: token rows ``[start, stop)`` of store ``store``, all inside its
latents chunk ``chunk`` (what the stream reads in one go)."""
STORE, START, STOP, CHUNK = range(len(RUN_COLUMNS))
_KEEP_BUFFERS = 4
"""Window buffers a stream keeps for reuse (fresh memory costs page faults, which on small VMs take longer
than the reads); a buffer is reused once no batch of it is alive."""
CONTEXT_READ_ROWS = 16384
"""Most token rows one read of :meth:`StoreRows.context` merges (a longer trajectory is read whole)."""
CONTEXT_SUM_ROWS = 512
"""Rows of whole trajectories :meth:`StoreRows.context` sums at a time (a longer trajectory is summed alone):
a float64 buffer this size stays in cache, where a cumulative sum over a whole read is memory-bound."""
CONTEXT_GAP = 1024
"""Rows between two trajectories that :meth:`StoreRows.context` reads through to keep them in one read (the
other split's rows, say: a read costs more than the rows)."""


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
class StoreInfo:
    """The small per-trajectory arrays of one store (read once in the main process)."""

    path: str
    n_tok: int
    width: int  # latent width of a row (the store's hidden_size: one layer or several concatenated)
    offsets: np.ndarray  # (n_traj + 1,) int64
    traj_prompt: np.ndarray  # (n_traj,) int64, GLOBAL prompt id (index into CriticDataModule.prompt_texts)
    traj_cost: np.ndarray  # (n_traj,) float32 S_T
    budget: float
    bounds: np.ndarray  # sorted row boundaries of this store's chunks (0 ... n_tok)


class StoreRows:
    """A lazily opened store: rows -> targets (opened in the process that reads, e.g. a worker)."""

    def __init__(self, path: str, traj_prompt: np.ndarray, gamma: float):
        from igcritic.store import StoreReader

        self.reader = StoreReader(path)  # its per-trajectory and per-row arrays load once, on first use
        self.traj_prompt, self.gamma = traj_prompt, gamma
        self._sums: np.ndarray | None = None

    def context(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(first, mean)``, float16 ``(n, H)``, of this store's rows ``rows`` (any order): h_0 of each row's
        trajectory and the mean of h_0..h_t (what a ``cost_context`` critic reads beside h_t; the runtime's
        ``RunningPrefix``). The trajectories are read from their start to the furthest row asked, nearby ones
        in one read (gaps up to ``CONTEXT_GAP`` rows, up to ``CONTEXT_READ_ROWS`` rows a read), and summed in
        float64 a few whole trajectories at a time (``CONTEXT_SUM_ROWS``, in one reused buffer): the memory is
        a window's, not the store's, for a second read of its rows."""
        r, n = self.reader, len(rows)
        off = r.traj_offsets
        first = np.empty((n, r.hidden_size), np.float16)
        mean = np.empty((n, r.hidden_size), np.float16)
        if not n:
            return first, mean
        trajs, which = np.unique(np.searchsorted(off, rows, side="right") - 1, return_inverse=True)
        stop = np.zeros(len(trajs), np.int64)
        np.maximum.at(stop, which, rows + 1)
        start = off[trajs]
        # the rows by trajectory: trajectory k's are order[ptr[k] : ptr[k + 1]]
        order = np.argsort(which, kind="stable")
        ptr = np.concatenate([[0], np.cumsum(np.bincount(which, minlength=len(trajs)))])
        k = 0
        while k < len(trajs):  # one read: trajectories k .. k_read - 1
            k_read = k + 1
            while k_read < len(trajs) and start[k_read] - stop[k_read - 1] <= CONTEXT_GAP:
                if stop[k_read] - start[k] > CONTEXT_READ_ROWS:
                    break
                k_read += 1
            lo = int(start[k])
            x = r.read_latents(lo, int(stop[k_read - 1]))
            while k < k_read:  # one sum: whole trajectories k .. k_sum - 1, up to CONTEXT_SUM_ROWS rows
                k_sum = k + 1
                while k_sum < k_read and stop[k_sum] - start[k] <= CONTEXT_SUM_ROWS:
                    k_sum += 1
                a, b = int(start[k]) - lo, int(stop[k_sum - 1]) - lo
                total = self._sum_buffer(b - a + 1)  # total[i]: the sum of the block's first i rows
                total[0], total[1:] = 0, x[a:b]  # cast first: a cumulative sum that casts is 5x slower
                np.cumsum(total[1:], 0, out=total[1:])
                mine = order[ptr[k] : ptr[k_sum]]
                t0, t = start[which[mine]] - lo, rows[mine] - lo  # each row's trajectory start and itself
                first[mine] = x[t0]
                mean[mine] = (total[t + 1 - a] - total[t0 - a]) / (t - t0 + 1)[:, None]
                k = k_sum
        return first, mean

    def _sum_buffer(self, n: int) -> np.ndarray:
        """An (n, H) float64 scratch buffer, reused across calls (fresh memory costs page faults)."""
        if self._sums is None or len(self._sums) < n:
            self._sums = np.empty((max(n, CONTEXT_SUM_ROWS + 1), self.reader.hidden_size), np.float64)
        return self._sums[:n]

    def targets(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row targets of the (sorted) rows ``rows`` of this store; ``valid`` is False where one is
        NaN/inf (those targets are zeroed)."""
        r = self.reader
        traj = np.searchsorted(r.traj_offsets, rows, side="right") - 1
        t = rows - r.traj_offsets[traj]
        s_t = r.cost_prefix[rows]
        s_final = r.traj_cost[traj]
        value = (self.gamma ** (r.traj_len[traj].astype(np.int64) - t)) * r.traj_reward[traj]
        tg = {
            "t": t,
            "s": s_t,
            "s_final": s_final,
            "f": s_final - s_t,
            "value": value.astype(np.float32),
            "traj": traj,
            "prompt": self.traj_prompt[traj],
        }
        valid = np.logical_and.reduce([np.isfinite(tg[k]) for k in _TARGETS])
        if not valid.all():
            for k in _TARGETS:
                tg[k] = np.where(valid, tg[k], 0).astype(np.float32)
        return {**tg, "valid": valid}


def run_rows(runs: np.ndarray) -> np.ndarray:
    """Rows of each run, ``(R,)``."""
    return runs[:, STOP] - runs[:, START]


def new_chunk(runs: np.ndarray) -> np.ndarray:
    """``(R,)`` bool: the run starts another (store, chunk) than the one before it (the first run does)."""
    return np.r_[len(runs) > 0, (runs[1:, [STORE, CHUNK]] != runs[:-1, [STORE, CHUNK]]).any(axis=1)]


class CriticStream(IterableDataset):
    """Batches of critic examples for one split; see the module docstring for the read order.

    Yields dicts of tensors, each ``(B,)`` except ``h`` ``(B, H)`` float16: h, z, label, f, s, s_final,
    value, valid, t, traj, prompt, row (traj/row are global ids across stores); with ``context`` also
    ``h_first`` and ``h_mean`` ``(B, H)`` float16. The batches of one window
    are views of a few window-sized tensors, so a worker ships one shared-memory segment per window.
    """

    def __init__(
        self,
        stores: list[StoreInfo],
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
        context: bool = False,
    ):
        self.context = context
        """Batches also carry ``h_first`` and ``h_mean`` (:meth:`StoreRows.context`)."""
        self.paths = [s.path for s in stores]
        self.traj_prompt = [s.traj_prompt for s in stores]
        self.width = int(stores[0].width)
        self.store_budget = np.asarray([s.budget for s in stores], dtype=np.float64)
        self.row_base = np.concatenate([[0], np.cumsum([s.n_tok for s in stores])]).astype(np.int64)
        self.traj_base = np.concatenate([[0], np.cumsum([len(s.traj_cost) for s in stores])]).astype(np.int64)
        self.runs, self.block_ptr = runs, block_ptr  # runs (R, 4) of RUN_COLUMNS; blocks: CSR
        self.batch_size, self.shuffle, self.shuffle_buffer = batch_size, shuffle, shuffle_buffer
        self.seed, self.gamma, self.budget, self.drop_last = seed, gamma, budget, drop_last
        self.rank, self.world_size, self.num_workers = 0, 1, 0
        self._epoch = torch.zeros((), dtype=torch.int64)  # moved to shared memory by EpochLoader with workers
        self._rows: dict[int, StoreRows] = {}
        self._bufs: list[np.ndarray] = []

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": {}, "_bufs": []}  # a worker opens the stores, owns its buffers

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Change the block order (and budget draws) for this epoch; called by Lightning via the loader.
        Persistent workers see it too (the epoch is in shared memory)."""
        self._epoch.fill_(int(epoch))

    def set_distributed(self, rank: int, world_size: int, num_workers: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers

    @property
    def n_rows(self) -> int:
        return int(run_rows(self.runs).sum())

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
        cum = np.concatenate([[0], np.cumsum(run_rows(runs))])
        per_rank = int(cum[-1]) // world_size
        lo = rank * per_rank + per_rank * worker // num_workers
        hi = rank * per_rank + per_rank * (worker + 1) // num_workers
        if hi <= lo:
            return runs[:0]
        i0 = int(np.searchsorted(cum, lo, side="right")) - 1
        i1 = int(np.searchsorted(cum, hi, side="left"))
        out = runs[i0:i1].copy()
        out[0, START] += lo - cum[i0]
        out[-1, STOP] -= cum[i1] - hi
        return out

    def windows(self, runs: np.ndarray) -> list[np.ndarray]:
        """``runs`` cut into windows: whole chunks' worth of consecutive runs, closed as soon as they hold at
        least ``max(shuffle_buffer, batch_size)`` rows (the last window may hold fewer)."""
        need, out, i, n = max(self.shuffle_buffer, self.batch_size), [], 0, 0
        rows, chunk_starts = run_rows(runs), new_chunk(runs)
        for j in range(1, len(runs) + 1):
            n += int(rows[j - 1])
            same_chunk = j < len(runs) and not chunk_starts[j]
            if n >= need and not same_chunk or j == len(runs):
                out.append(runs[i:j])
                i, n = j, 0
        return out

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        epoch = self.epoch
        rng = np.random.default_rng([self.seed, epoch if self.shuffle else 0, self.rank, wid])
        left = None
        for runs in self.windows(self.plan(epoch, self.rank, self.world_size, wid, nw)):
            batches, left = self._window(runs, left, rng, final=False)
            yield from batches
        if left is not None:
            batches, _ = self._window(self.runs[:0], left, rng, final=True)
            yield from batches

    def _store(self, s: int) -> StoreRows:
        if s not in self._rows:
            self._rows[s] = StoreRows(self.paths[s], self.traj_prompt[s], self.gamma)
        return self._rows[s]

    def targets(self, runs: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row targets of the rows of ``runs``, in order (with ``store`` and global ``row``/``traj``)."""
        lens = run_rows(runs)
        out: dict[str, np.ndarray] = {}
        for s in np.unique(runs[:, STORE]).tolist():  # one vectorised call per store
            mine = runs[:, STORE] == s
            rows = _ranges(runs[mine, START], runs[mine, STOP])
            tg = self._store(s).targets(rows)
            tg.update(
                store=np.full(len(rows), s), row=rows + self.row_base[s], traj=tg["traj"] + self.traj_base[s]
            )
            if mine.all():
                return tg
            at = np.repeat(mine, lens)  # this store's rows, in run order
            for k, v in tg.items():
                out.setdefault(k, np.empty(len(at), v.dtype))[at] = v
        return out

    def _window(self, runs: np.ndarray, left: tuple | None, rng: np.random.Generator, final: bool):
        """Shuffle the rows of ``runs`` together with the rows ``left`` over from the last window, read them
        into their batch slots, and return the window's batches and the rows left over (< batch_size)."""
        new = self.targets(runs) if len(runs) else None
        metas = [m for m in (left and left[1], new) if m is not None]
        meta = metas[0] if len(metas) == 1 else {k: np.concatenate([m[k] for m in metas]) for k in metas[0]}
        k = 0 if left is None else len(left[0])
        n, bs = len(meta["t"]), self.batch_size
        n_out = n if final and not self.drop_last else (n // bs) * bs
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        flat = order[:n_out].copy()
        n_full = (n_out // bs) * bs
        flat[:n_full].reshape(-1, bs).sort(axis=1)  # order inside a batch does not matter: sorted reads
        flat[n_full:].sort()
        rest = np.sort(order[n_out:])
        slot = np.empty(n, np.int64)
        slot[flat], slot[rest] = np.arange(n_out), np.arange(n_out, n)
        buf = self._buffer(n)
        if k:
            buf[slot[:k]] = left[0]
        # one read per chunk: the rows between its runs (the other split's) are skipped
        group = np.flatnonzero(new_chunk(runs)).tolist()
        lens, at = run_rows(runs).tolist(), k
        for g0, g1 in zip(group, [*group[1:], len(runs)], strict=False):  # no runs: no group
            s, lo, hi = int(runs[g0, STORE]), int(runs[g0, START]), int(runs[g1 - 1, STOP])
            dest = np.full(hi - lo, -1, np.int64)
            starts, stops = runs[g0:g1, START].tolist(), runs[g0:g1, STOP].tolist()
            for a, b, n_run in zip(starts, stops, lens[g0:g1], strict=True):
                dest[a - lo : b - lo] = slot[at : at + n_run]
                at += n_run
            self._store(s).reader.read_latents_into(lo, hi, buf, dest)
        m = {key: v[flat] for key, v in meta.items()}
        context = self._context_rows(m) if self.context else {}
        d = self.budget.sample(rng, self.store_budget[m.pop("store")])
        m["z"] = (d - m["s"]).astype(np.float32)
        m["label"] = (m["f"] <= m["z"]).astype(np.float32)
        floats = torch.from_numpy(np.stack([m[key] for key in FLOAT_KEYS]).astype(np.float32))  # (6, n_out)
        ints = torch.from_numpy(np.stack([m[key] for key in INT_KEYS]).astype(np.int64))  # (4, n_out)
        # every field's batches are views of one window-sized storage: a worker moves each to shared memory
        # once per window, and a batch costs no more than a dict of views
        cols = {"h": torch.from_numpy(buf[:n_out]).split(bs), "valid": torch.from_numpy(m["valid"]).split(bs)}
        cols.update({key: torch.from_numpy(v).split(bs) for key, v in context.items()})
        cols.update({key: floats[c].split(bs) for c, key in enumerate(FLOAT_KEYS)})
        cols.update({key: ints[c].split(bs) for c, key in enumerate(INT_KEYS)})
        names = list(cols)
        # a window of fewer rows than a batch yields no batch (split() of an empty tensor is one empty view)
        batches = (
            dict(zip(names, views, strict=True)) for views in zip(*cols.values(), strict=True) if n_out
        )
        kept = (buf[n_out:n], {key: v[rest] for key, v in meta.items()}) if len(rest) else None
        return batches, kept

    def _context_rows(self, m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``h_first`` and ``h_mean`` (n, H) float16 of the rows ``m`` (global row, store)."""
        n = len(m["row"])
        out = {k: np.empty((n, self.width), np.float16) for k in ("h_first", "h_mean")}
        for s in np.unique(m["store"]).tolist():
            mine = m["store"] == s
            out["h_first"][mine], out["h_mean"][mine] = self._store(s).context(
                m["row"][mine] - self.row_base[s]
            )
        return out

    def _buffer(self, n: int) -> np.ndarray:
        """A (>= n, width) float16 buffer that no live batch or leftover row uses (reused when possible)."""
        for b in self._bufs:
            # references: the list, ``b`` and getrefcount's argument; any more is a live view of it
            if len(b) >= n and sys.getrefcount(b) <= 3:
                return b
        b = np.empty((max(n, 2 * self.shuffle_buffer + self.batch_size), self.width), np.float16)
        self._bufs = [b, *self._bufs[: _KEEP_BUFFERS - 1]]
        return b


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(a, b)`` over the pairs, vectorised."""
    lens = stops - starts
    return np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))


def mask_nonfinite(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flag rows whose latent holds NaN/inf as invalid and zero them (on the batch's device, in float32).

    The stream flags non-finite targets while reading; latents are checked here, after the transfer, where
    the float32 copy the critic needs is made anyway (free on a GPU, no extra pass in the loader)."""
    keys = [k for k in ("h", "h_first", "h_mean") if k in batch]  # with the context of a cost_context critic
    hs = {k: batch[k].float() for k in keys}  # (B, H) each
    ok = torch.stack([torch.isfinite(h).all(dim=1) for h in hs.values()]).all(0)
    zero = torch.zeros((), dtype=torch.float32, device=ok.device)
    hs = {k: torch.where(ok[:, None], h, zero) for k, h in hs.items()}  # no host sync
    return {**batch, **hs, "valid": batch["valid"] & ok}


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


def _as_is(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loader's collate function: the stream yields finished batches."""
    return batch


class EpochLoader(DataLoader):
    """A DataLoader over a :class:`CriticStream` whose ``sampler.set_epoch`` reaches the stream, in the
    training process and in its (persistent) workers."""

    def __init__(self, dataset: CriticStream, batch_size: None = None, **kwargs):
        if kwargs.get("num_workers", 0) > 0:
            dataset._epoch.share_memory_()
            kwargs.setdefault("persistent_workers", True)
        super().__init__(dataset, batch_size=None, collate_fn=_as_is, **kwargs)  # batches come whole
        self.__dict__["sampler"] = _EpochSignal(dataset)  # DataLoader forbids re-assigning .sampler


__all__ = ["BudgetDistribution", "CriticStream", "EpochLoader", "StoreInfo", "StoreRows", "mask_nonfinite"]
