"""A workspace folder as the server holds it: its index (opened here, then adopted by the
service layer, which searches it), its two lanes, its open documents, and the jobs that run on
its writer lane (threads, never the event loop)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pygls.uris import from_fs_path, to_fs_path

from ..config import Settings

if TYPE_CHECKING:
    from ..encoder import ModelEncoder
    from ..indexer import WorkspaceIndex
    from ..service.core import Service
    from ..service.core import Workspace as ServiceFolder
    from ..service.types import ReindexResult

log = logging.getLogger(__name__)


@dataclass
class Doc:
    """An open editor document inside a workspace folder."""

    uri: str
    folder_uri: str
    rel: str
    version: int
    indexed_version: int | None = None
    overlay: bool = False  # the index holds this buffer in place of the disk file


class Folder:
    """One workspace folder: its index, its two lanes and its background work."""

    def __init__(self, uri: str, path: Path, loop: asyncio.AbstractEventLoop):
        self.uri = uri
        self.path = path  # as the client names it (URIs of results are built from it)
        self.root = path.resolve()
        self.name = path.name or str(path)
        self.state = "loading"  # loading | indexing | ready | cancelled | error | closed
        self.error: str | None = None
        self.settings: Settings | None = None
        self.index: WorkspaceIndex | None = None
        self.workspace: ServiceFolder | None = None  # the index as the service layer holds it
        self.opened: asyncio.Future[WorkspaceIndex] = loop.create_future()
        self.opened.add_done_callback(retrieve)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix=f"mose-write-{self.name}")
        self.editor = ThreadPoolExecutor(1, thread_name_prefix=f"mose-edit-{self.name}")
        self.stop = threading.Event()
        self.scan_cancel = threading.Event()
        self.scan_lock = asyncio.Lock()
        self.watch_mode = "off"
        self.watcher: Any = None  # FolderWatcher while watchdog watches it
        self.batcher: Any = None  # PathBatcher of file events
        self.paths_in_flight = 0
        self.deep_wake = asyncio.Event()
        self.deep_filling = False
        self.last_activity = 0.0
        self.last_scan: ReindexResult | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.start_task: asyncio.Task[Any] | None = None
        self._rules: Any = None  # IgnoreRules for open documents (edit lane only)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (err := task.exception()) is not None:
            log.error("%s: background job failed", self.name, exc_info=err)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def rel(self, path: Path) -> str | None:
        from ..walker import relative_path

        for base in (self.path, self.root):
            try:
                rel = Path(os.path.abspath(path)).relative_to(base).as_posix()
                return None if rel in (".", "") else rel
            except ValueError:
                continue
        return relative_path(self.root, path)

    def uri_of(self, rel: str) -> str:
        return from_fs_path(str(self.path / rel)) or f"file://{self.path / rel}"

    def ignored(self, rel: str) -> bool:
        """Whether the folder's rules keep ``rel`` out of the index (edit lane only)."""
        from ..filetypes import detect_language
        from ..walker import IgnoreRules

        if self._rules is None and self.settings is not None:
            self._rules = IgnoreRules(self.root, self.settings)
        if detect_language(rel) is None and PurePosixPath(rel).suffix:
            return True  # the scan would record it as unsupported
        return self._rules is not None and self._rules.ignored(rel, False)


def retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # mark a failure as seen: it is reported to the user elsewhere


def uri_path(uri: str) -> Path | None:
    if not uri.startswith("file:"):
        return None
    path = to_fs_path(uri)
    return Path(os.path.abspath(path)) if path else None


def folder_settings(settings: Settings, root: Path) -> Settings:
    """A folder's settings: a configured ``index_dir`` holds one sub-folder per workspace
    folder (named as in the default cache), so that folders never share an index."""
    if not settings.index_dir:
        return settings
    from ..store import default_index_dir

    return replace(settings, index_dir=str(Path(settings.index_dir) / default_index_dir(root).name))


def index_dir_of(settings: Settings, root: Path) -> Path:
    from ..store import default_index_dir

    return Path(settings.index_dir) if settings.index_dir else default_index_dir(root)


# ----------------------------------------------------------------------------- lane jobs


def load_model(settings: Settings) -> ModelEncoder:
    from ..encoder import ModelEncoder

    started = time.perf_counter()
    model = ModelEncoder.open(settings.model, threads=settings.resolved_threads())
    log.info("model %s loaded in %.2fs", model.name, time.perf_counter() - started)
    return model


def open_job(folder: Folder, settings: Settings, model: ModelEncoder,
             service: Callable[[], Service]) -> WorkspaceIndex | None:
    """Open the folder's index and hand it to the service layer (which answers searches and
    status from it; the server keeps opening, watching and closing it on this lane).
    ``service`` gives the service (made on first use: here, off the loop)."""
    if folder.stop.is_set():
        return None
    from ..indexer import WorkspaceIndex

    index = WorkspaceIndex.open(folder.root, settings, model)
    try:
        folder.workspace = service().adopt(index)
    except BaseException:
        index.close()
        raise
    folder.index = index
    return index


def close_job(folder: Folder, service: Callable[[], Service]) -> None:
    index, folder.index = folder.index, None
    workspace, folder.workspace = folder.workspace, None
    if workspace is not None:
        service().release(workspace)  # the service lets go; the index is closed here
    if index is not None:
        index.close()  # saves the vector index if it changed


def expand(index: WorkspaceIndex, rels: Iterable[str]) -> list[str]:
    """File paths behind event paths: a folder (created, moved in) becomes the files under it,
    a vanished folder the indexed files that were under it."""
    from ..walker import IgnoreRules

    out: dict[str, None] = {}
    known: list[str] | None = None
    rules = None
    for rel in rels:
        path = index.root / rel
        if path.is_dir() and not path.is_symlink():
            rules = rules or IgnoreRules(index.root, index.settings)
            for dirpath, dirnames, filenames in os.walk(path):
                base = Path(dirpath).relative_to(index.root).as_posix()
                dirnames[:] = [d for d in dirnames if not rules.ignored(f"{base}/{d}", True)]
                for name in filenames:
                    out[f"{base}/{name}"] = None
            continue
        out[rel] = None
        if not path.exists():
            if known is None:
                known = [s.path for s in index.store.all_files()]
            prefix = rel + "/"
            out.update((p, None) for p in known if p.startswith(prefix))
    return list(out)


def same_as_disk(path: Path, text: str) -> bool:
    try:
        return path.read_bytes() == text.encode("utf-8")
    except OSError:
        return False
