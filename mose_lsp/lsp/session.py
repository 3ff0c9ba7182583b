"""The server's state for one client: settings, folders, documents and requests in flight.

:class:`MoseService` joins the rooms of :mod:`mose_lsp.lsp` (settings, folders, documents,
requests); this module holds what they share: the loop, the worker pools, telling the user,
``initialize``/``initialized``, closing everything, and cancellation.

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
``window/workDoneProgress/cancel`` and when the server closes.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from lsprotocol import types as lsp

from ..config import Settings
from ..protocol import Config, notifications_wanted, resolve_config
from ..watcher import KeyedDebouncer
from .documents import Documents
from .folders import Doc, Folder
from .progress import ProgressBar, open_progress
from .requests import Requests
from .settings_sync import SettingsSync
from .workspace import Workspace

if TYPE_CHECKING:
    from pygls.lsp.server import LanguageServer

    from ..encoder import ModelEncoder
    from ..service.core import Service

log = logging.getLogger(__name__)
T = TypeVar("T")

CLOSE_TIMEOUT_S = 20.0  # closing every folder's index; a stuck job cannot hold the editor longer


class MoseService(SettingsSync, Workspace, Documents, Requests):
    """Folders, documents and requests; called by the thin LSP handlers on the loop."""

    def __init__(self, ls: LanguageServer, base: Settings):
        self.ls = ls
        self.base = base
        self.init_options: Any = None
        self.client_settings: Any = None
        self.config: Config = resolve_config(base)
        self.folders: dict[str, Folder] = {}
        self.docs: dict[str, Doc] = {}
        self.notifications = False  # the client opted in to mose/* notifications
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
        self._closing: asyncio.Future[bool] | None = None
        self.last_request = 0.0
        self.closed = False
        self._service: Service | None = None
        self._service_lock = threading.Lock()

    # -- shared helpers

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def get_service(self) -> Service:
        """The service layer (:mod:`mose_lsp.service`) over the folders' open indexes: it
        answers mose.search, mose.similar, mose.status and the scans, on the server's lanes.
        Made on first use, by a lane (never the loop: it imports the index code)."""
        with self._service_lock:
            if self._service is None:
                from ..service.core import Service

                self._service = Service(self.base)
            return self._service

    @property
    def settings(self) -> Settings:
        return self.config.settings

    @property
    def debouncer(self) -> KeyedDebouncer[str]:
        if self._debouncer is None:
            self._debouncer = KeyedDebouncer(self.loop, self.settings.debounce_ms / 1000)
        return self._debouncer

    async def run(self, executor: Executor, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
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
        """Tell the user (once per distinct message); the log handler copies the warning to
        ``window/logMessage``."""
        new = [m for m in messages if m not in self._shown]
        if not new:
            return
        self._shown.update(new)
        for m in new:
            log.warning("%s", m)
        self.ls.window_show_message(lsp.ShowMessageParams(
            type=lsp.MessageType.Warning, message="mose: " + "; ".join(new)))

    def error(self, message: str) -> None:
        log.error("%s", message)
        self.ls.window_show_message(lsp.ShowMessageParams(type=lsp.MessageType.Error,
                                                          message=f"mose: {message}"))

    def notify(self, method: str, params: Any) -> None:
        """A ``mose/*`` notification, sent only to a client that opted in (it is outside the
        LSP spec, and some clients warn about every unknown method)."""
        if self.notifications and not self.closed:
            self.ls.protocol.notify(method, params)

    async def progress(self, title: str, message: str = "", cancellable: bool = False,
                       on_cancel: Callable[[], None] | None = None) -> ProgressBar:
        return await open_progress(self.ls, title, message, cancellable, on_cancel)

    # -- lifecycle

    def initialize(self, params: lsp.InitializeParams) -> None:
        """Answered at once: folders are only noted here, and the model loads and the folders
        open after ``initialized`` (with progress), off the loop."""
        self._loop = asyncio.get_running_loop()
        self.init_options = params.initialization_options
        self.notifications = notifications_wanted(self.init_options, params.capabilities)
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
            await self.register(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION,
                                lsp.DidChangeConfigurationRegistrationOptions(section="mose"))
        await self.register_file_watching()
        for folder in self._initial:
            if self.folders.get(folder.uri) is folder:
                self.start_folder(folder)
        self._initial = []
        self.spawn(self.flusher())

    def close(self) -> asyncio.Future[bool]:
        """Close every folder's index (flushed, consistent on disk), once: later calls get
        the same future. Bounded by :data:`CLOSE_TIMEOUT_S`; the future's result is whether
        all closed in time."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close_all())
        return self._closing

    async def _close_all(self) -> bool:
        self.closed = True
        if self._debouncer is not None:
            self._debouncer.close()
        for task in list(self._tasks):
            task.cancel()
        folders = list(self.folders.values())
        started = time.monotonic()
        clean = True
        try:
            # The folders stay listed until closed: a caller that comes later (end of input
            # after `shutdown`) waits for this same close instead of finding nothing to do.
            await asyncio.wait_for(asyncio.gather(
                *(self.close_folder(f) for f in folders), return_exceptions=True),
                CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            clean = False
            log.error("the indexes did not close within %.0fs: %s", CLOSE_TIMEOUT_S,
                      ", ".join(f.name for f in folders if f.state != "closed"))
        self.folders.clear()
        self._readers.shutdown(wait=False, cancel_futures=True)
        log.info("%d folder(s) closed in %.2fs", len(folders), time.monotonic() - started)
        return clean

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
