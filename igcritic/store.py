"""The Zarr v3 store contract: array names, attrs, schema version, shard writer, lazy reader, ``inspect``.

Command: ``igcritic inspect STORE [--budget D]`` (:func:`main` over :class:`InspectConfig`).

Layout (a directory, a ``file://`` URL or an fsspec URL such as ``s3://bucket/run``, one zarr v3 group)::

    <root>/                 attrs: schema_version, hidden_size, chunk_tokens, prompts_count, compression,
                                   config_hash, policy, cost_scorer, reward_scorer, generation, seed,
                                   dataset, software, ... (provenance, given by the caller)
      prompts               (N_prompt,) string
      shards/rank-00000/    attrs = manifest: n_traj, n_tok, batches_done (sorted committed batch indices)
        latents             (N_tok, H) float16      h_t, token-major, trajectories concatenated
        token_ids           (N_tok,) int32          token that led to h_t; -1 at each trajectory's t = 0
        cost_prefix         (N_tok,) float32        S_t
        traj_offsets        (N_traj + 1,) int64     row offsets into this shard; trajectory i has T_i + 1 rows
        traj_prompt         (N_traj,) int64         index into root ``prompts``
        traj_reward, traj_cost (= S_T)  float32;  traj_len (T_i) int32;  traj_finished bool;  traj_batch int64
      shards/rank-00001/ ...  one writer (process) per shard, never two

:class:`StoreReader` presents all shards as ONE store (the "merged store"): trajectories are concatenated in
rank order and token offsets shifted accordingly. Only rows below each shard's manifest are visible.
Latent rows of uncompressed local chunks are read with ``preadv`` straight into the caller's rows
(:meth:`StoreReader.read_latents_into`, used by the training loader's shuffled reads); others through zarr.

Write protocol (per ``append``, so a batch is committed when ``append`` returns):
1. token rows, as one block from the boundary of the last, partly filled chunk (the writer keeps that chunk's
   committed rows in memory and writes them again with the new ones), so writes are chunk-aligned; this costs
   at most one extra chunk per append (write amplification <= 1 + chunk_tokens / rows per batch);
2. per-trajectory arrays and offsets;
3. LAST the manifest (one ``zarr.json`` write).
Rows beyond the manifest are garbage of a killed run: readers never see them, resume overwrites them, and
batches not in ``batches_done`` are redone, so nothing is lost or duplicated. Replacing a chunk that holds
committed rows is safe because each chunk file is replaced atomically: zarr's ``LocalStore`` writes a temp
file and renames it (zarr 3.1 ``storage/_local.py``), object stores (s3, gs) replace objects atomically, and
``file://`` URLs are mapped to ``LocalStore`` here (fsspec's local filesystem writes in place). Multi-rank
with ``overwrite``: ranks > 0 must call ``create`` after rank 0 has (a barrier), otherwise they may attach to
the old store that rank 0 is about to delete.

Writer lock: each writer holds ``writer-rank-RRRRR.lock`` at the store root (JSON: pid, host, rank, since)
under ``flock`` from ``create``/``resume`` until ``close``. A second writer of the same shard, or an
``overwrite`` while any shard's writer runs, is refused in one line naming the holder. The kernel drops the
flock when its process dies, so the lock of a killed run is stale and the next writer takes it over (the file
stays behind until then). On fsspec URLs (no flock) the lock is advisory: a lock of a pid that no longer runs
on this host is stale, a lock from another host must be deleted by hand once that run is known to be dead.

Compression: none by default (zstd-1 saves ~7% on real SmolLM2 latents and slows writes on 2 cores);
``compression="zstd"`` compresses latents. 1-D arrays stay uncompressed (4-8 B per token beside 2H B of
latents, and each append rewrites their partial chunk). Arrays grow by doubling; ``close`` trims them to the
manifest.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from igcritic import IgcriticError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PROMPTS = "prompts"
SHARDS = "shards"
SHARD = "rank-{:05d}"
"""Name of rank r's shard group under ``shards/``."""
TOKEN_ARRAYS = {
    "latents": "float16",
    "token_ids": "int32",
    "cost_prefix": "float32",
}
TRAJ_ARRAYS = {
    "traj_prompt": "int64",
    "traj_reward": "float32",
    "traj_cost": "float32",
    "traj_len": "int32",
    "traj_finished": "bool",
    "traj_batch": "int64",
}
STORE_MARKER = "zarr.json"
LOCK_FILE = "writer-rank-{:05d}.lock"
"""Rank r's writer lock at the store root (see the module docstring)."""
STORE_ENTRIES = {STORE_MARKER, PROMPTS, SHARDS}
"""What a store's root folder holds; ``--overwrite`` replaces nothing else (:func:`check_replaceable`)."""
FP16_MAX = 65504.0
EVERY_CHUNK = "every_chunk"
"""Manifest flag of shards whose writer writes every chunk: then every array's chunks below the manifest must
exist (older shards: latents and token_ids, which are never all fill values)."""
RANK_WAIT_S = 600.0
"""How long ranks > 0 wait for rank 0 to create the root group."""


class StoreError(IgcriticError):
    """A store cannot be created, resumed, appended to or read as asked."""


