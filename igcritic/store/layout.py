"""The store's names and its location: array and file names, the error, and what may be replaced or read.

A location is a local path, a ``file://`` URL or an fsspec URL; listing, reading and deleting go through
fsspec for all three (its local filesystem for the first two), so there is one code path for each. Zarr
itself opens local stores as ``LocalStore``, whose chunk writes are atomic (temp file, then rename: the
writer's protocol relies on it; fsspec's local filesystem writes in place).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from igcritic import IgcriticError

SCHEMA_VERSION = 1
PROMPTS = "prompts"
SHARDS = "shards"
SHARD = "rank-{:05d}"
"""Name of rank r's shard group under ``shards/``."""
TOKEN_ARRAYS = {"latents": "float16", "token_ids": "int32", "cost_prefix": "float32"}
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
"""Rank r's writer lock at the store root (:mod:`igcritic.store.lock`)."""
OWNER = "igcritic_store"
"""Root attribute proving igcritic wrote the store: ``{"store_id": random hex, "schema_version": N}``, set
when the root group is created; ``--overwrite`` replaces nothing without it (:func:`check_replaceable`)."""
EVERY_CHUNK = "every_chunk"
"""Manifest flag of shards whose writer writes every chunk: then every array's chunks below the manifest must
exist (older shards: latents and token_ids, which are never all fill values)."""


REMOTE_OPTIONS = {"use_listings_cache": False}
"""fsspec options of remote stores: other processes (writers, their locks) change listings under a reader."""


class StoreError(IgcriticError):
    """A store cannot be created, resumed, appended to or read as asked."""


def config_hash(config: dict) -> str:
    """Stable name of a run configuration: first 16 hex digits of sha256 of its sorted JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def local_path(path: str | os.PathLike) -> Path | None:
    """The local folder of a path or ``file://`` URL; None for any other URL."""
    s = os.fspath(path)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    return None if ("://" in s or "::" in s) else Path(s)


def filesystem(path: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, root path in it) of any location."""
    import fsspec

    if local_path(path) is None:
        return fsspec.core.url_to_fs(os.fspath(path), **REMOTE_OPTIONS)
    return fsspec.core.url_to_fs(os.fspath(path))


def entries(path: str | os.PathLike) -> list[str] | None:
    """Names directly inside the folder ``path`` ([] when it does not exist, None when it is a file)."""
    fs, root = filesystem(path)
    if not fs.exists(root):
        return []
    return None if fs.isfile(root) else sorted(_name(p) for p in fs.ls(root, detail=False))


def read_json(path: str | os.PathLike, name: str) -> Any:
    """The JSON file ``name`` inside ``path``; None when it is missing or not JSON."""
    fs, root = filesystem(path)
    try:
        return json.loads(fs.cat_file(f"{root.rstrip('/')}/{name}"))
    except (OSError, ValueError):
        return None


REPLACED = ".{name}.replaced-{tag}"
"""Sibling folder holding the store that ``--overwrite`` replaces until the new store's first commit."""


def aside_location(path: str | os.PathLike, tag: str) -> tuple[Any, str]:
    """(filesystem, path) of the sibling that keeps the store at ``path`` while it is being replaced."""
    fs, root = filesystem(path)
    parent, _, name = root.rstrip("/").rpartition("/")
    if not name or not parent:
        raise StoreError(
            f"cannot replace a store at {path} (no parent folder to keep it in); use a subfolder"
        )
    return fs, f"{parent}/{REPLACED.format(name=name, tag=tag)}"


def move_aside(path: str | os.PathLike, keep: str, tag: str) -> str:
    """Move everything inside the folder ``path`` but the entry ``keep`` (this writer's lock) into a sibling
    folder, which is returned (a rename locally; object stores copy server-side)."""
    fs, root = filesystem(path)
    _, aside = aside_location(path, tag)
    fs.makedirs(aside, exist_ok=True)
    try:
        _move(path, root, aside, keep)
    except BaseException:  # put back what was moved: the store stays whole where it was
        _move(path, aside, root.rstrip("/"))
        remove(path, aside)
        raise
    return aside


