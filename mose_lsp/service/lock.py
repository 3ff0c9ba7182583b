"""One writer per index folder, across processes: a lock that survives crashes.

The lock is ``flock(LOCK_EX)`` on the file ``writer.lock`` in the index folder. The kernel
drops an flock when the process holding it dies (even by ``kill -9``), so a dead owner's lock
is free the moment it dies: there is no stale lock to detect or break. The file also holds
the owner's pid and what it is doing, for messages ("update in progress: pid 1234, scan").

Within one process the lock is re-entrant and shared by all threads through one
:class:`WriterLock` per index folder (:func:`writer_lock`): the first ``acquire`` of the
outermost holder takes the flock, the last ``release`` drops it. A thread that does not hold
it waits (or gives up after its timeout) like another process would.

Readers never take it: SQLite (WAL) gives them the last committed state, and a write is one
transaction, so a reader sees a file's chunks either all before or all after a change.

Where the lock is held (``indexer.WorkspaceIndex``): opening the store (schema, model check,
repairing the vector index files), each batch of a scan (re-checked against the store after
the lock is taken, so what another process indexed meanwhile is not embedded again), each
file-event batch and buffer update, each step of the deep pass, saving the vector indexes.
It is released between batches, so several clients take turns and none waits long: a waiting
process touches ``writer.want``, and a holder looping over batches steps aside for a moment
when it sees a fresh touch (flock itself is not fair).

Local file systems only: flock over NFS is emulated with byte-range locks on Linux (fine) and
may not be supported elsewhere; the lock then fails with an error that says so.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import MoseError

LOCK_NAME = "writer.lock"
WANT_NAME = "writer.want"  # touched by waiting processes: holders in a loop step aside
WANT_FRESH_S = 0.5  # a touch this recent means someone is waiting now
YIELD_S = 0.15  # how long a looping holder steps aside (longer than a waiter's poll)
_POLL_FIRST_S = 0.005  # first wait between two tries; doubles up to _POLL_MAX_S
_POLL_MAX_S = 0.1


class LockBusy(MoseError):
    """Another process (or thread) holds the writer lock of an index and the wait ran out."""

    def __init__(self, index_dir: Path, owner: LockOwner | None, waited_s: float):
        self.index_dir, self.owner, self.waited_s = index_dir, owner, waited_s
        who = f"pid {owner.pid} ({owner.what})" if owner else "another mose process"
        super().__init__(
            f"the index {index_dir} is being updated by {who}; waited {waited_s:.1f}s. "
            "Searches still answer from the last committed index; retry the update later")


@dataclass(frozen=True)
class LockOwner:
    pid: int
    what: str  # the operation, e.g. "scan", "deep", "open"
    since: float  # unix time the lock was taken


class WriterLock:
    """The writer lock of one index folder (re-entrant, shared by the threads of a process)."""

    def __init__(self, index_dir: Path | str):
        self.index_dir = Path(index_dir)
        self.path = self.index_dir / LOCK_NAME
        self._mutex = threading.RLock()  # the in-process part: one thread at a time
        self._depth = 0  # re-entrant holds of the owning thread
        self._fd: int | None = None

    # -- state

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (in any thread)."""
        return self._fd is not None

    def owner(self) -> LockOwner | None:
        """Who holds the lock now, or None when it is free (another process's pid, or ours)."""
        if self.held:
            return self._read_owner()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return self._read_owner()
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def busy(self) -> bool:
        """Whether another process or thread holds the lock right now."""
        if self._mutex.acquire(blocking=False):
            try:
                if self._depth:
                    return False  # this thread holds it
            finally:
                self._mutex.release()
            return self.owner() is not None
        return True

    # -- acquiring

    @contextmanager
    def hold(self, what: str, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the lock for a block; ``timeout_s`` None waits as long as it takes, 0 tries
        once. Raises :class:`LockBusy` when the wait runs out."""
        self.acquire(what, timeout_s)
        try:
            yield
        finally:
            self.release()

    def acquire(self, what: str, timeout_s: float | None = None) -> None:
        started = time.monotonic()
        deadline = None if timeout_s is None else started + max(0.0, timeout_s)
        if not self._wait_mutex(deadline):
            raise LockBusy(self.index_dir, self.owner(), time.monotonic() - started)
        try:
            if self._depth == 0:
                self._take_flock(what, started, deadline)
            self._depth += 1
        except BaseException:
            self._mutex.release()
            raise

    def release(self) -> None:
        if self._depth <= 0:
            raise RuntimeError("WriterLock.release() without a matching acquire()")
        self._depth -= 1
        if self._depth == 0:
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)
        self._mutex.release()

    def _wait_mutex(self, deadline: float | None) -> bool:
        if deadline is None:
            return self._mutex.acquire()
        remaining = deadline - time.monotonic()
        return self._mutex.acquire(timeout=remaining) if remaining > 0 \
            else self._mutex.acquire(blocking=False)

    def yield_if_wanted(self) -> bool:
        """Step aside briefly if another process is waiting for the lock (call between two
        holds in a loop, such as the batches of a scan or of the deep pass): flock is not
        fair, and a holder that takes it again at once would starve a polling waiter."""
        try:
            age = time.time() - (self.index_dir / WANT_NAME).stat().st_mtime
        except OSError:
            return False
        if 0 <= age < WANT_FRESH_S:
            time.sleep(YIELD_S)
            return True
        return False

    def _want(self) -> None:
        try:
            path = self.index_dir / WANT_NAME
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            os.utime(path)
        except OSError:
            pass  # only a hint

    def _take_flock(self, what: str, started: float, deadline: float | None) -> None:
        fd = self._open()
        pause = _POLL_FIRST_S
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise MoseError(
                            f"cannot lock {self.path} ({err.strerror or err}); the index folder "
                            "must be on a local file system that supports flock") from err
                self._want()
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise LockBusy(self.index_dir, self._read_owner(fd), now - started)
                time.sleep(min(pause, _POLL_MAX_S) if deadline is None
                           else max(0.0, min(pause, _POLL_MAX_S, deadline - now)))
                pause *= 2
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write_owner(fd, what)

    def _open(self) -> int:
        try:
            self.index_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise MoseError(f"cannot open the writer lock {self.path}: "
                            f"{err.strerror or err}") from err

    @staticmethod
    def _write_owner(fd: int, what: str) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {time.time():.3f} {what}\n".encode(), 0)
        except OSError:
            pass  # the pid is informative only

    def _read_owner(self, fd: int | None = None) -> LockOwner | None:
        try:
            if fd is not None:
                raw = os.pread(fd, 200, 0)
            else:
                raw = self.path.read_bytes()[:200]
            pid, since, what = raw.decode("utf-8", "replace").strip().split(" ", 2)
            return LockOwner(int(pid), what, float(since))
        except (OSError, ValueError):
            return None


_LOCKS: dict[Path, WriterLock] = {}
_LOCKS_MUTEX = threading.Lock()


def writer_lock(index_dir: Path | str) -> WriterLock:
    """The process's one :class:`WriterLock` for ``index_dir``. Two opens of one index in a
    process must share it: flock locks belong to open file descriptions, so two descriptors
    of one process exclude each other, and a thread holding one would wait forever on the
    other."""
    key = Path(os.path.realpath(Path(index_dir).expanduser()))
    with _LOCKS_MUTEX:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = WriterLock(key)
        return lock