def config_hash(config: dict) -> str:
    """Stable name of a run configuration: first 16 hex digits of sha256 of its sorted JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------ locations (local path, file:// or fsspec URL)


def _local(path: str | os.PathLike) -> Path | None:
    s = os.fspath(path)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    return None if ("://" in s or "::" in s) else Path(s)


def _zstore(path: str | os.PathLike, read_only: bool):
    local = _local(path)
    if local is None:
        return FsspecStore.from_url(os.fspath(path), read_only=read_only)
    if read_only and not local.exists():
        raise StoreError(f"no store at {path}; run `igcritic collect` first or fix the path")
    return LocalStore(local, read_only=read_only)


def _fs(path: str | os.PathLike):
    import fsspec

    return fsspec.core.url_to_fs(os.fspath(path))  # (filesystem, root) of a remote URL


def _is_lock(name: str) -> bool:
    return name.startswith("writer-rank-") and name.endswith(".lock")


def _nonempty(path: str | os.PathLike) -> bool:
    """Something but writer locks is at ``path``."""
    entries = _entries(path)
    return entries is None or any(not _is_lock(e) for e in entries)


def _entries(path: str | os.PathLike) -> list[str] | None:
    """Names directly inside the folder ``path`` ([] when it does not exist, None when it is a file)."""
    if (local := _local(path)) is not None:
        return None if local.is_file() else sorted(p.name for p in local.iterdir()) if local.exists() else []
    fs, root = _fs(path)
    if not fs.exists(root):
        return []
    return (
        None
        if fs.isfile(root)
        else sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    )


def _read_json(path: str | os.PathLike, name: str) -> Any:
    """The JSON file ``name`` inside ``path``; None when it is missing or not JSON."""
    try:
        if (local := _local(path)) is not None:
            return json.loads((local / name).read_text())
        fs, root = _fs(path)
        return json.loads(fs.cat_file(f"{root.rstrip('/')}/{name}"))
    except (OSError, ValueError):
        return None


def _is_ours(path: str | os.PathLike, marker: str) -> bool:
    entries = _entries(path)
    if not entries:
        return entries == []  # missing or empty: nothing to lose; a file: not ours
    if marker != STORE_MARKER:
        return marker in entries
    meta = _read_json(path, STORE_MARKER)
    if (
        isinstance(meta, dict)
        and meta.get("node_type") == "group"
        and "schema_version" in meta.get("attributes", {})
    ):
        return True
    return all(
        e in STORE_ENTRIES or _is_lock(e) for e in entries
    )  # a creation cut short (root attrs come last)


def check_replaceable(
    path: str | os.PathLike,
    marker: str = STORE_MARKER,
    what: str = "an igcritic store",
    error: type[ValueError] | None = None,
    flag: str = "--out",
) -> None:
    """Refuse, in one line, to let ``--overwrite`` replace ``path`` unless igcritic wrote what is there.

    Replaceable: nothing, an empty folder, or a folder holding ``marker``: for a store (the default) a root
    ``zarr.json`` whose attrs have ``schema_version``, or only a store's own entries (a creation cut short);
    for an artifact folder (``marker="critic_config.json"``) that file. Anything else (``--out .``, a file, a
    folder of the user's) raises ``error`` (default :class:`StoreError`)."""
    if _is_ours(path, marker):
        return
    has = f"{marker} with schema_version" if marker == STORE_MARKER else marker
    raise (error or StoreError)(
        f"{flag} {path} is not {what} (no {has} in it), so --overwrite will not delete "
        f"it; pick another {flag} or move it away yourself"
    )


def _clear(path: str | os.PathLike, keep: str) -> None:
    """Delete everything inside the folder ``path`` but the entry ``keep`` (this writer's lock)."""
    if (local := _local(path)) is None:
        fs, root = _fs(path)
        for p in fs.ls(root, detail=False):
            if p.rstrip("/").rsplit("/", 1)[-1] != keep:
                fs.rm(p, recursive=True)
        return
    for p in local.iterdir():
        if p.name != keep:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# ---------------------------------------------------------------- writer lock (one writer per shard)

_HELD: set[str] = set()
"""Lock files this process holds through fsspec (no flock there: a pid's own locks are known here)."""


def _alive(holder: dict | None) -> bool:
    """Whether a recorded lock holder may still run: False only for a pid gone from this host (or no
    record)."""
    if not isinstance(holder, dict) or "pid" not in holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell from here
    pid = int(holder["pid"])
    if pid == os.getpid():
        return holder.get("file") in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _held_error(path, rank: int, holder: dict | None) -> StoreError:
    where, name = f"store {path} {SHARD.format(rank)}", LOCK_FILE.format(rank)
    if not isinstance(holder, dict) or "pid" not in holder:
        return StoreError(
            f"{where} is being written by another process ({name}); wait for it to end, then rerun"
        )
    pid, host, since = holder["pid"], holder.get("host"), holder.get("since")
    if host == socket.gethostname() and int(pid) == os.getpid():
        return StoreError(
            f"{where} is already open for writing in this process (pid {pid}); close that StoreWriter first"
        )
    if host == socket.gethostname():
        return StoreError(
            f"{where} is being written by pid {pid} since {since} ({name}); wait for that run to "
            "end or stop it, then rerun"
        )
    return StoreError(
        f"{where} is being written by pid {pid} on host {host} since {since} ({name}); if that run "
        f"is dead, delete {os.fspath(path)}/{name}, then rerun"
    )


class _WriterLock:
    """This process's hold on one shard's writer lock; ``release`` (or garbage collection) gives it back."""

    def __init__(self, path: str | os.PathLike, rank: int):
        self.path, self.rank, self.name = path, rank, LOCK_FILE.format(rank)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "rank": rank,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        local = _local(path)
        if local is None:
            self._finalizer = weakref.finalize(self, _unlock_remote, *self._acquire_remote(info))
        else:
            local.mkdir(parents=True, exist_ok=True)
            self._finalizer = weakref.finalize(
                self, _unlock_local, self._acquire_local(local / self.name, info), local / self.name
            )

    def _acquire_local(self, file: Path, info: dict) -> int:
        while True:
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_lock(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or _alive(holder):
                    os.close(fd)
                    raise _held_error(self.path, self.rank, holder) from None
                log.warning("no flock on %s (%s): the writer lock is judged by pid and host only", file, e)
            try:  # the holder may have released (and unlinked) it between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if (old := _read_lock(fd)) is not None:
            log.warning(
                "took over the stale writer lock %s of pid %s on %s (that run is gone)",
                file,
                old.get("pid"),
                old.get("host"),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd

    def _acquire_remote(self, info: dict) -> tuple:
        fs, root = _fs(self.path)
        file = f"{root.rstrip('/')}/{self.name}"
        if fs.exists(file):
            try:
                holder = json.loads(fs.cat_file(file))
            except ValueError:
                holder = None
            if _alive(holder):
                raise _held_error(self.path, self.rank, holder)
            log.warning("took over the stale writer lock %s of %s", file, holder)
        fs.pipe_file(file, json.dumps({**info, "file": file}).encode())
        _HELD.add(file)
        return fs, file

    def release(self) -> None:
        self._finalizer()


def _read_lock(fd: int) -> dict | None:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _unlock_local(fd: int, file: Path) -> None:
    try:
        if os.fstat(fd).st_ino == os.stat(file).st_ino:
            os.unlink(
                file
            )  # while still holding the flock: a waiting opener sees the inode change and retries
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlock_remote(fs, file: str) -> None:
    _HELD.discard(file)
    try:
        fs.rm(file)
    except OSError:
        pass


def _live_writers(path: str | os.PathLike, but: str) -> list[tuple[int, dict | None]]:
    """(rank, holder) of every writer lock at ``path`` other than ``but`` whose holder still runs."""
    live = []
    for name in _entries(path) or []:
        if not _is_lock(name) or name == but:
            continue
        rank = int(name.removeprefix("writer-rank-").removesuffix(".lock"))
        if (local := _local(path)) is None:
            if _alive(holder := _read_json(path, name)):
                live.append((rank, holder))
            continue
        try:
            fd = os.open(local / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_lock(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or _alive(holder):
                live.append((rank, holder))
        finally:
            os.close(fd)  # also drops the probe's own shared flock
    return live


def _disk_bytes(path: str | os.PathLike) -> int:
    if (local := _local(path)) is None:
        fs, root = _fs(path)
        return int(fs.du(root))
    return sum(f.stat().st_size for f in local.rglob("*") if f.is_file())


def _open_root(path: str | os.PathLike, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(_zstore(path, read_only=mode == "r"), mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeNotFoundError) as e:
        raise StoreError(f"no zarr group at {path}; run `igcritic collect` first or fix the path") from e


# ---------------------------------------------------------------- one work batch


@dataclass
class TrajectoryBatch:
    """One work batch of finished rollouts, already labelled (rows of all trajectories concatenated)."""

    latents: np.ndarray
    """(N_tok, H) float32/float16; trajectory i contributes T_i + 1 rows."""
    token_ids: np.ndarray
    """(N_tok,) int32, -1 at each trajectory's t = 0."""
    cost_prefix: np.ndarray
    """(N_tok,) float32 prefix costs S_t."""
    traj_len: np.ndarray
    """(n,) int32 number of generated tokens T_i."""
    traj_prompt: np.ndarray
    """(n,) int64 index into the store's prompts."""
    traj_reward: np.ndarray
    """(n,) float32 reward of the full response."""
    traj_finished: np.ndarray
    """(n,) bool: ended with EOS (not cut at max_new_tokens)."""

    n_traj = property(lambda self: len(self.traj_len))
    n_tok = property(lambda self: len(self.latents))
    offsets = property(
        lambda self: np.concatenate([[0], np.cumsum(np.asarray(self.traj_len, np.int64) + 1)]),
        doc="(n + 1,) int64 row offsets of the trajectories in this batch.",
    )

    @property
    def traj_cost(self) -> np.ndarray:
        """(n,) float32 S_T: the prefix cost at each trajectory's last row."""
        return np.asarray(self.cost_prefix, dtype=np.float32)[self.offsets[1:] - 1]

    def validate(self) -> list[str]:
        """Every problem (shapes, lengths, token_ids at starts, NaN/inf, float16 overflow); empty when
        fine."""
        p: list[str] = []
        lat = np.asarray(self.latents)
        if lat.ndim != 2:
            return [f"latents must be (N_tok, H), got shape {lat.shape}"]
        n, tok = self.n_traj, self.n_tok
        for name in ("token_ids", "cost_prefix"):
            if np.shape(a := getattr(self, name)) != (tok,):
                p.append(f"{name} has shape {np.shape(a)}, expected ({tok},) like latents' rows")
        for name in ("traj_len", "traj_prompt", "traj_reward", "traj_finished"):
            if np.shape(getattr(self, name)) != (n,):
                p.append(f"{name} has shape {np.shape(getattr(self, name))}, expected ({n},)")
        if p:
            return p
        if (np.asarray(self.traj_len) < 0).any() or int(self.offsets[-1]) != tok:
            return [
                f"traj_len must be >= 0 with sum(traj_len + 1) = {int(self.offsets[-1])} equal to the "
                f"{tok} rows"
            ]
        starts = np.zeros(tok, dtype=bool)
        starts[self.offsets[:-1]] = True
        ids = np.asarray(self.token_ids)
        if (ids[starts] != -1).any() or (ids[~starts] < 0).any():
            p.append("token_ids must be -1 exactly at each trajectory's first row (t = 0) and >= 0 elsewhere")
        if (np.asarray(self.traj_prompt) < 0).any():
            p.append("traj_prompt holds negative prompt indices")
        if lat.dtype == np.float16 and not np.isfinite(lat).all():
            p.append(f"latents hold {int((~np.isfinite(lat)).sum())} NaN/inf values")
        elif lat.dtype != np.float16 and lat.size:  # float16 cannot overflow itself
            m = float(np.max(np.abs(lat)))
            if not math.isfinite(m):
                p.append(f"latents hold {int((~np.isfinite(lat)).sum())} NaN/inf values")
            elif m > FP16_MAX:
                p.append(
                    f"latents overflow float16 (max |x| = {m:.4g} > {FP16_MAX:g}); scale them or pick "
                    "another layer"
                )
        for name in ("cost_prefix", "traj_reward"):
            if not np.isfinite(np.asarray(getattr(self, name), dtype=np.float64)).all():
                p.append(f"{name} holds NaN/inf")
        return p


# ---------------------------------------------------------------- writer


class StoreWriter:
    """Appends work batches to ONE shard (one per rank); see the module docstring for the protocol."""

    def __init__(
        self,
        path: str | os.PathLike,
        root: zarr.Group,
        shard: zarr.Group,
        rank: int,
        lock: _WriterLock | None = None,
    ):
        self.path, self.rank, self._shard, self._lock = path, rank, shard, lock
        self.hidden_size = int(root.attrs["hidden_size"])
        self._n_prompts = int(root.attrs["prompts_count"])
        self._arrays = {
            k: _every_chunk(shard[k]) for k in [*TOKEN_ARRAYS, *TRAJ_ARRAYS, "traj_offsets"] if k in shard
        }
        self._chunk = int(self._arrays["latents"].chunks[0])
        m = shard.attrs
        self._n_traj, self._n_tok, self._done = int(m["n_traj"]), int(m["n_tok"]), set(m["batches_done"])
        # In-memory copy of the committed rows of the last, partly filled chunk [_disk, _n_tok).
        self._disk = (self._n_tok // self._chunk) * self._chunk
        self._tail = {k: a[self._disk : self._n_tok] for k, a in self._arrays.items() if k in TOKEN_ARRAYS}
        self._closed = False

    @classmethod
    def create(
        cls,
        path,
        *,
        attrs: dict,
        prompts: list[str],
        hidden_size: int,
        rank: int = 0,
        overwrite: bool = False,
        chunk_tokens: int = 4096,
        compression: str | None = None,
    ) -> StoreWriter:
        """Create the store (rank 0: root group, attrs, prompts) and this rank's empty shard.

        ``overwrite`` replaces an existing store only; anything else at ``path`` is refused
        (:func:`check_replaceable`)."""
        if hidden_size <= 0 or chunk_tokens <= 0 or rank < 0:
            raise StoreError(
                f"hidden_size={hidden_size}, chunk_tokens={chunk_tokens}, rank={rank}: "
                "sizes must be positive and rank >= 0"
            )
        if compression not in (None, "zstd"):
            raise StoreError(f"compression={compression!r} is not supported; use None or 'zstd'")
        if rank == 0:
            if _nonempty(path):
                if not overwrite:
                    raise _exists_error(path)
                check_replaceable(path)
            try:
                json.dumps(attrs)
            except TypeError as e:
                raise StoreError(
                    f"store attrs must be JSON-serializable ({e}); convert the value first"
                ) from e
        else:
            root = _wait_for_root(path, attrs.get("config_hash"))
            _check_hidden(path, root, hidden_size)
        lock = _WriterLock(path, rank)  # refuses a second writer of this shard
        try:
            if rank == 0:
                if _nonempty(path):  # checked again under the lock
                    if not overwrite:
                        raise _exists_error(path)
                    if live := _live_writers(path, but=lock.name):
                        raise _held_error(path, *live[0])
                    _clear(path, keep=lock.name)
                root = zarr.create_group(_zstore(path, read_only=False), zarr_format=3)
                root.create_group(SHARDS)
                arr = root.create_array(PROMPTS, shape=(len(prompts),), dtype=str)
                if prompts:
                    arr[:] = np.asarray(prompts, dtype=object)
                root.attrs.update(
                    {
                        **attrs,
                        "schema_version": SCHEMA_VERSION,
                        "hidden_size": hidden_size,
                        "chunk_tokens": chunk_tokens,
                        "prompts_count": len(prompts),
                        "compression": compression,
                    }
                )  # written last: marks the root complete
            return cls(path, root, _make_shard(root, rank, path, refuse_data=not overwrite), rank, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def resume(
        cls,
        path,
        *,
        config_hash: str,
        rank: int = 0,
        hidden_size: int | None = None,
        prompts: list[str] | None = None,
        config: dict | None = None,
    ) -> StoreWriter:
        """Reopen this rank's shard (creating it if the rank never started) after checking the config hash.

        ``prompts``: refuse, naming the first difference, unless they equal the stored ones. ``config``: the
        content the hash was computed from; a mismatch then names the settings that differ from the store's
        ``config`` attr."""
        if not _nonempty(path):
            raise StoreError(f"nothing to resume at {path}; drop --resume to start a new store")
        root = _open_root(path, "r+")
        version = root.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"store {path} has schema_version {version!r}, this code writes {SCHEMA_VERSION} "
                "(or the store was never fully created); start a new one with --overwrite"
            )
        if prompts is not None and (diff := _prompts_diff(root, prompts)):
            raise StoreError(
                f"store {path} was collected on other prompts ({diff}); resume with the store's "
                "prompts or start a new store with --overwrite"
            )
        stored = root.attrs.get("config_hash")
        if stored != config_hash:
            keys = _differing_keys(root.attrs.get("config"), config) if config is not None else []
            what = f" ({', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''} differ)" if keys else ""
            raise StoreError(
                f"store {path} was written with config hash {stored}, this run has {config_hash}"
                f"{what}; use --overwrite to replace it or rerun with the original config"
            )
        if hidden_size is not None:
            _check_hidden(path, root, hidden_size)
        lock = _WriterLock(path, rank)  # refuses a second writer of this shard
        try:
            shards, name = root.require_group(SHARDS), SHARD.format(rank)
            if name in shards and "n_tok" in shards[name].attrs:
                shard = shards[name]
            else:  # this rank never started, or was killed while creating its shard
                shard = _make_shard(root, rank, path, refuse_data=False)
            w = cls(path, root, shard, rank, lock)
        except BaseException:
            lock.release()
            raise
        log.info(
            "resuming %s %s: %d trajectories, %d tokens, %d batches done",
            path,
            name,
            w._n_traj,
            w._n_tok,
            len(w._done),
        )
        return w

    @property
    def batches_done(self) -> set[int]:
        """Work-batch indices committed in this shard."""
        return set(self._done)

    n_traj = property(lambda self: self._n_traj, doc="Committed trajectories of this shard.")
    n_tok = property(lambda self: self._n_tok, doc="Committed token rows of this shard.")

    def append(self, batch: TrajectoryBatch, batch_index: int) -> None:
        """Validate, write and commit one work batch; a bad batch raises StoreError and writes nothing."""
        if self._closed:
            raise StoreError(f"writer for {self.path} is closed; reopen it with StoreWriter.resume")
        if batch_index in self._done:
            raise StoreError(
                f"batch {batch_index} is already in {self.path} {SHARD.format(self.rank)}; skip "
                "the batches in writer.batches_done"
            )
        p = batch.validate()
        if not p and batch.latents.shape[1] != self.hidden_size:
            p.append(f"latents have hidden size {batch.latents.shape[1]}, the store {self.hidden_size}")
        if not p and batch.n_traj and int(np.max(batch.traj_prompt)) >= self._n_prompts:
            p.append(f"traj_prompt {int(np.max(batch.traj_prompt))} >= {self._n_prompts} stored prompts")
        if p:
            raise StoreError(f"batch {batch_index} refused, nothing written: " + "; ".join(p))
        new = {"latents": batch.latents, "token_ids": batch.token_ids, "cost_prefix": batch.cost_prefix}
        # 1. token rows: one block from the tail chunk's boundary (chunk-aligned, committed tail rows come
        # from memory)
        start, stop = self._disk, self._n_tok + batch.n_tok
        blocks = {
            k: np.concatenate([t, np.asarray(new[k], dtype=TOKEN_ARRAYS[k])]) for k, t in self._tail.items()
        }
        _write_rows([(self._arrays[k], start, b) for k, b in blocks.items()])
        # 2. per-trajectory arrays and offsets
        traj = {
            "traj_prompt": batch.traj_prompt,
            "traj_reward": batch.traj_reward,
            "traj_cost": batch.traj_cost,
            "traj_len": batch.traj_len,
            "traj_finished": batch.traj_finished,
            "traj_batch": np.full(batch.n_traj, batch_index),
        }
        _write_rows(
            [(self._arrays[k], self._n_traj, np.asarray(v, dtype=TRAJ_ARRAYS[k])) for k, v in traj.items()]
            + [(self._arrays["traj_offsets"], self._n_traj + 1, self._n_tok + batch.offsets[1:])]
        )
        # 3. the manifest, last: one atomic zarr.json write commits the batch
        self._write_manifest(self._n_traj + batch.n_traj, stop, self._done | {batch_index})
        self._disk = (stop // self._chunk) * self._chunk
        self._tail = {k: b[self._disk - start :] for k, b in blocks.items()}

    def close(self) -> None:
        """Trim arrays to the manifest (drops garbage a killed run left beyond it), release the writer lock;
        idempotent."""
        if self._closed:
            return
        try:
            for k, a in self._arrays.items():
                n = self._n_tok if k in TOKEN_ARRAYS else self._n_traj + (k == "traj_offsets")
                if a.shape[0] > n:
                    a.resize((n, *a.shape[1:]))
        finally:
            self._closed = True
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_manifest(self, n_traj: int, n_tok: int, done: set[int]) -> None:
        self._shard.attrs.update({"n_traj": n_traj, "n_tok": n_tok, "batches_done": sorted(done)})
        self._n_traj, self._n_tok, self._done = n_traj, n_tok, done


def _write_rows(items: list[tuple[zarr.Array, int, np.ndarray]]) -> None:
    """Write ``rows`` at ``start`` of each array, all at once on zarr's event loop; grow arrays by doubling.

    Arrays only grow here (rows beyond the manifest are garbage); ``close`` trims them to the manifest.
    """

    async def put(arr: zarr.Array, start: int, rows: np.ndarray) -> None:
        a, stop = arr.async_array, start + len(rows)
        if a.shape[0] < stop:
            await a.resize((max(stop, 2 * a.shape[0]), *a.shape[1:]))
        await a.setitem(slice(start, stop), rows)

    async def put_all() -> None:
        await asyncio.gather(*(put(*item) for item in items if len(item[2])))

    sync(put_all())


def _prompts_diff(root: zarr.Group, prompts: list[str]) -> str | None:
    """How ``prompts`` differ from the store's (None: equal)."""
    stored = [str(p) for p in root[PROMPTS][:]] if PROMPTS in root else []
    if len(stored) != len(prompts):
        return f"{len(stored)} prompts in the store, {len(prompts)} in this run"
    i = next((i for i, (a, b) in enumerate(zip(stored, prompts)) if a != b), None)
    return (
        None
        if i is None
        else f"prompt {i} is {_clip(stored[i])} in the store, {_clip(prompts[i])} in this run"
    )


def _clip(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def _differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two (nested) config dicts, compared as JSON."""
    if prefix == "":
        new = json.loads(json.dumps(new, default=str))
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new), key=str)
            for d in _differing_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    return [] if old == new else [prefix.rstrip(".") or "config"]


def _exists_error(path) -> StoreError:
    return StoreError(
        f"store {path} exists and is not empty; pass --overwrite to replace it or --resume to continue it"
    )


def _check_hidden(path, root: zarr.Group, hidden_size: int) -> None:
    if int(root.attrs["hidden_size"]) != hidden_size:
        raise StoreError(
            f"store {path} holds hidden size {root.attrs['hidden_size']}, this policy has "
            f"{hidden_size}; use the policy/layer the store was made with or a new store"
        )


def _wait_for_root(path, expected_hash: str | None) -> zarr.Group:
    deadline = time.monotonic() + RANK_WAIT_S
    while True:
        try:
            root = _open_root(path, "r+")
            if root.attrs.get("schema_version") is not None and (
                expected_hash is None or root.attrs.get("config_hash") == expected_hash
            ):
                return root
        except StoreError:
            pass
        if time.monotonic() > deadline:
            raise StoreError(
                f"rank 0 did not create store {path} within {RANK_WAIT_S:.0f} s; start rank 0 or "
                "check that all ranks use the same path and config"
            )
        time.sleep(0.2)


def _token_array(shard: zarr.Group, name: str, chunk: int, hidden: int, compression: str | None):
    shape, chunks = ((0, hidden), (chunk, hidden)) if name == "latents" else ((0,), (chunk,))
    codec = None if compression is None or name != "latents" else zarr.codecs.ZstdCodec(level=1)
    return shard.create_array(
        name, shape=shape, chunks=chunks, dtype=TOKEN_ARRAYS[name], overwrite=True, compressors=codec
    )


def _make_shard(root: zarr.Group, rank: int, path, *, refuse_data: bool) -> zarr.Group:
    shards, name = root.require_group(SHARDS), SHARD.format(rank)
    if name in shards:
        m = shards[name].attrs
        if refuse_data and (m.get("n_tok") or m.get("batches_done")):
            raise StoreError(f"shard {name} of {path} already holds data; pass --overwrite or --resume")
        del shards[name]
    shard, chunk, hidden = (
        shards.create_group(name),
        int(root.attrs["chunk_tokens"]),
        int(root.attrs["hidden_size"]),
    )
    for k in TOKEN_ARRAYS:
        _token_array(shard, k, chunk, hidden, root.attrs.get("compression"))
    for k, dtype in TRAJ_ARRAYS.items():
        shard.create_array(k, shape=(0,), chunks=(chunk,), dtype=dtype, compressors=None)
    _every_chunk(
        shard.create_array("traj_offsets", shape=(1,), chunks=(chunk,), dtype="int64", compressors=None)
    )[:] = np.zeros(1, np.int64)
    shard.attrs.update(
        {"n_traj": 0, "n_tok": 0, "batches_done": [], EVERY_CHUNK: True}
    )  # the manifest comes last
    return shard


def _every_chunk(a: zarr.Array) -> zarr.Array:
    """``a`` writing every chunk, fill values included (zarr skips all-fill chunks by default, and a missing
    chunk would then be indistinguishable from a lost one)."""
    return a.with_config({"write_empty_chunks": True})


# ---------------------------------------------------------------- reader (the merged store)


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
            root = _open_root(self.path, "r")
            self._attrs = dict(root.attrs)
            if (version := self._attrs.get("schema_version")) != SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema_version {version!r}, this code reads "
                    f"{SCHEMA_VERSION}; recollect it or use a matching igcritic version"
                )
            groups = [root[SHARDS][n] for n in sorted(root[SHARDS].group_keys())] if SHARDS in root else []
            # (name, group, n_traj, n_tok, batches_done); a shard without a manifest never started: skipped
            self._shards = [
                (g.basename, g, int(g.attrs["n_traj"]), int(g.attrs["n_tok"]), g.attrs["batches_done"])
                for g in groups
                if "n_tok" in g.attrs
            ]
            self._tok0 = np.cumsum([0] + [s[3] for s in self._shards], dtype=np.int64)
            self._root = root
        return self._root

    @property
    def _s(self) -> list[tuple]:
        self._open()
        return self._shards

    @property
    def attrs(self) -> dict:
        self._open()
        return dict(self._attrs)

    shards = property(lambda self: [s[0] for s in self._s], doc="Shard names, rank order.")
    hidden_size = property(lambda self: int(self.attrs["hidden_size"]))
    chunk_tokens = property(
        lambda self: int(self.attrs["chunk_tokens"]), doc="Row chunk of latents: read aligned."
    )
    n_traj = property(lambda self: sum(s[2] for s in self._s))
    n_prompts = property(lambda self: int(self._open()[PROMPTS].shape[0]))
    batches_done = property(
        lambda self: {int(i) for s in self._s for i in s[4]},
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
    def prompts(self) -> list[str]:
        if "prompts" not in self._cache:
            self._cache["prompts"] = [str(p) for p in self._open()[PROMPTS][:]]
        return self._cache["prompts"]

    def _concat(self, name: str, per: str) -> np.ndarray | None:
        if name not in self._cache:
            self._open()
            parts = []
            for _, g, n_traj, n_tok, _ in self._shards:
                n = n_tok if per == "tok" else n_traj
                if n and name not in g:
                    self._cache[name] = None
                    return None
                parts.append(g[name][:n] if n else np.zeros(0, TRAJ_ARRAYS.get(name) or TOKEN_ARRAYS[name]))
            dtype = TRAJ_ARRAYS.get(name) or TOKEN_ARRAYS[name]
            self._cache[name] = (
                np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
            )
        return self._cache[name]

    @property
    def traj_offsets(self) -> np.ndarray:
        """(n_traj + 1,) int64 global token offsets."""
        if "traj_offsets" not in self._cache:
            self._open()
            parts = [
                g["traj_offsets"][1 : s + 1] + t0 for (_, g, s, _, _), t0 in zip(self._shards, self._tok0)
            ]
            self._cache["traj_offsets"] = np.concatenate([np.zeros(1, np.int64), *parts]).astype(np.int64)
        return self._cache["traj_offsets"]

    traj_prompt = property(lambda self: self._concat("traj_prompt", "traj"))
    traj_len = property(lambda self: self._concat("traj_len", "traj"))
    traj_reward = property(lambda self: self._concat("traj_reward", "traj"))
    traj_cost = property(lambda self: self._concat("traj_cost", "traj"))
    traj_finished = property(lambda self: self._concat("traj_finished", "traj"))
    traj_batch = property(lambda self: self._concat("traj_batch", "traj"))
    cost_prefix = property(lambda self: self._concat("cost_prefix", "tok"))
    token_ids = property(lambda self: self._concat("token_ids", "tok"))

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
        for (name, g, *_), t0, t1 in zip(self._shards, self._tok0[:-1], self._tok0[1:]):
            lo, hi = max(start, t0) - t0, min(stop, t1) - t0  # rows of this shard
            if lo >= hi:
                continue
            if (key := f"latents/{name}") not in self._cache:  # opening an array reads its zarr.json
                arr = g["latents"]
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

    def trajectory(self, i: int) -> dict[str, Any]:
        """One trajectory: latents (T+1, H), token_ids, cost_prefix, reward, cost, prompt, finished."""
        if not 0 <= i < self.n_traj:
            raise StoreError(f"trajectory {i} is outside the store's [0, {self.n_traj})")
        a, b = (int(x) for x in self.traj_offsets[i : i + 2])
        out = {
            "latents": self.read_latents(a, b),
            "token_ids": self.token_ids[a:b],
            "cost_prefix": self.cost_prefix[a:b],
            "reward": float(self.traj_reward[i]),
            "cost": float(self.traj_cost[i]),
            "prompt": int(self.traj_prompt[i]),
            "finished": bool(self.traj_finished[i]),
        }
        return out

    def trajectories_of_prompt(self, p: int) -> list[int]:
        return np.flatnonzero(self.traj_prompt == p).tolist()


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
IOV_MAX = 1024
"""Buffers per ``preadv`` call (POSIX guarantees at least this many on Linux and macOS)."""


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
    for a, b in zip(bounds[:-1], bounds[1:]):
        for c in range(a, b, IOV_MAX):
            e = min(c + IOV_MAX, b)
            if _PREADV(fd, iov.ctypes.data + 16 * c, e - c, int(first[c])) != int(n_rows[c:e].sum()) * rb:
                return False
    return True


# ---------------------------------------------------------------- integrity and summary


def validate_store(path: str | os.PathLike) -> list[str]:
    """Every integrity problem of a store (empty list: valid). Scans all latents chunk by chunk for
    NaN/inf."""
    try:
        root = _open_root(path, "r")
    except StoreError as e:
        return [str(e)]
    attrs = dict(root.attrs)
    if attrs.get("schema_version") != SCHEMA_VERSION:
        return [
            f"schema_version {attrs.get('schema_version')!r} is not {SCHEMA_VERSION} (unknown or "
            "unfinished store)"
        ]
    if missing := [k for k in ("hidden_size", "chunk_tokens", "prompts_count") if k not in attrs]:
        return [f"root attrs lack {missing}"]
    n_prompts = root[PROMPTS].shape[0] if PROMPTS in root else -1
    p = (
        []
        if n_prompts == attrs["prompts_count"]
        else [f"prompts array has {n_prompts} entries, attrs say {attrs['prompts_count']}"]
    )
    for name in sorted(root[SHARDS].group_keys()) if SHARDS in root else []:
        g = root[SHARDS][name]
        if "n_tok" in g.attrs:  # a shard without a manifest never started: nothing to check
            p += [
                f"{name}: {msg}"
                for msg in _validate_shard(
                    g, int(attrs["hidden_size"]), n_prompts, int(attrs["chunk_tokens"]), attrs
                )
            ]
    return p


def _missing_chunks(a: zarr.Array, rows: int) -> list[int]:
    """Row-chunk indices below ``rows`` whose chunk object is absent (it would read back as fill values)."""
    aa, step = a.async_array, int(a.chunks[0])
    rest = (0,) * (a.ndim - 1)
    keys = [
        f"{aa.store_path.path}/{aa.metadata.encode_chunk_key((i, *rest))}".lstrip("/")
        for i in range(math.ceil(rows / step))
    ]

    async def probe() -> list[bool]:
        return list(await asyncio.gather(*(aa.store_path.store.exists(k) for k in keys)))

    return [i for i, ok in enumerate(sync(probe()) if keys else []) if not ok]


def _validate_shard(g: zarr.Group, H: int, n_prompts: int, step: int, attrs: dict) -> list[str]:
    m = dict(g.attrs)
    n_traj, n_tok = int(m["n_traj"]), int(m["n_tok"])
    want = {k: (n_tok, d) for k, d in TOKEN_ARRAYS.items()} | {k: (n_traj, d) for k, d in TRAJ_ARRAYS.items()}
    want["traj_offsets"] = (n_traj + 1, "int64")
    p = [f"array {k} is missing" for k in want if k not in g]
    p += [
        f"{k} has shape {g[k].shape} dtype {g[k].dtype}; the manifest needs >= {n} rows of {d}"
        for k, (n, d) in want.items()
        if k in g and (g[k].shape[0] < n or str(g[k].dtype) != d)
    ]
    if "latents" in g and g["latents"].shape[1:] != (H,):
        p.append(f"latents width {g['latents'].shape[1:]} is not hidden_size {H}")
    if p:
        return p
    # A lost chunk reads back as zeros: every chunk holding committed rows must exist.
    for k in want if m.get(EVERY_CHUNK) else ("latents", "token_ids"):
        if k in g and (lost := _missing_chunks(g[k], want[k][0])):
            c = int(g[k].chunks[0])
            first = ", ".join(f"{i} (rows {i * c}-{min((i + 1) * c, want[k][0]) - 1})" for i in lost[:3])
            many = len(lost) > 1
            p.append(
                f"{k} chunk{'s' if many else ''} {first}{' ...' if len(lost) > 3 else ''} "
                f"{'are' if many else 'is'} missing ({len(lost)} of {math.ceil(want[k][0] / c)} chunks): "
                "those "
                "rows would read back as zeros; restore the files or recollect the store with --overwrite"
            )
    if p:
        return p
    off = g["traj_offsets"][: n_traj + 1]
    d = np.diff(off)
    if off[0] != 0 or (d < 1).any() or off[-1] != n_tok:
        return [
            f"traj_offsets must start at 0, grow by >= 1 and end at n_tok={n_tok} (got {off[0]} ... "
            f"{off[-1]})"
        ]
    if bad := int((g["traj_len"][:n_traj] != d - 1).sum()):
        p.append(f"traj_len differs from diff(traj_offsets) - 1 for {bad} trajectories")
    starts = np.zeros(n_tok, bool)
    starts[off[:-1]] = True
    if ((g["token_ids"][:n_tok] == -1) != starts).any():
        p.append("token_ids are not -1 exactly at trajectory starts")
    cost = g["cost_prefix"][:n_tok]
    if n_traj and not np.allclose(g["traj_cost"][:n_traj], cost[off[1:] - 1], equal_nan=True):
        p.append("traj_cost differs from cost_prefix at the trajectories' last rows")
    prompts = g["traj_prompt"][:n_traj]
    if ((prompts < 0) | (prompts >= n_prompts)).any():
        p.append(f"traj_prompt outside [0, {n_prompts})")
    batch_ids = g["traj_batch"][:n_traj]
    done, seen = set(m.get("batches_done", [])), set(batch_ids.tolist())
    if not seen <= done:
        p.append("trajectories belong to batches missing from the manifest's batches_done")
    if lost := sorted(done - seen):
        p.append(
            f"batch {lost[0]}{f' and {len(lost) - 1} more' if len(lost) > 1 else ''} is in batches_done but "
            "has no trajectories"
        )
    if n_traj and (np.diff(batch_ids) != 0).sum() + 1 != len(seen):
        p.append("a batch's trajectories are not contiguous in traj_batch")
    per_batch = (attrs.get("generation") or {}).get("batch_size")
    if per_batch and n_traj and int(np.unique(batch_ids, return_counts=True)[1].max()) > int(per_batch):
        p.append(f"a batch holds more than the {per_batch} trajectories of generation.batch_size")
    vocab = (attrs.get("policy") or {}).get("vocab_size")
    if vocab and n_tok and int(g["token_ids"][:n_tok].max()) >= int(vocab):
        p.append(f"token_ids hold ids >= the policy's vocab_size {vocab}")
    p += [
        f"{k} holds NaN/inf"
        for k in ("cost_prefix", "traj_reward", "traj_cost")
        if k in g and not np.isfinite(g[k][: want[k][0]]).all()
    ]
    bad = 0
    for i in range(0, n_tok, step):
        try:
            bad += int((~np.isfinite(g["latents"][i : min(i + step, n_tok)])).sum())
        except Exception as e:  # noqa: BLE001 - a truncated or garbled chunk: any decoding error
            return p + [
                f"latents rows {i}-{min(i + step, n_tok) - 1} cannot be read ({type(e).__name__}); restore "
                "the files or recollect the store with --overwrite"
            ]
    return p + ([f"latents hold {bad} NaN/inf values"] if bad else [])


@dataclass
class InspectConfig:
    """Summarise a store (trajectories, tokens, cost/reward, safe share, size, provenance) and validate it."""

    store: str
    """Store path or fsspec URL written by ``igcritic collect``."""
    budget: float | None = None
    """Budget d for the safe share S_T <= d (default: the store's recorded budget)."""


def main(cfg: InspectConfig) -> int:
    """``igcritic inspect STORE``: exit status 0 if the store is valid, else 1."""
    return inspect_store(cfg.store, budget=cfg.budget)


def inspect_store(path: str | os.PathLike, budget: float | None = None, console=None) -> int:
    """Print a summary of a store and its validation; return 0 if it is valid, else 1.

    Args:
        path: store directory or URL.
        budget: cost budget d for the safe share S_T <= d (default: the store's ``budget`` attr).
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    try:
        r = StoreReader(path)
        attrs = r.attrs
    except StoreError as e:
        console.print(f"[red]{e}[/red]")
        return 1
    budget = attrs.get("budget") if budget is None else budget
    t = Table(title=f"igcritic store {path}", show_header=False)
    size = _disk_bytes(path)
    rows = [
        ("trajectories", f"{r.n_traj}"),
        ("tokens", f"{r.n_tok}"),
        ("prompts", f"{r.n_prompts}"),
        ("hidden size", f"{r.hidden_size}"),
        ("shards", ", ".join(r.shards) or "none"),
        ("size on disk", f"{size:,} B" + (f" ({size / r.n_tok:,.0f} B/token)" if r.n_tok else "")),
    ]
    if r.n_traj:
        for label, x in (("cost S_T", r.traj_cost), ("reward", r.traj_reward)):
            q = np.quantile(x, [0.1, 0.5, 0.9])
            rows.append(
                (
                    label,
                    f"min {x.min():.3g}  mean {x.mean():.3g}  p10 {q[0]:.3g}  p50 {q[1]:.3g}  "
                    f"p90 {q[2]:.3g}  max {x.max():.3g}",
                )
            )
        if budget is not None:
            rows.append((f"safe share (S_T <= {budget:g})", f"{(r.traj_cost <= budget).mean():.1%}"))
        rows += [
            ("finished share", f"{r.traj_finished.mean():.1%}"),
            ("mean length", f"{r.traj_len.mean():.1f}"),
        ]
    for k, v in sorted(attrs.items()):
        s = json.dumps(v, default=str)
        rows.append((k, s if len(s) <= 100 else s[:97] + "..."))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    problems = validate_store(path)
    for msg in problems:
        console.print(f"[red]invalid:[/red] {msg}")
    if not problems:
        console.print("[green]valid[/green]")
    return 1 if problems else 0