def _move(path: str | os.PathLike, src: str, dst: str, keep: str | None = None) -> None:
    """Move the entries of folder ``src`` but ``keep`` into folder ``dst``: renames locally (a symlink moves
    as a link, never followed); on object stores each object is copied server-side, then deleted."""
    fs = filesystem(path)[0]
    names = [_name(p) for p in fs.ls(src, detail=False) if _name(p) != keep]
    if local_path(path) is not None:
        for n in names:
            os.rename(f"{src}/{n}", f"{dst}/{n}")
        return
    objects = [o for n in names for o in (fs.find(f"{src}/{n}") or [f"{src}/{n}"])]
    fs.copy(objects, [f"{dst}/{o[len(src) + 1 :]}" for o in objects])  # concurrent on async file systems
    fs.rm(objects)


def move_back(path: str | os.PathLike, aside: str, keep: str) -> None:
    """Undo :func:`move_aside`: delete what is in ``path`` now (but ``keep``), move the kept store back."""
    fs, root = filesystem(path)
    clear(path, keep)
    _move(path, aside, root.rstrip("/"))
    remove(path, aside)


def remove(path: str | os.PathLike, where: str) -> None:
    """Delete ``where`` (a path in ``path``'s filesystem), a folder with everything inside it."""
    fs, _ = filesystem(path)
    if fs.exists(where):
        fs.rm(where, recursive=True)  # a symlink is unlinked, never followed


def replaced_leftovers(path: str | os.PathLike) -> list[str]:
    """Stores kept aside by replacements of ``path`` that were killed before their first commit."""
    fs, root = filesystem(path)
    _, probe = aside_location(path, "*")
    return sorted(fs.glob(probe))


def clear(path: str | os.PathLike, keep: str) -> None:
    """Delete everything inside the folder ``path`` but the entry ``keep`` (this writer's lock)."""
    fs, root = filesystem(path)
    for p in fs.ls(root, detail=False):
        if _name(p) != keep:
            fs.rm(p, recursive=True)  # a symlink is unlinked, never followed


def _name(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[-1]


def is_lock(name: str) -> bool:
    return name.startswith("writer-rank-") and name.endswith(".lock")


def nonempty(path: str | os.PathLike) -> bool:
    """Something but writer locks is at ``path``."""
    names = entries(path)
    return names is None or any(not is_lock(e) for e in names)


def is_store(path: str | os.PathLike) -> bool:
    """Whether igcritic wrote the store at ``path``: its root ``zarr.json`` is a group whose attributes carry
    :data:`OWNER` (written with the group, before anything else), or, for stores made before that marker,
    the full root attrs of this schema. Entry names prove nothing: a user's folder may hold ``shards/``."""
    meta = read_json(path, STORE_MARKER)
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) and meta.get("node_type") == "group" else {}
    owner = attrs.get(OWNER)
    if isinstance(owner, dict) and isinstance(owner.get("store_id"), str):
        return True
    return all(k in attrs for k in ("schema_version", "hidden_size", "chunk_tokens", "prompts_count"))


def check_replaceable(
    path: str | os.PathLike,
    what: str = "an igcritic store",
    error: type[ValueError] | None = None,
    flag: str = "--out",
    owns=is_store,
    proof: str = f"{STORE_MARKER} with an igcritic store id",
) -> None:
    """Refuse, in one line, to let ``--overwrite`` replace ``path`` unless igcritic wrote what is there.

    Replaceable: nothing, an empty folder (writer locks aside), or a folder ``owns(path)`` proves igcritic's
    (default :func:`is_store`; ``export`` passes its artifact check). Anything else (``--out .``, a file, a
    folder of the user's) raises ``error`` (default :class:`StoreError`)."""
    names = entries(path)
    if names == [] or (names and all(is_lock(e) for e in names)) or (names and owns(path)):
        return
    raise (error or StoreError)(
        f"{flag} {path} is not {what} (no {proof} in it), so --overwrite will not delete "
        f"it; pick another {flag} or move it away yourself"
    )


