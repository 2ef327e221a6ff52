"""Writing a store: labelled work batches appended to this rank's shard, each committed by its manifest.

Write protocol (per ``append``, so a batch is committed when ``append`` returns):
1. token rows, as one block from the boundary of the last, partly filled chunk (the writer keeps that chunk's
   committed rows in memory and writes them again with the new ones), so writes are chunk-aligned; this costs
   at most one extra chunk per append (write amplification <= 1 + chunk_tokens / rows per batch);
2. per-trajectory arrays and offsets;
3. LAST the manifest (one ``zarr.json`` write).
Rows beyond the manifest are garbage of a killed run: readers never see them, resume overwrites them, and
batches not in ``batches_done`` are redone, so nothing is lost or duplicated. Replacing a chunk that holds
committed rows is safe because each chunk file is replaced atomically: zarr's ``LocalStore`` writes a temp
file and renames it (zarr 3.1 ``storage/_local.py``), and object stores (s3, gs) replace objects atomically.
Multi-rank with ``overwrite``: ranks > 0 must call ``create`` after rank 0 has (a barrier), otherwise they
may attach to the old store that rank 0 is about to delete.

Compression: none by default (zstd-1 saves ~7% on real SmolLM2 latents and slows writes on 2 cores);
``compression="zstd"`` compresses latents. 1-D arrays stay uncompressed (4-8 B per token beside 2H B of
latents, and each append rewrites their partial chunk). Arrays grow by doubling; ``close`` trims them to the
manifest.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from igcritic.store.layout import (
    EVERY_CHUNK,
    OWNER,
    PROMPTS,
    SCHEMA_VERSION,
    SHARD,
    SHARDS,
    TOKEN_ARRAYS,
    TRAJ_ARRAYS,
    StoreError,
    check_replaceable,
    clear,
    entries,
    local_path,
    move_aside,
    move_back,
    nonempty,
    open_root,
    remove,
    replaced_leftovers,
    started_shards,
    zarr_store,
)
from igcritic.store.lock import WriterLock, check_no_writers, live_writers

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
RANK_WAIT_S = 600.0
"""How long ranks > 0 wait for rank 0 to create the root group."""


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
        m = float(np.max(np.abs(lat))) if lat.size else 0.0  # NaN and inf carry through the max
        if not math.isfinite(m):
            p.append(f"latents hold {int((~np.isfinite(lat)).sum())} NaN/inf values")
        elif m > FP16_MAX:
            p.append(
                f"latents overflow float16 (max |x| = {m:.4g} > {FP16_MAX:g}); scale them or pick another "
                "layer"
            )
        for name in ("cost_prefix", "traj_reward"):
            if not np.isfinite(np.asarray(getattr(self, name), dtype=np.float64)).all():
                p.append(f"{name} holds NaN/inf")
        return p


class StoreWriter:
    """Appends work batches to ONE shard (one per rank); see the module docstring for the protocol."""

    def __init__(
        self, path: str | os.PathLike, root: zarr.Group, shard: zarr.Group, rank: int, lock: WriterLock
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
        self._undo: tuple[str, str | None] | None = None
        """Until this run's first commit, how to undo its create: ("restore", the old store kept aside) or
        ("remove", the folder if this run made it, else None); None once committed (or for resume)."""

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
        (:func:`~igcritic.store.layout.check_replaceable`)."""
        if hidden_size <= 0 or chunk_tokens <= 0 or rank < 0:
            raise StoreError(
                f"hidden_size={hidden_size}, chunk_tokens={chunk_tokens}, rank={rank}: "
                "sizes must be positive and rank >= 0"
            )
        if compression not in (None, "zstd"):
            raise StoreError(f"compression={compression!r} is not supported; use None or 'zstd'")
        if rank == 0:
            _replaces_a_store(path, overwrite)  # before the lock file goes into a folder of the user's
            try:
                json.dumps(attrs)
            except TypeError as e:
                raise StoreError(
                    f"store attrs must be JSON-serializable ({e}); convert the value first"
                ) from e
        else:
            root = _wait_for_root(path, attrs.get("config_hash"))
            _check_hidden(path, root, hidden_size)
        made = rank == 0 and (local := local_path(path)) is not None and not local.exists()
        lock = WriterLock(path, rank)  # refuses a second writer of this shard
        undo: tuple[str, str | None] | None = ("remove", path if made else None) if rank == 0 else None
        try:
            if rank == 0:
                if _replaces_a_store(path, overwrite):  # checked again under the lock
                    check_no_writers(path, but=lock.name)
                    for old in replaced_leftovers(path):
                        log.warning(
                            "%s holds a store that an interrupted --overwrite of %s kept; move it back or "
                            "delete it",
                            old,
                            path,
                        )
                    # the old store stays, aside, until the new one commits its first batch (a failed move
                    # puts back what it moved: nothing to undo here)
                    undo = None
                    undo = ("restore", move_aside(path, keep=lock.name, tag=uuid.uuid4().hex[:8]))
                owner = {OWNER: {"store_id": uuid.uuid4().hex, "schema_version": SCHEMA_VERSION}}
                root = zarr.create_group(zarr_store(path, read_only=False), zarr_format=3, attributes=owner)
                root.create_group(SHARDS)
                arr = root.create_array(PROMPTS, shape=(len(prompts),), dtype=str)
                if prompts:
                    arr[:] = np.asarray(prompts, dtype=object)
                root.update_attributes(  # one zarr.json write (attrs.update writes once per key)
                    {
                        **attrs,
                        "schema_version": SCHEMA_VERSION,
                        "hidden_size": hidden_size,
                        "chunk_tokens": chunk_tokens,
                        "prompts_count": len(prompts),
                        "compression": compression,
                    }
                )  # written last: marks the root complete
            w = cls(path, root, _make_shard(root, rank, path, refuse_data=not overwrite), rank, lock)
        except BaseException:
            _undo_create(path, undo, lock, failed=True)
            raise
        w._undo = undo
        return w

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
        if not nonempty(path):
            raise StoreError(f"nothing to resume at {path}; drop --resume to start a new store")
        root = open_root(path, "r+")
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
        lock = WriterLock(path, rank)  # refuses a second writer of this shard
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
        log.info("resuming %s %s: %d batches, %d tokens done", path, name, len(w._done), w.n_tok)
        return w

    @property
    def batches_done(self) -> set[int]:
        """Work-batch indices committed in this shard."""
        return set(self._done)

    n_traj = property(lambda self: self._n_traj, doc="Committed trajectories of this shard.")
    n_tok = property(lambda self: self._n_tok, doc="Committed token rows of this shard.")

    def append(self, batch: TrajectoryBatch, batch_index: int) -> None:
        """Validate, write and commit one work batch; a bad batch raises StoreError and writes nothing, a
        full disk raises StoreError and leaves the committed batches as they were."""
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
        try:
            self._commit(batch, batch_index)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise StoreError(
                f"disk full while writing batch {batch_index} to {self.path}; free space and rerun with "
                "--resume (committed batches are kept)"
            ) from None

    def _commit(self, batch: TrajectoryBatch, batch_index: int) -> None:
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
        # 3. the manifest, last: one atomic zarr.json write commits the batch (if this writer still holds its
        # lock: a lease on an object store can run out)
        self._lock.check()
        self._write_manifest(self._n_traj + batch.n_traj, stop, self._done | {batch_index})
        self._committed()
        self._disk = (stop // self._chunk) * self._chunk
        self._tail = {k: b[self._disk - start :] for k, b in blocks.items()}

    def _write_manifest(self, n_traj: int, n_tok: int, done: set[int]) -> None:
        # ONE zarr.json write: ``attrs.update`` is MutableMapping's, one write per key, and a kill between
        # them left n_traj of the new batch beside n_tok of the old state (resume then wrote off by one)
        self._shard.update_attributes({"n_traj": n_traj, "n_tok": n_tok, "batches_done": sorted(done)})
        self._n_traj, self._n_tok, self._done = n_traj, n_tok, done

    def _committed(self) -> None:
        """The first commit of a replacing run: the old store kept aside goes."""
        if self._undo is not None and self._undo[0] == "restore":
            remove(self.path, self._undo[1])
        self._undo = None

    def close(self, failed: bool = False) -> None:
        """Trim arrays to the manifest (drops garbage a killed run left beyond it), release the writer lock;
        idempotent. Until this run's first commit, close puts back the store that ``overwrite`` replaced,
        and ``failed`` (the ``with`` block raised) removes the store this run created."""
        if self._closed:
            return
        if self._undo is not None and self._others_committed():
            self._committed()  # another rank committed: the new store stands
        try:
            if self._undo is None or (self._undo[0] == "remove" and not failed):
                n_traj, n_tok = self._manifest_rows()
                for k, a in self._arrays.items():
                    n = n_tok if k in TOKEN_ARRAYS else n_traj + (k == "traj_offsets")
                    if a.shape[0] > n:
                        a.resize((n, *a.shape[1:]))
                self._undo = None
        finally:
            self._closed = True
            _undo_create(self.path, self._undo, self._lock, failed)

    def _manifest_rows(self) -> tuple[int, int]:
        """(n_traj, n_tok) to trim to: the manifest on disk where it is ahead of this writer's memory. A
        signal that lands after the manifest's write but before the counters are updated (it interrupts the
        wait on zarr's event loop while the write completes there) would otherwise have close trim the rows
        the manifest had just committed."""
        name = SHARD.format(self.rank)
        try:
            disk = [(s.n_traj, s.n_tok) for s in started_shards(open_root(self.path, "r")) if s.name == name]
        except (StoreError, OSError):
            disk = []
        n_traj, n_tok = disk[0] if disk else (0, 0)
        return max(self._n_traj, n_traj), max(self._n_tok, n_tok)

    def _others_committed(self) -> bool:
        return any(n_tok or done for g, _, n_tok, done in started_shards(open_root(self.path, "r")))

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)


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


