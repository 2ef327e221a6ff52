"""Reading a store: all shards as ONE store (the "merged store"), opened lazily in the process that reads.

Trajectories are concatenated in rank order and token offsets shifted accordingly; only rows below each
shard's manifest are visible. Latent rows of uncompressed local chunks are read with ``preadv`` straight into
the caller's rows (:meth:`StoreReader.read_latents_into`, used by the training loader's shuffled reads);
others through zarr.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import weakref
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from igcritic.store.layout import (
    PROMPTS,
    TOKEN_ARRAYS,
    TRAJ_ARRAYS,
    Shard,
    StoreError,
    open_root,
    read_rows,
    started_shards,
)

ARRAYS = {**TOKEN_ARRAYS, **TRAJ_ARRAYS}
IOV_MAX = 1024
"""Buffers per ``preadv`` call (POSIX guarantees at least this many on Linux and macOS)."""


class StoreReader:
    """All shards of a store as one (a snapshot of their manifests), opened lazily on first use.

    Pickles as its path only, so each DataLoader worker reopens it (use the spawn or forkserver start method:
    zarr's event-loop thread does not survive fork).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self._root: zarr.Group | None = None
        self._cache: dict[str, Any] = {}
        self._file: tuple = ("", -1, _no_file)  # (path, fd, closer) of the chunk file read last

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"StoreReader({os.fspath(self.path)!r})"

    def _open(self) -> zarr.Group:
        if self._root is None:
            root = open_root(self.path, "r")
            self._attrs = dict(root.attrs)
            self._shards = started_shards(root)  # every shard that started
            self._tok0 = np.cumsum([0] + [s.n_tok for s in self._shards], dtype=np.int64)
            self._root = root
        return self._root

    @property
    def _s(self) -> list[Shard]:
        self._open()
        return self._shards

    @property
    def attrs(self) -> dict:
        self._open()
        return dict(self._attrs)

    shards = property(lambda self: [s.name for s in self._s], doc="Shard names, rank order.")
    hidden_size = property(lambda self: int(self.attrs["hidden_size"]))
    chunk_tokens = property(
        lambda self: int(self.attrs["chunk_tokens"]), doc="Row chunk of latents: read aligned."
    )
    n_traj = property(lambda self: sum(s.n_traj for s in self._s))
    n_prompts = property(lambda self: int(self._open()[PROMPTS].shape[0]))
    batches_done = property(
        lambda self: {int(i) for s in self._s for i in s.batches_done},
        doc="Committed work-batch indices over all shards.",
    )

    @property
    def n_tok(self) -> int:
        self._open()
        return int(self._tok0[-1])

    @property
    def shard_offsets(self) -> np.ndarray:
        """Global token row where each shard starts, plus ``n_tok`` (chunks are aligned within a shard)."""
        self._open()
        return self._tok0.copy()

    @property
    def chunk_bounds(self) -> np.ndarray:
        """Sorted global token rows where a latents chunk starts, plus ``n_tok`` (read between them)."""
        t0, step = self.shard_offsets, self.chunk_tokens
        return np.unique(
            np.concatenate([np.arange(a, b, step) for a, b in zip(t0[:-1], t0[1:], strict=True)] + [t0])
        )

    @property
    def prompts(self) -> list[str]:
        if "prompts" not in self._cache:
            self._cache["prompts"] = [str(p) for p in self._open()[PROMPTS][:]]
        return self._cache["prompts"]

    def _concat(self, name: str) -> np.ndarray:
        if name not in self._cache:
            parts = [np.zeros(0, ARRAYS[name])]
            for s in self._s:
                if n := s.n_tok if name in TOKEN_ARRAYS else s.n_traj:
                    if name not in s.group:
                        raise StoreError(
                            f"store {self.path} {s.name} lacks {name}; run `igcritic inspect` on it"
                        )
                    parts.append(self._rows(s.group, name, 0, n))
            self._cache[name] = np.concatenate(parts).astype(ARRAYS[name], copy=False)
        return self._cache[name]

    def _rows(self, g: zarr.Group, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return read_rows(g, name, start, stop)
        except StoreError as e:
            raise StoreError(f"store {self.path} {e}") from None

    @property
    def traj_offsets(self) -> np.ndarray:
        """(n_traj + 1,) int64 global token offsets."""
        if "traj_offsets" not in self._cache:
            parts = [
                self._rows(s.group, "traj_offsets", 1, s.n_traj + 1) + t0
                for s, t0 in zip(self._s, self._tok0[:-1], strict=True)
            ]
            self._cache["traj_offsets"] = np.concatenate([np.zeros(1, np.int64), *parts]).astype(np.int64)
        return self._cache["traj_offsets"]

    traj_prompt = property(lambda self: self._concat("traj_prompt"))
    traj_len = property(lambda self: self._concat("traj_len"))
    traj_reward = property(lambda self: self._concat("traj_reward"))
    traj_cost = property(lambda self: self._concat("traj_cost"))
    traj_finished = property(lambda self: self._concat("traj_finished"))
    traj_batch = property(lambda self: self._concat("traj_batch"))
    cost_prefix = property(lambda self: self._concat("cost_prefix"))
    token_ids = property(lambda self: self._concat("token_ids"))

    def trajectory(self, i: int) -> dict[str, Any]:
        """One trajectory: latents (T+1, H), token_ids, cost_prefix, reward, cost, prompt, finished."""
        if not 0 <= i < self.n_traj:
            raise StoreError(f"trajectory {i} is outside the store's [0, {self.n_traj})")
        a, b = (int(x) for x in self.traj_offsets[i : i + 2])
        return {
            "latents": self.read_latents(a, b),
            "token_ids": self.token_ids[a:b],
            "cost_prefix": self.cost_prefix[a:b],
            "reward": float(self.traj_reward[i]),
            "cost": float(self.traj_cost[i]),
            "prompt": int(self.traj_prompt[i]),
            "finished": bool(self.traj_finished[i]),
        }

    def fingerprint(self) -> str:
        """Hash of every committed trajectory's tokens in work-batch order (the -1 row markers make the
        lengths part of it): equal for equal content, whatever the number of shards that wrote it."""
        off, ids, h = self.traj_offsets, self.token_ids.astype(np.int64), hashlib.sha256()
        for i in np.argsort(self.traj_batch, kind="stable"):  # a batch's trajectories keep their order
            h.update(ids[off[i] : off[i + 1]].tobytes())
        return h.hexdigest()[:16]

    def read_latents(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, H) float16 global token rows [start, stop), one contiguous read per chunk."""
        out = np.empty((max(stop - start, 0), self.hidden_size), np.float16)
        self.read_latents_into(start, stop, out, np.arange(len(out)))
        return out

    def read_latents_into(self, start: int, stop: int, out: np.ndarray, dest: np.ndarray) -> None:
        """Scatter global token rows [start, stop) into ``out`` ((n, H) float16, C-contiguous): row
        ``start + i`` lands in ``out[dest[i]]``, rows with ``dest[i] < 0`` are skipped.

        Uncompressed chunks of a local store are read with ``preadv`` straight into their destination rows,
        so a shuffled read costs what a contiguous one does (one kernel copy per row, no array in between);
        compressed or remote chunks go through zarr and one copy."""
        self._open()
        if not 0 <= start <= stop <= self.n_tok:
            raise StoreError(f"token rows [{start}, {stop}) are outside the store's [0, {self.n_tok})")
        if out.dtype != np.float16 or out.ndim != 2 or out.shape[1] != self.hidden_size:
            raise StoreError(f"out must be (n, {self.hidden_size}) float16, got {out.shape} {out.dtype}")
        if len(dest) != stop - start or not out.flags.c_contiguous:
            raise StoreError(f"dest must hold {stop - start} row indices and out be C-contiguous")
        dest = np.asarray(dest, dtype=np.int64)
        for shard, t0, t1 in zip(self._shards, self._tok0[:-1], self._tok0[1:], strict=True):
            lo, hi = max(start, t0) - t0, min(stop, t1) - t0  # rows of this shard
            if lo >= hi:
                continue
            if (key := f"latents/{shard.name}") not in self._cache:  # opening an array reads its zarr.json
                arr = shard.group["latents"]
                self._cache[key] = (arr, _chunk_file(arr))
            arr, chunk_file = self._cache[key]
            step = int(arr.chunks[0])
            for c in range(lo // step, (hi - 1) // step + 1):
                a, b = max(lo, c * step), min(hi, (c + 1) * step)
                d = dest[a + t0 - start : b + t0 - start]
                if chunk_file is None or not _scatter_read(self._fd(chunk_file(c)), a - c * step, out, d):
                    keep = d >= 0
                    out[d[keep]] = arr[a:b][keep]

    def _fd(self, path: str) -> int:
        """An open descriptor of ``path``, kept while reads stay in that file; -1 when it is missing."""
        if self._file[0] != path:
            self._file[2]()  # closes the last file
            try:
                fd = os.open(path, os.O_RDONLY)
            except (
                FileNotFoundError
            ):  # a lost chunk: zarr reads it as fill values (validate_store reports it)
                fd = -1
            self._file = (path, fd, weakref.finalize(self, os.close, fd) if fd >= 0 else _no_file)
        return self._file[1]


def _preadv():
    """libc's ``preadv`` through ctypes, or None where there is none (then every read goes through zarr)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        f = libc.preadv
    except (OSError, AttributeError, TypeError):
        return None
    f.argtypes, f.restype = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64], ctypes.c_ssize_t
    return f if ctypes.sizeof(ctypes.c_void_p) == 8 and sys.byteorder == "little" else None


_PREADV = _preadv()


def _no_file() -> None:
    """The closer of no file."""


def _chunk_file(arr: zarr.Array):
    """``chunk -> file path`` of a latents array whose chunks are raw little-endian C-order rows in local
    files (zarr's bytes codec alone, one chunk across the width); None for any other array."""
    store, md = arr.store_path.store, arr.metadata
    codecs = getattr(md, "codecs", ())
    if (
        _PREADV is None
        or not isinstance(store, LocalStore)
        or len(codecs) != 1
        or not isinstance(codecs[0], zarr.codecs.BytesCodec)
        or getattr(codecs[0].endian, "value", None) != "little"
        or tuple(arr.chunks[1:]) != tuple(arr.shape[1:])
        or arr.dtype != np.float16
    ):
        return None
    folder = os.path.join(str(store.root), arr.store_path.path)
    return lambda c: os.path.join(folder, md.encode_chunk_key((c, *[0] * (arr.ndim - 1))))


def _scatter_read(fd: int, row: int, out: np.ndarray, dest: np.ndarray) -> bool:
    """Read ``len(dest)`` rows from row ``row`` of the raw chunk file ``fd`` into ``out[dest]`` (skipping
    ``dest < 0``): one ``preadv`` per unbroken stretch of the file, one buffer per run of rows that are
    consecutive in both file and ``out``. False when the file is short (zarr then reads the chunk)."""
    rb = out.shape[1] * out.itemsize
    src = np.flatnonzero(dest >= 0)  # rows of the file to read
    if fd < 0 or not len(src):
        return fd >= 0
    d = dest[src]
    brk = np.flatnonzero((np.diff(src) != 1) | (np.diff(d) != 1)) + 1  # where a new buffer starts
    starts = np.concatenate(([0], brk))
    n_rows = np.diff(np.concatenate((starts, [len(src)])))
    iov = np.empty((len(starts), 2), np.uint64)  # struct iovec {void *base; size_t len}
    iov[:, 0] = out.ctypes.data + d[starts].astype(np.uint64) * rb
    iov[:, 1] = n_rows * rb
    jumps = np.flatnonzero(np.diff(src)[brk - 1] != 1) + 1  # buffers after skipped rows start a new call
    bounds = [0, *jumps.tolist(), len(starts)]
    first = (row + src[starts]) * rb
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        for c in range(a, b, IOV_MAX):
            e = min(c + IOV_MAX, b)
            if _PREADV(fd, iov.ctypes.data + 16 * c, e - c, int(first[c])) != int(n_rows[c:e].sum()) * rb:
                return False
    return True
