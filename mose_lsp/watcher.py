"""Changes on disk and in editors, turned into a few batches of work for the indexer.

Three small pieces, all driven by an asyncio loop (the language server's):

- :class:`KeyedDebouncer`: per-key trailing debounce (one key per open document). A call for a
  key replaces the pending one, so only the latest edit of a quiet document is indexed.
- :class:`PathBatcher`: coalesces file paths from any number of events into one set, handed
  over once the events have been quiet for ``delay`` (and at the latest ``max_delay`` after the
  first one, so that a steady stream of events cannot starve the index). A ``git checkout``
  touching thousands of files becomes one batch.
- :class:`FolderWatcher`: watchdog on one workspace folder. watchdog calls back on its own
  thread; events are filtered there by the workspace's ignore rules (so ``.git/`` and
  ``node_modules/`` churn never wakes the loop) and handed to the loop with
  ``call_soon_threadsafe``.

None of this knows about LSP; the server wires it up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Generic, TypeVar

from .config import Settings
from .walker import IGNORE_FILES, IgnoreRules

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

#: watchdog event types that say nothing about a file's content.
_NO_CHANGE = frozenset({"opened", "closed_no_write", "attrib"})


class KeyedDebouncer(Generic[K]):
    """Run ``fn`` for a key once no new call for that key came for ``delay_s`` seconds.

    Must be used from the loop's thread. ``fn`` may return an awaitable; it is run as a task
    (the tasks are tracked so that :meth:`close` can cancel them).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float):
        self._loop = loop
        self.delay_s = max(0.0, delay_s)
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def schedule(self, key: K, fn: Callable[[], Any], delay_s: float | None = None) -> None:
        """(Re)start the timer of ``key``; a pending call for it is dropped."""
        self.cancel(key)
        delay = self.delay_s if delay_s is None else max(0.0, delay_s)
        self._timers[key] = self._loop.call_later(delay, self._fire, key, fn)

    def cancel(self, key: K) -> bool:
        """Drop the pending call of ``key``; returns whether there was one."""
        timer = self._timers.pop(key, None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def pending(self, key: K | None = None) -> int:
        """Calls waiting for their timer (for ``key``, or all)."""
        if key is None:
            return len(self._timers)
        return int(key in self._timers)

    def close(self) -> None:
        for key in list(self._timers):
            self.cancel(key)
        for task in list(self._tasks):
            task.cancel()

    def _fire(self, key: K, fn: Callable[[], Any]) -> None:
        self._timers.pop(key, None)
        result = fn()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("debounced job failed", exc_info=task.exception())


class PathBatcher:
    """Coalesce paths from file events into batches.

    ``add`` collects paths; ``on_batch(paths)`` is called once, with every distinct path, when
    no path was added for ``delay_s`` seconds, or ``max_delay_s`` after the first path of the
    batch at the latest. Must be used from the loop's thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float, max_delay_s: float,
                 on_batch: Callable[[set[str]], None]):
        if max_delay_s < delay_s:
            raise ValueError(f"max_delay_s ({max_delay_s}) must be >= delay_s ({delay_s})")
        self._loop = loop
        self.delay_s = max(0.0, delay_s)
        self.max_delay_s = max_delay_s
        self._on_batch = on_batch
        self._paths: set[str] = set()
        self._first = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.batches = 0  # batches handed over so far (for status and tests)

    @property
    def pending(self) -> int:
        return len(self._paths)

    def add(self, paths: Iterable[str]) -> None:
        if self._closed:
            return
        before = len(self._paths)
        self._paths.update(paths)
        if not self._paths:
            return
        now = self._loop.time()
        if before == 0:
            self._first = now
        if self._timer is not None:
            self._timer.cancel()
        at = min(now + self.delay_s, self._first + self.max_delay_s)
        self._timer = self._loop.call_at(at, self.flush)

    def flush(self) -> None:
        """Hand over what is pending now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._paths or self._closed:
            return
        batch, self._paths = self._paths, set()
        self.batches += 1
        self._on_batch(batch)

    def close(self) -> None:
        """Drop pending paths; later ``add`` calls are ignored."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._paths.clear()


def is_ignore_file(rel: str) -> bool:
    """Whether ``rel`` is a .gitignore/.moseignore (a change to it changes what is indexed)."""
    return PurePosixPath(rel).name in IGNORE_FILES


class FolderWatcher:
    """watchdog on one folder; relevant paths go to ``on_paths`` on the loop's thread.

    ``on_paths`` receives folder-relative posix paths: files created, modified, deleted or moved
    (both ends of a move), and folders created, deleted or moved (the receiver expands those).
    Paths the ignore rules exclude are dropped on the watchdog thread; a changed ignore file is
    passed on (and the rules reloaded) so that the receiver can rescan.
    """

    def __init__(self, root: Path, settings: Settings, loop: asyncio.AbstractEventLoop,
                 on_paths: Callable[[list[str]], None], skip: Iterable[Path] = ()):
        self.root = Path(os.path.abspath(root))
        self._real_root = self.root.resolve()
        self.settings = settings
        self._loop = loop
        self._on_paths = on_paths
        self._skip = tuple(Path(os.path.abspath(p)) for p in skip)  # e.g. an index dir inside
        self._rules = IgnoreRules(self._real_root, settings)
        self._observer: Any = None
        self.events_seen = 0
        self.events_passed = 0

    def start(self) -> None:
        """Start watching (blocking: watchdog walks the tree; call it from a worker thread).

        Raises ``OSError`` when the folder cannot be watched (for example the inotify watch
        limit is reached).
        """
        # Lazy: keeps `mose serve` startup fast.
        from watchdog import events as ev
        from watchdog.observers import Observer

        wanted = [ev.FileCreatedEvent, ev.FileModifiedEvent, ev.FileDeletedEvent,
                  ev.FileMovedEvent, ev.DirCreatedEvent, ev.DirDeletedEvent, ev.DirMovedEvent]
        observer = Observer()
        observer.daemon = True
        observer.schedule(_Handler(self), str(self.root), recursive=True, event_filter=wanted)
        observer.start()
        self._observer = observer

    def stop(self, timeout_s: float = 2.0) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        observer.stop()
        observer.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._observer is not None

    # -- on the watchdog thread

    def _rel(self, path: str | bytes) -> str | None:
        text = os.fsdecode(path)
        absolute = Path(os.path.abspath(text))
        if any(absolute == s or s in absolute.parents for s in self._skip):
            return None
        for base in (self.root, self._real_root):
            try:
                rel = absolute.relative_to(base).as_posix()
            except ValueError:
                continue
            return rel if rel != "." else None
        return None

    def _wanted(self, rel: str, is_dir: bool) -> bool:
        if is_ignore_file(rel):
            self._rules = IgnoreRules(self._real_root, self.settings)  # reload every layer
            return True
        try:
            return not self._rules.ignored(rel, is_dir)
        except (OSError, ValueError):  # an unreadable ignore file or an odd name: let it through
            return True

    def handle(self, event_type: str, is_dir: bool, src: str | bytes,
               dest: str | bytes | None = None) -> None:
        """Filter one event and pass what is left to the loop (thread-safe)."""
        self.events_seen += 1
        if event_type in _NO_CHANGE or (is_dir and event_type in ("modified", "closed")):
            return  # a folder's "modified" just echoes changes of its files
        rels = []
        for path in (src, dest):
            if path is None or path == "":
                continue
            rel = self._rel(path)
            if rel is not None and self._wanted(rel, is_dir):
                rels.append(rel)
        if not rels:
            return
        self.events_passed += 1
        try:
            self._loop.call_soon_threadsafe(self._on_paths, rels)
        except RuntimeError:  # the loop is closed: the server is going away
            pass


class _Handler:
    """The watchdog handler (duck-typed: watchdog only calls ``dispatch``)."""

    def __init__(self, watcher: FolderWatcher):
        self._watcher = watcher

    def dispatch(self, event: Any) -> None:
        try:
            self._watcher.handle(event.event_type, bool(event.is_directory), event.src_path,
                                 getattr(event, "dest_path", None) or None)
        except Exception:  # never let an odd event kill the watchdog thread
            log.exception("watcher: could not handle %r", event)