def _undo_create(path, undo: tuple[str, str | None] | None, lock: WriterLock, failed: bool) -> None:
    """Release ``lock``, first undoing an uncommitted create: put back the store kept aside, or (``failed``)
    delete what this run created. Nothing is undone while another rank's writer runs."""
    try:
        if undo is None or not (undo[0] == "restore" or failed):
            return
        if busy := live_writers(path, but=lock.name):
            log.warning(
                "rank %d still writes %s: nothing undone%s",
                busy[0][0],
                path,
                f"; the replaced store stays at {undo[1]}" if undo[0] == "restore" else "",
            )
            return
        if undo[0] == "restore":
            move_back(path, undo[1], keep=lock.name)
            log.warning("no batch was committed: %s is the store it was before this run", path)
        else:
            clear(path, keep=lock.name)
    finally:
        lock.release()
    if undo is not None and undo[0] == "remove" and failed and undo[1] is not None and entries(path) == []:
        local_path(path).rmdir()  # the folder this run made, now empty


def _replaces_a_store(path, overwrite: bool) -> bool:
    """Whether ``path`` holds a store that ``overwrite`` replaces (False: nothing there); refuses the rest."""
    if not nonempty(path):
        return False
    if not overwrite:
        raise StoreError(
            f"store {path} exists and is not empty; pass --overwrite to replace it or --resume to continue it"
        )
    check_replaceable(path)
    return True


