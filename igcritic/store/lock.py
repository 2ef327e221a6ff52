"""One writer per shard: the writer lock ``writer-rank-RRRRR.lock`` at the store root.

Each writer holds its shard's lock file (JSON: pid, host, rank, since) from ``create``/``resume`` until
``close``. A second writer of the same shard, or an ``overwrite`` while any shard's writer runs, is refused in
one line naming the holder.

Local folders: the file is held under ``flock``; the kernel drops the flock when its process dies, so the lock
of a killed run is stale and the next writer takes it over (the file stays behind until then).

Object stores (fsspec URLs; there is no flock): the lock is a lease. It is created with a conditional put
(``If-None-Match: *`` on S3: of two writers starting at once exactly one creates it), carries a random owner
id and a heartbeat time that a thread of the writer refreshes every :data:`LEASE_S` / 4, and the writer checks
it is still the owner before each commit. A lease is stale when its heartbeat is older than ``LEASE_S`` or
its pid no longer runs on this host; a stale lease is taken over with a put conditional on its ETag
(``If-Match``), so of two writers taking it over at once one wins. Other fsspec file systems lack these
conditions: there creation checks existence first, a race the S3 path does not have.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from pathlib import Path

from igcritic.store.layout import (
    LOCK_FILE,
    SHARD,
    StoreError,
    entries,
    filesystem,
    is_lock,
    local_path,
    read_json,
)

log = logging.getLogger(__name__)

LEASE_S = float(os.environ.get("IGCRITIC_LOCK_LEASE_S", 600))
"""Seconds after its last heartbeat that a writer lock on an object store counts as stale."""

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
"""``flock`` errors that mean another open file holds the lock (others: the file system has no flock)."""
_HELD: set[str] = set()
"""Owner ids of the leases this process holds or is acquiring on object stores (no flock there: a pid's own
locks are known here, including one another thread is creating this instant)."""


class WriterLock:
    """This process's hold on one shard's writer lock; ``release`` (or garbage collection) gives it back."""

    def __init__(self, path: str | os.PathLike, rank: int):
        self.path, self.rank, self.name = path, rank, LOCK_FILE.format(rank)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "rank": rank,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._lease: _Lease | None = None
        if (local := local_path(path)) is None:
            self._lease = self._acquire_remote(info)
            self._finalizer = weakref.finalize(self, self._lease.release)
        else:
            local.mkdir(parents=True, exist_ok=True)
            file = local / self.name
            self._finalizer = weakref.finalize(self, _unlock_local, self._acquire_local(file, info), file)

    def _acquire_local(self, file: Path, info: dict) -> int:
        while True:
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            busy, holder = _try_flock(fd, fcntl.LOCK_EX, file)
            if busy:
                os.close(fd)
                raise held_error(self.path, self.rank, holder)
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

    def _acquire_remote(self, info: dict) -> _Lease:
        fs, root = filesystem(self.path)
        file = f"{root.rstrip('/')}/{self.name}"
        record = {**info, "file": file, "owner": uuid.uuid4().hex, "heartbeat": time.time()}
        data = json.dumps(record).encode()
        _HELD.add(record["owner"])
        try:
            fs.pipe_file(file, data, mode="create")  # S3: If-None-Match: * (one of two creators wins)
        except FileExistsError:
            holder, etag = read_json(self.path, self.name), _etag(fs, file)
            if alive(holder):
                _HELD.discard(record["owner"])
                raise held_error(self.path, self.rank, holder) from None
            if not _replace(fs, file, data, etag):  # another writer took the stale lease over first
                _HELD.discard(record["owner"])
                raise held_error(self.path, self.rank, read_json(self.path, self.name)) from None
            log.warning("took over the stale writer lock %s of %s", file, holder)
        except BaseException:
            _HELD.discard(record["owner"])
            raise
        return _Lease(fs, file, record)

    def check(self) -> None:
        """Before a commit: raise StoreError unless this writer still holds its lock (object stores: the
        lease is refreshed; local: the flock cannot be lost)."""
        if self._lease is not None:
            self._lease.refresh()

    def release(self) -> None:
        self._finalizer()


class _Lease:
    """A writer lock on an object store, kept fresh by a heartbeat thread until released."""

    def __init__(self, fs, file: str, record: dict):
        self.fs, self.file, self.record, self.lost = fs, file, record, None
        self._lock, self._stop = threading.Lock(), threading.Event()
        threading.Thread(target=self._beat, name=f"igcritic-lease {file}", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_S / 4):
            try:
                self.refresh()
            except StoreError as e:
                log.error("%s", e)
                return

    def refresh(self) -> None:
        """Write a new heartbeat, on condition that the lock object is still ours."""
        with self._lock:
            if self.lost is None and not self._stop.is_set():
                current, etag = _read(self.fs, self.file), _etag(self.fs, self.file)
                if not isinstance(current, dict) or current.get("owner") != self.record["owner"]:
                    self.lost = (
                        f"{current.get('pid')} on {current.get('host')}" if current else "nobody (deleted)"
                    )
                else:
                    self.record["heartbeat"] = time.time()
                    if not _replace(self.fs, self.file, json.dumps(self.record).encode(), etag):
                        self.lost = "another writer"
            if self.lost is not None:
                raise StoreError(
                    f"this writer lost its lock {self.file} (now held by {self.lost}; its lease ran out, "
                    f"heartbeats every {LEASE_S / 4:.0f} s); nothing more is committed: check that one run "
                    "writes the store, then rerun with --resume"
                )

    def release(self) -> None:
        with self._lock:
            self._stop.set()
        _HELD.discard(self.record["owner"])
        try:
            current = _read(self.fs, self.file)
            if isinstance(current, dict) and current.get("owner") == self.record["owner"]:
                self.fs.rm(self.file)
        except OSError:
            pass


def _read(fs, file: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(file))
    except (OSError, ValueError):
        return None


def _etag(fs, file: str) -> str | None:
    try:
        return fs.info(file).get("ETag")
    except OSError:
        return None


def _replace(fs, file: str, data: bytes, etag: str | None) -> bool:
    """Overwrite ``file`` only if it is still the version ``etag`` (S3 ``If-Match``); without an ETag: delete
    and create it exclusively. False: another writer changed it first."""
    try:
        if etag is not None and "s3" in fs.protocol:
            fs.pipe_file(file, data, IfMatch=etag)
        else:
            fs.rm(file)
            fs.pipe_file(file, data, mode="create")
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno == errno.EINVAL and "pre-condition" in str(e).lower().replace(
            "precondition", "pre-condition"
        ):
            return False
        raise
    return True


def live_writers(path: str | os.PathLike, but: str | None = None) -> list[tuple[int, dict | None]]:
    """(rank, holder record) of every writer lock at ``path`` that a live run holds, ``but`` excepted."""
    local, found = local_path(path), []
    for name in entries(path) or []:
        if not is_lock(name) or name == but:
            continue
        if local is None:
            busy, holder = alive(h := read_json(path, name)), h
        else:
            try:
                fd = os.open(local / name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                busy, holder = _try_flock(fd, fcntl.LOCK_SH, local / name)
            finally:
                os.close(fd)  # also drops the probe's own shared flock
        if busy:
            found.append((int(name.removeprefix("writer-rank-").removesuffix(".lock")), holder))
    return found


def check_no_writers(path: str | os.PathLike, but: str) -> None:
    """Refuse, naming the holder, while a live run holds any writer lock at ``path`` other than ``but``."""
    if busy := live_writers(path, but):
        raise held_error(path, *busy[0])


def alive(holder: dict | None) -> bool:
    """Whether a recorded lock holder may still run: False only for a pid gone from this host (or no
    record)."""
    if not isinstance(holder, dict) or "pid" not in holder:
        return False
    if isinstance(beat := holder.get("heartbeat"), (int, float)) and time.time() - beat > LEASE_S:
        return False  # a lease on an object store whose writer stopped refreshing it
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell from here
    pid = int(holder["pid"])
    if pid == os.getpid():
        return holder.get("owner") in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def held_error(path: str | os.PathLike, rank: int, holder: dict | None) -> StoreError:
    where, name = f"store {path} {SHARD.format(rank)}", LOCK_FILE.format(rank)
    pid, host, since = (holder or {}).get("pid"), (holder or {}).get("host"), (holder or {}).get("since")
    if pid is None:
        who, fix = "another process", "wait for it to end"
    elif host == socket.gethostname() and int(pid) == os.getpid():
        return StoreError(
            f"{where} is already open for writing in this process (pid {pid}); close that StoreWriter first"
        )
    elif host == socket.gethostname():
        who, fix = f"pid {pid} since {since}", "wait for that run to end or stop it"
    else:
        who, fix = f"pid {pid} on host {host} since {since}", f"if that run is dead, delete {path}/{name}"
    return StoreError(f"{where} is being written by {who} ({name}); {fix}, then rerun")


def _try_flock(fd: int, op: int, file: Path) -> tuple[bool, dict | None]:
    """``flock(fd, op)`` without waiting: (whether a live writer holds ``file``, its record). Where the file
    system has no flock, the record's pid and host decide."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return False, None
    except OSError as e:
        holder = _read_lock(fd)
        if e.errno in _BUSY or alive(holder):
            return True, holder
        log.warning("no flock on %s (%s): the writer lock is judged by pid and host only", file, e)
        return False, holder


def _read_lock(fd: int) -> dict | None:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _unlock_local(fd: int, file: Path) -> None:
    try:
        if os.fstat(fd).st_ino == os.stat(file).st_ino:
            os.unlink(file)  # while still holding the flock: a waiting opener sees the inode change, retries
    except OSError:
        pass
    finally:
        os.close(fd)
