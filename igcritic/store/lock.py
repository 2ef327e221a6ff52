"""One writer per shard: the writer lock ``writer-rank-RRRRR.lock`` at the store root.

Each writer holds its shard's lock file (JSON: pid, host, rank, since) under ``flock`` from
``create``/``resume`` until ``close``. A second writer of the same shard, or an ``overwrite`` while any
shard's writer runs, is refused in one line naming the holder. The kernel drops the flock when its process
dies, so the lock of a killed run is stale and the next writer takes it over (the file stays behind until
then). On fsspec URLs (no flock) the lock is advisory: a lock of a pid that no longer runs on this host is
stale, a lock from another host must be deleted by hand once that run is known to be dead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
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

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
"""``flock`` errors that mean another open file holds the lock (others: the file system has no flock)."""
_HELD: set[str] = set()
"""Lock files this process holds through fsspec (no flock there: a pid's own locks are known here)."""


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
        if (local := local_path(path)) is None:
            self._finalizer = weakref.finalize(self, _unlock_remote, *self._acquire_remote(info))
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

    def _acquire_remote(self, info: dict) -> tuple:
        fs, root = filesystem(self.path)
        file = f"{root.rstrip('/')}/{self.name}"
        if fs.exists(file):
            holder = read_json(self.path, self.name)
            if alive(holder):
                raise held_error(self.path, self.rank, holder)
            log.warning("took over the stale writer lock %s of %s", file, holder)
        fs.pipe_file(file, json.dumps({**info, "file": file}).encode())
        _HELD.add(file)
        return fs, file

    def release(self) -> None:
        self._finalizer()


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


def _unlock_remote(fs, file: str) -> None:
    _HELD.discard(file)
    try:
        fs.rm(file)
    except OSError:
        pass
