"""The language server: a live semantic index of every workspace folder, inside the editor.

``create_server(settings)`` builds a :class:`MoseLanguageServer`; all state lives on it and on
its :class:`MoseService` (no module globals). The handlers at the bottom are thin: they parse
arguments into the typed shapes of :mod:`mose_lsp.protocol` and call the service.

Threads (the event loop never runs inference or disk work):

- per folder, a *writer* lane (one thread): open the index, scan, file-watcher batches, the
  background deep-vector pass, periodic flushes, close. Its FIFO order is the folder's
  order of writes.
- per folder, an *edit* lane (one thread): unsaved buffers (``update_text``) and their
  restoration on close, so that an edit never waits behind a long scan. The store's writer lock
  serialises the two lanes' transactions; a scan or batch that rewrote an open buffer's file is
  followed by re-applying that buffer.
- a shared *reader* pool (two threads): model loading, searches, status. The store gives each
  thread its own read connection.
- watchdog's own thread, which only filters events and hands them to the loop
  (``call_soon_threadsafe``).

Debouncing: edits per document (``KeyedDebouncer``, keyed by URI, ``debounce_ms``; a job drops
itself when a newer version arrived or the document closed), file events per folder
(``PathBatcher``: coalesced into one set). Cancellation: ``$/cancelRequest`` sets the request's
``threading.Event``, which long jobs check, and cancels its task; scans also stop on
``window/workDoneProgress/cancel`` and on shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from lsprotocol import types as lsp
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcRequestCancelled,
)
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.uris import from_fs_path, to_fs_path

from . import __version__
from .config import Settings
from .errors import MoseError
from .protocol import (
    DOCUMENT_INDEXED,
    Config,
    Filters,
    ParamsError,
    ReindexArgs,
    Result,
    SearchArgs,
    SearchResponse,
    SimilarArgs,
    StatusArgs,
    camel_dict,
    lsp_range,
    reopen_needed,
    resolve_config,
    section,
    snippet,
)
from .watcher import FolderWatcher, KeyedDebouncer, PathBatcher, is_ignore_file

if TYPE_CHECKING:
    from .encoder import ModelEncoder
    from .indexer import Progress, ScanReport, WorkspaceIndex
    from .searcher import Hit, Query, Searcher

log = logging.getLogger(__name__)
T = TypeVar("T")

DEEP_STEP = 32  # chunks per background deep-fill step: bounds how long an edit waits behind it
IDLE_S = 1.0  # quiet time (no edit, event or search) before the deep pass resumes
FLUSH_CHECK_S = 30.0  # how often dirty vector indexes are considered for saving
FLUSH_MIN_INTERVAL_S = 60.0  # ... and the least time between two saves of one index
PROGRESS_EVERY_S = 0.2  # at most this often a $/progress report (unless the percentage moved)
SHUTDOWN_TIMEOUT_S = 20.0
SKIPPED_LISTED = 200
BATCH_MAX_DELAY_S = 2.0  # a stream of file events is handed over at least this often


class RequestFailed(JsonRpcException):
    """LSP RequestFailed: the request was valid but the server could not answer it."""

    CODE = -32803
    MESSAGE = "Request Failed"


class Cancelled(Exception):
    """A job noticed its cancel flag."""


# ----------------------------------------------------------------------------- folders


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
        self.searcher: Searcher | None = None
        self.opened: asyncio.Future[WorkspaceIndex] = loop.create_future()
        self.opened.add_done_callback(_retrieve)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix=f"mose-write-{self.name}")
        self.editor = ThreadPoolExecutor(1, thread_name_prefix=f"mose-edit-{self.name}")
        self.stop = threading.Event()
        self.scan_cancel = threading.Event()
        self.scan_lock = asyncio.Lock()
        self.watch_mode = "off"
        self.watcher: FolderWatcher | None = None
        self.batcher: PathBatcher | None = None
        self.paths_in_flight = 0
        self.deep_wake = asyncio.Event()
        self.deep_filling = False
        self.last_activity = 0.0
        self.last_scan: ScanReport | None = None
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
        from .walker import relative_path

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
        from .languages import detect_language
        from .walker import IgnoreRules

        if self._rules is None and self.settings is not None:
            self._rules = IgnoreRules(self.root, self.settings)
        if detect_language(rel) is None and PurePosixPath(rel).suffix:
            return True  # the scan would record it as unsupported
        return self._rules is not None and self._rules.ignored(rel, False)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # mark a failure as seen: it is reported to the user elsewhere


def folder_settings(settings: Settings, root: Path) -> Settings:
    """A folder's settings: a configured ``index_dir`` holds one sub-folder per workspace
    folder (named as in the default cache), so that folders never share an index."""
    if not settings.index_dir:
        return settings
    from .store import default_index_dir

    return replace(settings, index_dir=str(Path(settings.index_dir) / default_index_dir(root).name))


def index_dir_of(settings: Settings, root: Path) -> Path:
    from .store import default_index_dir

    return Path(settings.index_dir) if settings.index_dir else default_index_dir(root)


# ----------------------------------------------------------------------------- progress


class ProgressBar:
    """One LSP work-done progress (a no-op when the client does not support them)."""

    def __init__(self, ls: LanguageServer, loop: asyncio.AbstractEventLoop, token: str | None):
        self._ls = ls
        self._loop = loop
        self.token = token
        self._last = (-1, 0.0)
        self._ended = False

    def report(self, percent: int, message: str) -> None:
        if self.token is None or self._ended:
            return
        now = time.monotonic()
        last_pct, last_t = self._last
        if percent == last_pct and now - last_t < PROGRESS_EVERY_S:
            return
        self._last = (percent, now)
        self._ls.work_done_progress.report(
            self.token, lsp.WorkDoneProgressReport(message=message, percentage=percent))

    def report_threadsafe(self, percent: int, message: str) -> None:
        try:
            self._loop.call_soon_threadsafe(self.report, percent, message)
        except RuntimeError:  # loop closed
            pass

    def end(self, message: str) -> None:
        if self.token is None or self._ended:
            return
        self._ended = True
        self._ls.work_done_progress.end(self.token, lsp.WorkDoneProgressEnd(message=message))
        self._ls.work_done_progress.tokens.pop(self.token, None)


# ----------------------------------------------------------------------------- jobs (threads)


def _load_model(settings: Settings) -> ModelEncoder:
    from .encoder import ModelEncoder

    started = time.perf_counter()
    model = ModelEncoder.open(settings.model, threads=settings.resolved_threads())
    log.info("model %s loaded in %.2fs", model.name, time.perf_counter() - started)
    return model


def _open_job(folder: Folder, settings: Settings, model: ModelEncoder) -> WorkspaceIndex | None:
    if folder.stop.is_set():
        return None
    from .indexer import WorkspaceIndex
    from .searcher import Searcher

    index = WorkspaceIndex.open(folder.root, settings, model)
    folder.index = index
    folder.searcher = Searcher(index)
    return index


def _close_job(folder: Folder) -> None:
    index, folder.index = folder.index, None
    if index is not None:
        index.close()  # saves the vector index if it changed


def _expand(index: WorkspaceIndex, rels: Iterable[str]) -> list[str]:
    """File paths behind event paths: a folder (created, moved in) becomes the files under it,
    a vanished folder the indexed files that were under it."""
    from .walker import IgnoreRules

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


def _same_as_disk(path: Path, text: str) -> bool:
    try:
        return path.read_bytes() == text.encode("utf-8")
    except OSError:
        return False


@dataclass(frozen=True)
class _QueryText:
    text: str
    lang: str
    rel: str
    lines: tuple[int, int] | None  # the query's own lines (None: the whole file)
    content_hash: str | None = None  # the chunk's, when the query is the chunk at a position


def _query_from_text(rel: str, text: str, args: SimilarArgs, max_bytes: int) -> _QueryText:
    """The query of ``mose.similar``: the innermost chunk around the position, the lines of
    the range, or the whole text."""
    from .chunker import ChunkLimits, chunk_source
    from .languages import detect_language

    lang = detect_language(rel) or ""
    lines = text.splitlines()
    if args.range is not None:
        start, end = args.range.lines()
        if start >= len(lines):
            raise ParamsError(f"mose.similar: line {start + 1} is past the end of {rel} "
                              f"({len(lines)} lines)")
        body = "\n".join(lines[start:end + 1])
        if not body.strip():
            raise ParamsError(f"mose.similar: lines {start + 1}-{end + 1} of {rel} are blank")
        return _QueryText(body, lang, rel, (start, end))
    if args.position is None:
        if not text.strip():
            raise ParamsError(f"mose.similar: {rel} is empty")
        return _QueryText(text, lang, rel, None)
    line = args.position.line
    result = chunk_source(rel, text, ChunkLimits(max_file_bytes=max_bytes))
    if result.skipped is not None:
        raise ParamsError(f"mose.similar: {rel} is not indexed code ({result.skipped.message})")
    around = [c for c in result.chunks if c.start_line <= line <= c.end_line]
    if not around:
        raise ParamsError(f"mose.similar: no code around line {line + 1} of {rel}")
    chunk = min(around, key=lambda c: c.end_line - c.start_line)
    return _QueryText(chunk.text, chunk.language or lang, rel, (chunk.start_line, chunk.end_line),
                      chunk.content_hash)


# ----------------------------------------------------------------------------- the service


class MoseService:
    """Folders, documents and requests; called by the thin LSP handlers on the loop."""

    def __init__(self, ls: MoseLanguageServer, base: Settings):
        self.ls = ls
        self.base = base
        self.init_options: Any = None
        self.client_settings: Any = None
        self.config: Config = resolve_config(base)
        self.folders: dict[str, Folder] = {}
        self.docs: dict[str, Doc] = {}
        self._models: dict[tuple[str | None, int], asyncio.Future[ModelEncoder]] = {}
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="mose-read")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._debouncer: KeyedDebouncer[str] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shown: set[str] = set()
        self._cancels: dict[Any, tuple[asyncio.Task[Any] | None, threading.Event]] = {}
        self._cancelled_early: collections.deque[Any] = collections.deque(maxlen=64)
        self.client_watch = False  # the client watches files for us (registered dynamically)
        self._initial: list[Folder] = []  # folders of `initialize`, started on `initialized`
        self.last_request = 0.0
        self.closed = False

    # -- small helpers

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def settings(self) -> Settings:
        return self.config.settings

    @property
    def debouncer(self) -> KeyedDebouncer[str]:
        if self._debouncer is None:
            self._debouncer = KeyedDebouncer(self.loop, self.settings.debounce_ms / 1000)
        return self._debouncer

    async def _run(self, executor: Executor, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await self.loop.run_in_executor(executor, functools.partial(fn, *args, **kw))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and (err := t.exception()) is not None:
                log.error("background job failed", exc_info=err)

        task.add_done_callback(done)
        return task

    def warn(self, messages: Iterable[str]) -> None:
        """Tell the user (once per distinct message) and log."""
        new = [m for m in messages if m not in self._shown]
        if not new:
            return
        self._shown.update(new)
        for m in new:
            log.warning("%s", m)
        text = "mose: " + "; ".join(new)
        self.ls.window_show_message(lsp.ShowMessageParams(type=lsp.MessageType.Warning,
                                                          message=text))
        self.ls.window_log_message(lsp.LogMessageParams(type=lsp.MessageType.Warning,
                                                        message=text))

    def error(self, message: str) -> None:
        log.error("%s", message)
        self.ls.window_show_message(lsp.ShowMessageParams(type=lsp.MessageType.Error,
                                                          message=f"mose: {message}"))

    async def progress(self, title: str, message: str = "", cancellable: bool = False,
                       on_cancel: Callable[[], None] | None = None) -> ProgressBar:
        caps = self.ls.client_capabilities
        supported = bool(caps and caps.window and caps.window.work_done_progress)
        if not supported:
            return ProgressBar(self.ls, self.loop, None)
        token = f"mose-{uuid.uuid4().hex[:12]}"
        try:
            await asyncio.wait_for(self.ls.work_done_progress.create_async(token), 10)
        except (JsonRpcException, asyncio.TimeoutError) as err:  # refused or no answer: no bar
            log.info("progress %r not created: %s", title, err)
            return ProgressBar(self.ls, self.loop, None)
        self.ls.work_done_progress.begin(token, lsp.WorkDoneProgressBegin(
            title=title, message=message, percentage=0, cancellable=cancellable))
        fut = self.ls.work_done_progress.tokens.get(token)
        if on_cancel is not None and fut is not None:
            fut.add_done_callback(lambda f: on_cancel() if f.cancelled() else None)
        return ProgressBar(self.ls, self.loop, token)

    # -- lifecycle

    def initialize(self, params: lsp.InitializeParams) -> None:
        self._loop = asyncio.get_running_loop()
        self.init_options = params.initialization_options
        self.config = resolve_config(self.base, self.init_options, self.client_settings)
        folders = [f.uri for f in params.workspace_folders or []]
        if not folders and params.root_uri:
            folders = [params.root_uri]
        # Known now (documents opened right after `initialized` find their folder); started on
        # `initialized`, once the client's settings are in.
        self._initial = [f for uri in folders if (f := self.add_folder(uri, start=False))]

    async def initialized(self) -> None:
        caps = self.ls.client_capabilities
        ws = caps.workspace if caps else None
        if ws is not None and ws.configuration:
            await self.pull_configuration(initial=True)
        self.warn(self.config.warnings)
        if ws is not None and ws.did_change_configuration is not None \
                and ws.did_change_configuration.dynamic_registration:
            await self._register(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION,
                                 lsp.DidChangeConfigurationRegistrationOptions(section="mose"))
        await self._register_file_watching()
        for folder in self._initial:
            if self.folders.get(folder.uri) is folder:
                self.start_folder(folder)
        self._initial = []
        self.spawn(self._flusher())

    async def _register(self, method: str, options: Any) -> bool:
        try:
            await asyncio.wait_for(self.ls.client_register_capability_async(
                lsp.RegistrationParams(registrations=[lsp.Registration(
                    id=f"mose-{uuid.uuid4().hex[:8]}", method=method,
                    register_options=options)])), 10)
            return True
        except (JsonRpcException, asyncio.TimeoutError) as err:
            log.info("could not register %s: %s", method, err)
            return False

    async def _register_file_watching(self) -> None:
        mode = self.config.options.watcher
        caps = self.ls.client_capabilities
        ws = caps.workspace if caps else None
        dynamic = bool(ws and ws.did_change_watched_files
                       and ws.did_change_watched_files.dynamic_registration)
        if mode in ("auto", "client") and dynamic and not self.client_watch:
            self.client_watch = await self._register(
                lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                lsp.DidChangeWatchedFilesRegistrationOptions(
                    watchers=[lsp.FileSystemWatcher(glob_pattern="**/*")]))

    def watch_mode(self) -> str:
        mode = self.config.options.watcher
        if mode == "auto":
            return "client" if self.client_watch else "watchdog"
        return mode

    async def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._debouncer is not None:
            self._debouncer.close()
        for task in list(self._tasks):
            task.cancel()
        folders = list(self.folders.values())
        self.folders.clear()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self._close_folder(f) for f in folders), return_exceptions=True),
                SHUTDOWN_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error("shutdown: folders did not close within %.0fs", SHUTDOWN_TIMEOUT_S)
        self._readers.shutdown(wait=False, cancel_futures=True)

    def close_now(self) -> None:
        """Last resort when the connection ended without ``shutdown``: flush and close the
        indexes from this thread."""
        for folder in list(self.folders.values()):
            folder.stop.set()
            folder.scan_cancel.set()
            if folder.watcher is not None:
                folder.watcher.stop()
            try:
                folder.writer.submit(_close_job, folder).result(SHUTDOWN_TIMEOUT_S)
            except Exception:
                log.exception("%s: could not close the index", folder.name)
        self.folders.clear()

    # -- configuration

    async def pull_configuration(self, initial: bool = False) -> None:
        try:
            result = await asyncio.wait_for(self.ls.workspace_configuration_async(
                lsp.ConfigurationParams(items=[lsp.ConfigurationItem(section="mose")])), 10)
        except (JsonRpcException, asyncio.TimeoutError) as err:
            log.info("workspace/configuration failed: %s", err)
            return
        value = result[0] if result else None
        await self.set_client_settings(value if isinstance(value, dict) else None, initial)

    async def settings_pushed(self, settings: Any) -> None:
        caps = self.ls.client_capabilities
        if isinstance(settings, dict) and "mose" in settings:
            await self.set_client_settings(settings["mose"])
        elif caps and caps.workspace and caps.workspace.configuration:
            await self.pull_configuration()

    async def set_client_settings(self, data: Any, initial: bool = False) -> None:
        self.client_settings = section(data)
        new = resolve_config(self.base, self.init_options, self.client_settings)
        old, self.config = self.config, new
        if initial:
            return
        self.warn(new.warnings)
        self.debouncer.delay_s = new.settings.debounce_ms / 1000
        if reopen_needed(old.settings, new.settings):
            log.info("index settings changed: reopening every folder")
            for folder in list(self.folders.values()):
                await self.restart_folder(folder)
            return
        mode_changed = old.options.watcher != new.options.watcher
        if mode_changed:
            await self._register_file_watching()
        for folder in list(self.folders.values()):
            folder.settings = folder_settings(new.settings, folder.root)
            if folder.index is not None:
                folder.index.settings = folder.settings
            if folder.batcher is not None:
                folder.batcher.delay_s = new.settings.debounce_ms / 1000
            if mode_changed:
                await self._stop_watching(folder)
                await self._start_watching(folder)
            if new.settings.background_deep:
                folder.deep_wake.set()

    # -- folders

    def folder_by_uri(self, uri: str) -> Folder | None:
        if uri in self.folders:
            return self.folders[uri]
        path = _uri_path(uri)
        if path is None:
            return None
        for folder in self.folders.values():
            if path == folder.path or path == folder.root or path.resolve() == folder.root:
                return folder
        return None

    def locate(self, uri: str) -> tuple[Folder, str] | None:
        """The folder holding the document ``uri`` (the innermost one) and its relative path."""
        path = _uri_path(uri)
        if path is None:
            return None
        best: tuple[Folder, str] | None = None
        for folder in self.folders.values():
            rel = folder.rel(path)
            if rel is not None and not rel.startswith("../") and (
                    best is None or len(folder.root.parts) > len(best[0].root.parts)):
                best = (folder, rel)
        return best

    def add_folder(self, uri: str, start: bool = True) -> Folder | None:
        if self.closed or self.folder_by_uri(uri) is not None:
            return None
        path = _uri_path(uri)
        if path is None or not path.is_dir():
            self.warn([f"workspace folder {uri} is not a local folder; not indexed"])
            return None
        folder = Folder(uri, path, self.loop)
        self.folders[uri] = folder
        if start:
            self.start_folder(folder)
        return folder

    def start_folder(self, folder: Folder, cancel: threading.Event | None = None) -> None:
        folder.start_task = folder.spawn(self._start_folder(folder, cancel))
        self._relocate_documents()

    async def remove_folder(self, uri: str) -> None:
        folder = self.folder_by_uri(uri)
        if folder is None:
            return
        self.folders.pop(folder.uri, None)
        await self._close_folder(folder)
        self._relocate_documents()

    def _relocate_documents(self) -> None:
        """Open documents follow folder changes: a document now inside a (new or innermost)
        folder is indexed there; one outside every folder is no longer tracked."""
        for document in list(self.ls.workspace.text_documents.values()):
            uri = document.uri
            doc = self.docs.get(uri)
            found = self.locate(uri)
            if found is None:
                if doc is not None:
                    self.debouncer.cancel(uri)
                    del self.docs[uri]
                continue
            folder = found[0]
            if doc is None or doc.folder_uri != folder.uri:
                self.did_open(uri, document.version or 0)

    async def restart_folder(self, folder: Folder, rebuild: bool = False,
                             cancel: threading.Event | None = None) -> Folder | None:
        """Close the folder's index and open it again (new settings, rebuild, or retry)."""
        self.folders.pop(folder.uri, None)
        await self._close_folder(folder)
        if rebuild:
            from .store import remove_index

            path = index_dir_of(folder_settings(self.settings, folder.root), folder.root)
            await self._run(self._readers, remove_index, path)
        for key, fut in list(self._models.items()):  # retry a model that failed to load
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                del self._models[key]
        new = self.add_folder(folder.uri, start=False)
        if new is not None:
            self.start_folder(new, cancel)
        return new

    def _model(self, settings: Settings) -> asyncio.Future[ModelEncoder]:
        key = (settings.model, settings.resolved_threads())
        fut = self._models.get(key)
        if fut is None:
            fut = self._models[key] = asyncio.ensure_future(
                self._run(self._readers, _load_model, settings))
            fut.add_done_callback(_retrieve)
        return fut

    async def _start_folder(self, folder: Folder, cancel: threading.Event | None = None) -> None:
        settings = folder.settings = folder_settings(self.settings, folder.root)
        try:
            model = await asyncio.shield(self._model(self.settings))
            index = await self._run(folder.writer, _open_job, folder, settings, model)
        except Exception as err:  # noqa: BLE001 (any failure: the folder is marked and logged)
            if folder.stop.is_set():
                return
            self._folder_failed(folder, err)
            return
        if index is None or folder.stop.is_set():
            return
        folder.opened.set_result(index)
        if index.store.rebuild_reason:
            log.info("%s: vector index rebuilt (%s)", folder.name, index.store.rebuild_reason)
        folder.spawn(self._deep_loop(folder))
        await self._start_watching(folder)
        await self.scan(folder, cancel)

    def _folder_failed(self, folder: Folder, err: BaseException) -> None:
        if isinstance(err, MoseError):
            message = str(err)
        else:
            log.error("%s: cannot open the index", folder.name, exc_info=err)
            message = f"internal error: {type(err).__name__}: {err}"
        folder.state, folder.error = "error", message
        self.error(f"{folder.name}: {message}")
        if not folder.opened.done():
            folder.opened.set_exception(RequestFailed(f"{folder.name}: {message}"))

    async def _close_folder(self, folder: Folder) -> None:
        folder.stop.set()
        folder.scan_cancel.set()
        await self._stop_watching(folder)
        for task in list(folder.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._debouncer is not None:
            for doc in self.docs.values():
                if doc.folder_uri == folder.uri:
                    self._debouncer.cancel(doc.uri)
        try:
            await self._run(folder.editor, lambda: None)  # edits in flight are done
            await self._run(folder.writer, _close_job, folder)  # after any scan or batch
        except Exception:
            log.exception("%s: error while closing the index", folder.name)
        folder.writer.shutdown(wait=False)
        folder.editor.shutdown(wait=False)
        if not folder.opened.done():
            folder.opened.set_exception(RequestFailed(f"{folder.name}: the folder was closed"))
        folder.state = "closed"

    async def scan(self, folder: Folder, cancel: threading.Event | None = None
                   ) -> ScanReport | None:
        """Bring the folder's index up to date with the disk, with a progress bar. The scan
        stops early when ``cancel`` is set (or the client cancels the progress, or the
        folder closes)."""
        async with folder.scan_lock:
            if folder.stop.is_set() or folder.index is None:
                return None
            cancel = folder.scan_cancel = cancel or threading.Event()
            folder.state = "indexing"
            bar = await self.progress(f"mose: indexing {folder.name}", "scanning files",
                                      cancellable=True, on_cancel=cancel.set)

            def on_progress(p: Progress) -> None:
                bar.report_threadsafe(p.percent, f"{p.done}/{p.total} files")

            try:
                report = await self._run(folder.writer, folder.index.scan, on_progress, cancel)
            except Exception as err:  # noqa: BLE001 (marked as the folder's error, logged)
                bar.end("failed")
                if not folder.stop.is_set():
                    self._folder_failed(folder, err)
                return None
            folder.last_scan = report
            if cancel.is_set():
                folder.state = "cancelled"
                bar.end("cancelled (mose.reindex resumes)")
            else:
                folder.state = "ready"
                bar.end(f"{report.files_indexed} files indexed, {report.chunks_embedded} chunks "
                        f"embedded in {report.seconds:.1f}s")
            log.info("%s: scan %s", folder.name, report)
        self._reapply_overlays(folder)
        folder.deep_wake.set()
        return report

    # -- watching

    async def _start_watching(self, folder: Folder) -> None:
        delay = self.settings.debounce_ms / 1000
        if folder.batcher is None:
            folder.batcher = PathBatcher(self.loop, delay, max(delay, BATCH_MAX_DELAY_S),
                                         lambda rels: folder.spawn(self._apply_paths(folder, rels)))
        folder.watch_mode = self.watch_mode()
        if folder.watch_mode != "watchdog":
            return
        assert folder.settings is not None
        watcher = FolderWatcher(folder.path, folder.settings, self.loop,
                                lambda rels: self.paths_changed(folder, rels),
                                skip=[index_dir_of(folder.settings, folder.root)])
        try:
            await self._run(self._readers, watcher.start)
        except OSError as err:
            folder.watch_mode = "off"
            self.warn([(f"{folder.name}: cannot watch files for changes ({err}); run "
                        "mose.reindex after changes on disk, or raise the inotify watch limit")])
            return
        if folder.stop.is_set():
            watcher.stop()
            return
        folder.watcher = watcher

    async def _stop_watching(self, folder: Folder) -> None:
        watcher, folder.watcher = folder.watcher, None
        if watcher is not None:
            await self._run(self._readers, watcher.stop)
        if folder.batcher is not None and folder.stop.is_set():
            folder.batcher.close()

    def paths_changed(self, folder: Folder, rels: Iterable[str]) -> None:
        """File events for ``folder`` (from watchdog or the client), on the loop."""
        if folder.stop.is_set() or folder.batcher is None:
            return
        folder.touch()
        folder.batcher.add(rels)

    def watched_files_changed(self, uris: Iterable[str]) -> None:
        by_folder: dict[str, list[str]] = {}
        for uri in uris:
            found = self.locate(uri)
            if found is not None:
                by_folder.setdefault(found[0].uri, []).append(found[1])
        for folder_uri, rels in by_folder.items():
            self.paths_changed(self.folders[folder_uri], rels)

    async def _apply_paths(self, folder: Folder, rels: set[str]) -> None:
        try:
            await asyncio.shield(folder.opened)
        except RequestFailed:  # the folder could not be opened (the user was told)
            return
        if any(is_ignore_file(r) for r in rels):
            if folder.index is not None:
                folder.index.reload_rules()
            folder._rules = None
            await self.scan(folder)  # the set of indexed files may have changed anywhere
            return
        overlays = {d.rel for d in self.docs.values()
                    if d.folder_uri == folder.uri and d.overlay}
        folder.paths_in_flight += len(rels)

        def job() -> list[str]:
            index = folder.index
            if index is None or folder.stop.is_set():
                return []
            paths = [p for p in _expand(index, rels) if p not in overlays]
            report = index.update_paths(paths)
            log.info("%s: %d paths updated: %s", folder.name, len(paths), report)
            return paths

        try:
            paths = await self._run(folder.writer, job)
        finally:
            folder.paths_in_flight -= len(rels)
        self._reapply_overlays(folder, set(paths))
        folder.deep_wake.set()

    # -- background work

    async def _until_idle(self, folder: Folder) -> None:
        while True:
            quiet = time.monotonic() - max(folder.last_activity, self.last_request)
            busy = (folder.paths_in_flight or (folder.batcher and folder.batcher.pending)
                    or any(self.debouncer.pending(d.uri) for d in self.docs.values()
                           if d.folder_uri == folder.uri))
            if quiet >= IDLE_S and not busy and not folder.scan_lock.locked():
                return
            await asyncio.sleep(max(0.05, IDLE_S - quiet))

    async def _deep_loop(self, folder: Folder) -> None:
        """Fill deep-exit vectors in small steps whenever the folder is idle."""
        while not folder.stop.is_set():
            await folder.deep_wake.wait()
            folder.deep_wake.clear()
            if not self.settings.background_deep or folder.index is None \
                    or folder.state not in ("ready", "cancelled"):
                continue
            bar: ProgressBar | None = None
            last: list[Progress] = []
            try:
                while not folder.stop.is_set() and self.settings.background_deep:
                    await self._until_idle(folder)
                    index = folder.index
                    if index is None:
                        break
                    done = await self._run(folder.writer, index.fill_deep, DEEP_STEP,
                                           folder.stop, last.append)
                    if not done:
                        break
                    folder.deep_filling = True
                    if bar is None:
                        bar = await self.progress(f"mose: deep vectors {folder.name}")
                    if last:
                        p = last[-1]
                        bar.report(p.percent, f"{p.done}/{p.total} chunks")
                        last.clear()
            finally:
                folder.deep_filling = False
                if bar is not None:
                    bar.end("done" if not folder.stop.is_set() else "stopped")
            if folder.index is not None and not folder.stop.is_set():
                await self._run(folder.writer, folder.index.store.flush)

    async def _flusher(self) -> None:
        while not self.closed:
            await asyncio.sleep(FLUSH_CHECK_S)
            for folder in list(self.folders.values()):
                index = folder.index
                if index is not None and not folder.stop.is_set() and index.store.dirty:
                    try:
                        await self._run(folder.writer, index.store.maybe_flush,
                                        FLUSH_MIN_INTERVAL_S)
                    except Exception:
                        log.exception("%s: periodic flush failed", folder.name)

    # -- documents

    def did_open(self, uri: str, version: int) -> None:
        found = self.locate(uri)
        if found is None:
            return  # outside every workspace folder
        folder, rel = found
        self.docs[uri] = Doc(uri, folder.uri, rel, version)
        folder.touch()
        self.debouncer.schedule(uri, lambda: self._index_doc(uri), 0.0)

    def did_change(self, uri: str, version: int) -> None:
        doc = self.docs.get(uri)
        if doc is None:
            return
        doc.version = version
        folder = self.folders.get(doc.folder_uri)
        if folder is not None:
            folder.touch()
        self.debouncer.schedule(uri, lambda: self._index_doc(uri))

    def did_close(self, uri: str) -> None:
        self.debouncer.cancel(uri)
        doc = self.docs.pop(uri, None)
        folder = self.folders.get(doc.folder_uri) if doc else None
        if doc is None or folder is None or not doc.overlay:
            return
        folder.touch()

        def restore() -> None:
            if folder.index is not None and not folder.stop.is_set():
                folder.index.update_paths([doc.rel])  # the disk version comes back

        async def run() -> None:
            await self._run(folder.editor, restore)
            folder.deep_wake.set()

        folder.spawn(run())

    def _text(self, uri: str) -> str | None:
        document = self.ls.workspace.text_documents.get(unquote(uri)) \
            or self.ls.workspace.text_documents.get(uri)
        return None if document is None else document.source

    async def _index_doc(self, uri: str) -> None:
        doc = self.docs.get(uri)
        folder = self.folders.get(doc.folder_uri) if doc else None
        if doc is None or folder is None:
            return
        try:
            await asyncio.shield(folder.opened)
        except RequestFailed:  # the folder could not be opened (the user was told)
            return
        version, text = doc.version, self._text(uri)
        if text is None:
            return

        def job() -> int | None:
            index = folder.index
            if index is None or folder.stop.is_set() or self.docs.get(uri) is not doc \
                    or doc.version != version:
                return None  # closed, or a newer version is coming: drop this one
            if folder.ignored(doc.rel) or len(text.encode("utf-8")) > index.settings.max_file_bytes:
                return None  # the scan would not index it either
            if not doc.overlay and _same_as_disk(folder.root / doc.rel, text):
                return 0  # the buffer is the disk file: the index already has it
            n = index.update_text(doc.rel, text)
            doc.overlay = True
            return n

        chunks = await self._run(folder.editor, job)
        if chunks is None:
            return
        doc.indexed_version = version
        folder.deep_wake.set()
        self.ls.protocol.notify(DOCUMENT_INDEXED, {"uri": uri, "version": version,
                                                   "chunks": chunks})

    def _reapply_overlays(self, folder: Folder, rels: set[str] | None = None) -> None:
        """Buffers whose file a scan or batch just rewrote from disk go back in."""
        for doc in self.docs.values():
            if doc.folder_uri == folder.uri and doc.overlay and (rels is None or doc.rel in rels):
                doc.indexed_version = None
                self.debouncer.schedule(doc.uri, functools.partial(self._index_doc, doc.uri), 0.0)

    # -- requests

    def _scope(self, folder_uri: str | None, command: str) -> list[Folder]:
        if folder_uri is not None:
            folder = self.folder_by_uri(folder_uri)
            if folder is None:
                raise ParamsError(f"{command}: {folder_uri!r} is not a workspace folder")
            return [folder]
        if not self.folders:
            raise RequestFailed(f"{command}: no workspace folder is open")
        return list(self.folders.values())

    async def _ready(self, folders: list[Folder], command: str) -> list[Folder]:
        """The folders whose index is open (waiting for the ones still loading)."""
        ready, errors = [], []
        for folder in folders:
            try:
                await asyncio.shield(folder.opened)
                ready.append(folder)
            except RequestFailed as err:
                errors.append(err.message)
        if not ready:
            raise RequestFailed(f"{command}: {'; '.join(errors) or 'no folder is ready'}")
        return ready

    def _results(self, pairs: list[tuple[Folder, Hit]], k: int) -> list[Result]:
        def rank(pair: tuple[Folder, Hit]) -> tuple[int, float]:
            folder, hit = pair
            deep = folder.index is not None and hit.exit == folder.index.rerank_exit
            return (0 if deep else 1, -hit.score)

        out = []
        for folder, hit in sorted(pairs, key=rank)[:k]:
            out.append(Result(folder.uri_of(hit.path), hit.path, folder.uri, hit.start_line,
                              hit.end_line, hit.symbol, hit.kind, hit.language, hit.score,
                              hit.exit, snippet(hit.text)))
        return out

    def _search_job(self, folders: list[Folder], query: Query, cancel: threading.Event,
                    keep: Callable[[Folder, Hit], bool] | None = None) -> list[tuple[Folder, Hit]]:
        pairs = []
        for folder in folders:
            if cancel.is_set():
                raise Cancelled()
            searcher = folder.searcher
            if searcher is None or folder.stop.is_set():
                continue
            pairs += [(folder, h) for h in searcher.search(query) if keep is None or keep(folder, h)]
        return pairs

    async def search(self, args: SearchArgs, cancel: threading.Event) -> SearchResponse:
        from .searcher import Query

        self.last_request = time.monotonic()
        folders = await self._ready(self._scope(args.filters.folder, SearchArgs.COMMAND),
                                    SearchArgs.COMMAND)
        k = args.filters.k or self.settings.limit
        query = Query(args.query, args.kind, k=k, languages=args.filters.languages,
                      path_glob=args.filters.path_glob)
        pairs = await self._run(self._readers, self._search_job, folders, query, cancel)
        return SearchResponse(tuple(self._results(pairs, k)), self._incomplete(folders))

    def _incomplete(self, folders: list[Folder]) -> tuple[str, ...]:
        return tuple(f.uri for f in folders
                     if f.state == "cancelled" or (f.state == "indexing" and f.last_scan is None))

    async def similar(self, args: SimilarArgs, cancel: threading.Event) -> SearchResponse:
        from .searcher import Query

        self.last_request = time.monotonic()
        found = self.locate(args.uri)
        if found is None:
            raise ParamsError(f"mose.similar: {args.uri} is not inside a workspace folder")
        own, rel = found
        folders = await self._ready(self._scope(args.filters.folder, SimilarArgs.COMMAND),
                                    SimilarArgs.COMMAND)
        buffer = self._text(args.uri) if args.uri in self.docs else None
        k = args.filters.k or self.settings.limit
        max_bytes = self.settings.max_file_bytes

        def job() -> list[tuple[Folder, Hit]]:
            text = buffer
            if text is None:
                from .indexer import read_regular

                try:  # a regular file inside the folder only, and no more than is indexed
                    raw = read_regular(own.root / rel, own.root, max_bytes + 1)
                except OSError as err:
                    raise ParamsError(f"mose.similar: cannot read {rel}: "
                                      f"{err.strerror or err}") from err
                text = raw.decode("utf-8", errors="replace")
            q = _query_from_text(rel, text, args, max_bytes)
            extra = 8 if q.lines is not None else min(200, len(text.splitlines()) // 5 + 8)
            vectors, vectors_model = {}, ""
            searcher = own.searcher
            if q.content_hash is not None and searcher is not None:
                # The chunk as indexed (on disk or from the buffer): its stored vectors
                # are the query's, so it is not encoded again.
                stored = searcher.stored_chunk(rel, q.content_hash, q.text)
                if stored is not None:
                    vectors, vectors_model = searcher.stored_vectors(stored), searcher.model_id
            query = Query(q.text, "code", lang=q.lang, k=k + extra,
                          languages=args.filters.languages, path_glob=args.filters.path_glob,
                          vectors=vectors, vectors_model=vectors_model)

            def keep(folder: Folder, hit: Hit) -> bool:
                if folder is not own or hit.path != rel:
                    return True
                if q.lines is None:
                    return False
                return hit.end_line < q.lines[0] or hit.start_line > q.lines[1]

            return self._search_job(folders, query, cancel, keep)

        pairs = await self._run(self._readers, job)
        return SearchResponse(tuple(self._results(pairs, k)), self._incomplete(folders))

    async def status(self, args: StatusArgs) -> dict[str, Any]:
        folders = (self._scope(args.folder, StatusArgs.COMMAND) if args.folder
                   else list(self.folders.values()))
        out = []
        for folder in folders:
            data = self._folder_status(folder)
            if folder.index is not None and not folder.stop.is_set():
                data.update(await self._run(self._readers, _index_status, folder.index))
            out.append(data)
        return {"version": __version__, "settings": self.config.to_json(),
                "warnings": list(self.config.warnings), "folders": out}

    def _folder_status(self, folder: Folder) -> dict[str, Any]:
        """What the loop knows about a folder (the index's counts come from a thread)."""
        docs = [d for d in self.docs.values() if d.folder_uri == folder.uri]
        settings = folder.settings or folder_settings(self.settings, folder.root)
        data: dict[str, Any] = {
            "uri": folder.uri, "name": folder.name, "state": folder.state, "error": folder.error,
            "indexDir": str(index_dir_of(settings, folder.root)), "watcher": folder.watch_mode,
            "files": None, "indexedFiles": None, "chunks": None,
            "pending": {"paths": folder.paths_in_flight
                        + (folder.batcher.pending if folder.batcher else 0),
                        "documents": sum(1 for d in docs if d.indexed_version != d.version)},
            "openDocuments": sum(1 for d in docs if d.overlay),
            "deepCoverage": None, "deepFilling": folder.deep_filling, "model": None,
            "skipped": {}, "skippedFiles": [],
            "lastScan": _scan_json(folder.last_scan),
        }
        return data

    async def reindex(self, args: ReindexArgs, cancel: threading.Event) -> dict[str, Any]:
        """Scan again (``cancel``, set on $/cancelRequest, stops the scan: the folder is left
        "cancelled" and a later reindex resumes it)."""
        folders = self._scope(args.folder, ReindexArgs.COMMAND)
        out = []
        for folder in folders:
            if args.rebuild or folder.state == "error":
                new = await self.restart_folder(folder, rebuild=args.rebuild, cancel=cancel)
                if new is None:
                    raise RequestFailed(f"mose.reindex: {folder.uri} cannot be opened")
                if new.start_task is not None:
                    await asyncio.shield(new.start_task)
                folder = new
            else:
                try:
                    await asyncio.shield(folder.opened)
                except RequestFailed as err:
                    raise RequestFailed(f"mose.reindex: {err.message}") from None
                await self.scan(folder, cancel)
            if folder.state == "error":
                raise RequestFailed(f"mose.reindex: {folder.name}: {folder.error}")
            out.append({"uri": folder.uri, "lastScan": _scan_json(folder.last_scan)})
        return {"folders": out}

    async def symbols(self, query: str, cancel: threading.Event) -> list[lsp.WorkspaceSymbol]:
        if not query.strip() or not self.folders:
            return []
        response = await self.search(SearchArgs(query, "text", Filters()), cancel)
        return [_symbol(r) for r in response.results]

    # -- cancellation

    def on_cancel(self, msg_id: Any) -> None:
        entry = self._cancels.pop(msg_id, None)
        if entry is None:  # not started yet (or done): remember it for a moment
            self._cancelled_early.append(msg_id)
            return
        task, flag = entry
        flag.set()
        if task is not None:
            task.cancel()


def _uri_path(uri: str) -> Path | None:
    if not uri.startswith("file:"):
        return None
    path = to_fs_path(uri)
    return Path(os.path.abspath(path)) if path else None


def _index_status(index: WorkspaceIndex) -> dict[str, Any]:
    try:
        stats = index.store.stats()
        skipped = [s for s in index.store.all_files() if s.skipped]
    except MoseError as err:  # closed meanwhile
        return {"error": str(err)}
    manifest = index.model.manifest
    return {
        "files": stats.files, "indexedFiles": stats.indexed_files, "chunks": stats.chunks,
        "deepCoverage": stats.deep_coverage,
        "model": {"name": manifest.name, "version": manifest.version,
                  "path": str(index.model.model_dir.path), "indexExit": index.index_exit,
                  "rerankExit": index.rerank_exit},
        "skipped": dict(stats.skipped),
        "skippedFiles": [{"path": s.path, "code": s.skip_code, "message": s.skip_message}
                         for s in skipped[:SKIPPED_LISTED]],
    }


def _scan_json(report: ScanReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    data = camel_dict({k: v for k, v in report.__dict__.items() if k != "skipped"})
    data["seconds"] = round(report.seconds, 3)
    return data


_SYMBOL_KINDS = {
    "function": lsp.SymbolKind.Function, "method": lsp.SymbolKind.Method,
    "class": lsp.SymbolKind.Class, "interface": lsp.SymbolKind.Interface,
    "trait": lsp.SymbolKind.Interface, "struct": lsp.SymbolKind.Struct,
    "record": lsp.SymbolKind.Struct, "union": lsp.SymbolKind.Struct,
    "enum": lsp.SymbolKind.Enum, "property": lsp.SymbolKind.Property,
    "module": lsp.SymbolKind.Module, "type": lsp.SymbolKind.TypeParameter,
    "impl": lsp.SymbolKind.Class, "macro": lsp.SymbolKind.Function,
}


def _symbol(result: Result) -> lsp.WorkspaceSymbol:
    rng = lsp_range(result.start_line, result.end_line)
    return lsp.WorkspaceSymbol(
        name=result.symbol or f"{result.path}:{result.start_line + 1}",
        kind=_SYMBOL_KINDS.get(result.kind or "", lsp.SymbolKind.Namespace),
        location=lsp.Location(uri=result.uri, range=lsp.Range(
            start=lsp.Position(**rng["start"]), end=lsp.Position(**rng["end"]))),
        container_name=result.path,
        data={"score": round(result.score, 6), "exit": result.exit},
    )


# ----------------------------------------------------------------------------- LSP edge


class MoseProtocol(LanguageServerProtocol):
    """pygls's protocol, telling the service about ``$/cancelRequest`` (pygls alone cannot
    stop a command: it runs in a task of its own, and work in threads needs a flag), and not
    keeping finished handlers' futures (see :meth:`_execute_handler`)."""

    def _execute_handler(self, msg_id: Any, handler: Any, callback: Any,
                         args: Any = None, kwargs: Any = None) -> None:
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        # pygls runs the user's handler of a built-in method (every LSP notification and
        # request, workspace/executeCommand included) under a fresh uuid in
        # ``_request_futures`` and never removes it, so each one kept its future and result
        # (a whole search response) for good: the soak's steady memory growth. Forget a
        # future once it is done (real request ids are also removed by pygls on reply).
        future = self._request_futures.get(msg_id)
        if future is not None:
            future.add_done_callback(functools.partial(self._forget, msg_id))

    def _forget(self, msg_id: Any, future: Any) -> None:
        # A thread handler's future calls back from its worker thread: pop, never del.
        if self._request_futures.get(msg_id) is future:
            self._request_futures.pop(msg_id, None)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        super()._handle_cancel_notification(msg_id)
        service = getattr(self._server, "service", None)
        if service is not None:
            service.on_cancel(msg_id)


class MoseLanguageServer(LanguageServer):
    def __init__(self, settings: Settings):
        super().__init__("mose", __version__, protocol_cls=MoseProtocol,
                         text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.service = MoseService(self, settings)

    async def guarded(self, name: str, work: Callable[[threading.Event], Any]) -> Any:
        """Run a request: register its cancel flag, turn errors into JSON-RPC errors."""
        flag = threading.Event()
        msg_id = self.protocol.msg_id
        if msg_id is not None:
            if msg_id in self.service._cancelled_early:  # cancelled before it started
                raise JsonRpcRequestCancelled(f"{name}: cancelled")
            self.service._cancels[msg_id] = (asyncio.current_task(), flag)
        try:
            return await work(flag)
        except ParamsError as err:
            log.info("invalid params: %s", err)
            raise JsonRpcInvalidParams(str(err)) from None
        except Cancelled:
            raise JsonRpcRequestCancelled(f"{name}: cancelled") from None
        except asyncio.CancelledError:
            flag.set()
            raise
        except JsonRpcException:
            raise
        except MoseError as err:
            log.warning("%s failed: %s", name, err)
            raise RequestFailed(f"{name}: {err}") from None
        except Exception as err:
            log.exception("%s failed", name)
            raise JsonRpcInternalError(f"{name}: internal error: {type(err).__name__}: {err}") \
                from None
        finally:
            if msg_id is not None:
                self.service._cancels.pop(msg_id, None)


def create_server(settings: Settings | None = None) -> MoseLanguageServer:
    """A fresh language server; ``settings`` are the defaults that client settings override."""
    server = MoseLanguageServer(settings or Settings())
    svc = server.service

    @server.feature(lsp.INITIALIZE)
    def initialize(ls: MoseLanguageServer, params: lsp.InitializeParams) -> None:
        svc.initialize(params)

    @server.feature(lsp.INITIALIZED)
    async def initialized(ls: MoseLanguageServer, params: lsp.InitializedParams) -> None:
        await svc.initialized()

    @server.feature(lsp.SHUTDOWN)
    async def shutdown(ls: MoseLanguageServer, params: Any) -> None:
        await svc.shutdown()

    @server.feature(lsp.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    async def folders_changed(ls: MoseLanguageServer,
                              params: lsp.DidChangeWorkspaceFoldersParams) -> None:
        for removed in params.event.removed:
            await svc.remove_folder(removed.uri)
        for added in params.event.added:
            svc.add_folder(added.uri)

    @server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def configuration_changed(ls: MoseLanguageServer,
                                    params: lsp.DidChangeConfigurationParams) -> None:
        await svc.settings_pushed(params.settings)

    @server.feature(lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def watched_files(ls: MoseLanguageServer, params: lsp.DidChangeWatchedFilesParams) -> None:
        svc.watched_files_changed(change.uri for change in params.changes)

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: MoseLanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
        svc.did_open(params.text_document.uri, params.text_document.version)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: MoseLanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
        svc.did_change(params.text_document.uri, params.text_document.version)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: MoseLanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
        svc.did_close(params.text_document.uri)

    @server.feature(lsp.WORKSPACE_SYMBOL, lsp.WorkspaceSymbolOptions(resolve_provider=False))
    async def workspace_symbol(ls: MoseLanguageServer,
                               params: lsp.WorkspaceSymbolParams) -> list[lsp.WorkspaceSymbol]:
        return await ls.guarded("workspace/symbol",
                                lambda flag: svc.symbols(params.query, flag))

    @server.command(SearchArgs.COMMAND)
    async def search(ls: MoseLanguageServer, *args: Any) -> dict[str, Any]:
        async def work(flag: threading.Event) -> dict[str, Any]:
            return (await svc.search(SearchArgs.parse(args), flag)).to_json()

        return await ls.guarded(SearchArgs.COMMAND, work)

    @server.command(SimilarArgs.COMMAND)
    async def similar(ls: MoseLanguageServer, *args: Any) -> dict[str, Any]:
        async def work(flag: threading.Event) -> dict[str, Any]:
            return (await svc.similar(SimilarArgs.parse(args), flag)).to_json()

        return await ls.guarded(SimilarArgs.COMMAND, work)

    @server.command(StatusArgs.COMMAND)
    async def status(ls: MoseLanguageServer, *args: Any) -> dict[str, Any]:
        return await ls.guarded(StatusArgs.COMMAND,
                                lambda flag: svc.status(StatusArgs.parse(args)))

    @server.command(ReindexArgs.COMMAND)
    async def reindex(ls: MoseLanguageServer, *args: Any) -> dict[str, Any]:
        return await ls.guarded(ReindexArgs.COMMAND,
                                lambda flag: svc.reindex(ReindexArgs.parse(args), flag))

    return server