def _check_hidden(path, root: zarr.Group, hidden_size: int) -> None:
    if int(root.attrs["hidden_size"]) != hidden_size:
        raise StoreError(
            f"store {path} holds hidden size {root.attrs['hidden_size']}, this policy has "
            f"{hidden_size}; use the policy/layer the store was made with or a new store"
        )


def _prompts_diff(root: zarr.Group, prompts: list[str]) -> str | None:
    """How ``prompts`` differ from the store's (None: equal)."""
    stored = [str(p) for p in root[PROMPTS][:]] if PROMPTS in root else []
    if len(stored) != len(prompts):
        return f"{len(stored)} prompts in the store, {len(prompts)} in this run"
    i = next((i for i, (a, b) in enumerate(zip(stored, prompts, strict=True)) if a != b), None)
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


def _wait_for_root(path, expected_hash: str | None) -> zarr.Group:
    deadline = time.monotonic() + RANK_WAIT_S
    while True:
        try:
            root = open_root(path, "r+")
            if expected_hash is None or root.attrs.get("config_hash") == expected_hash:
                return root
        except StoreError:  # not there yet, or not complete
            pass
        if time.monotonic() > deadline:
            raise StoreError(
                f"rank 0 did not create store {path} within {RANK_WAIT_S:.0f} s; start rank 0 or "
                "check that all ranks use the same path and config"
            )
        time.sleep(0.2)


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
    zstd = root.attrs.get("compression") and zarr.codecs.ZstdCodec(level=1)
    for k, dtype in TOKEN_ARRAYS.items():
        wide = k == "latents"
        shard.create_array(
            k,
            shape=(0, hidden) if wide else (0,),
            chunks=(chunk, hidden) if wide else (chunk,),
            dtype=dtype,
            compressors=zstd if wide else None,
        )
    for k, dtype in TRAJ_ARRAYS.items():
        shard.create_array(k, shape=(0,), chunks=(chunk,), dtype=dtype, compressors=None)
    offsets = shard.create_array("traj_offsets", shape=(1,), chunks=(chunk,), dtype="int64", compressors=None)
    _every_chunk(offsets)[:] = np.zeros(1, np.int64)
    shard.update_attributes({"n_traj": 0, "n_tok": 0, "batches_done": [], EVERY_CHUNK: True})  # manifest last
    return shard


def _every_chunk(a: zarr.Array) -> zarr.Array:
    """``a`` writing every chunk, fill values included (zarr skips all-fill chunks by default, and a missing
    chunk would then be indistinguishable from a lost one)."""
    return a.with_config({"write_empty_chunks": True})