def check_writable(
    path: str | os.PathLike, flag: str = "--out", error: type[ValueError] | None = None, folder: bool = True
) -> None:
    """Fail now, before any work, if ``path`` could not be written: a file is created in it (a ``folder``
    that exists) or where it does not exist yet a folder in its nearest existing parent, removed again, so
    nothing is left behind. Remote URLs are not checked."""
    out = local_path(path)
    if out is None:
        return
    base = out if folder else out.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        if base == out:
            with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
                pass
        elif not base.is_dir():
            raise NotADirectoryError(20, "a parent is a file")
        else:
            os.rmdir(tempfile.mkdtemp(dir=base, prefix=".write-test-"))
    except OSError as e:
        raise (error or StoreError)(
            f"{flag} {os.fspath(path)!r} cannot be written ({e.strerror or e}); pick a writable location"
        ) from None


def zarr_store(path: str | os.PathLike, read_only: bool):
    """Zarr's store of a location: ``LocalStore`` for local ones (atomic chunk writes), else fsspec's."""
    local = local_path(path)
    if local is None:
        return FsspecStore.from_url(os.fspath(path), storage_options=REMOTE_OPTIONS, read_only=read_only)
    if read_only and not local.exists():
        raise StoreError(f"no store at {path}; run `igcritic collect` first or fix the path")
    return LocalStore(local, read_only=read_only)


def open_root(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """The root group of a complete store of this schema at ``path`` (StoreError otherwise)."""
    try:
        root = zarr.open_group(zarr_store(path, read_only=mode == "r"), mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeNotFoundError) as e:
        raise StoreError(f"no zarr group at {path}; run `igcritic collect` first or fix the path") from e
    except StoreError:
        raise
    except (ValueError, TypeError, KeyError) as e:  # a truncated or hand-edited zarr.json
        raise StoreError(
            f"store {path} has unreadable metadata (zarr.json: {type(e).__name__}); restore the file or "
            "recollect the store with --overwrite"
        ) from None
    if (version := root.attrs.get("schema_version")) != SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema_version {version!r}, this igcritic reads {SCHEMA_VERSION} (None: its "
            "creation was cut short); recollect it with --overwrite or use the igcritic that wrote it"
        )
    return root


class Shard(NamedTuple):
    """A shard's committed state, from its manifest."""

    group: zarr.Group
    n_traj: int
    """Committed trajectories."""
    n_tok: int
    """Committed token rows."""
    batches_done: list[int]
    """Committed work-batch indices."""

    @property
    def name(self) -> str:
        return self.group.basename


def started_shards(root: zarr.Group) -> list[Shard]:
    """Every shard with a manifest, in rank order (a shard without one was killed while being created: it
    holds nothing)."""
    try:
        groups = [root[SHARDS][n] for n in sorted(root[SHARDS].group_keys())] if SHARDS in root else []
        return [
            Shard(g, int(g.attrs["n_traj"]), int(g.attrs["n_tok"]), list(g.attrs["batches_done"]))
            for g in groups
            if "n_tok" in g.attrs
        ]
    except (ValueError, TypeError, KeyError) as e:  # a truncated or hand-edited shard zarr.json
        raise StoreError(
            f"the store has an unreadable shard manifest ({SHARDS}/*/zarr.json: {type(e).__name__}); restore "
            "the file or recollect the store with --overwrite"
        ) from None


def read_rows(g: zarr.Group, name: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the shard's array ``name``, or a StoreError naming what cannot be read (a
    truncated or garbled chunk or array zarr.json), so no decoding traceback reaches the user."""
    try:
        return g[name][start:stop]
    except Exception as e:  # noqa: BLE001 - any decoding error of a damaged chunk or its metadata
        raise StoreError(
            f"{g.basename}/{name} rows {start}-{stop - 1} cannot be read ({type(e).__name__}); restore the "
            "files or recollect the store with --overwrite"
        ) from None
