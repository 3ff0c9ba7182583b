"""Workspace folders: opening and closing their indexes, scans, file watching, and the
background work (deep-vector pass, periodic flushes) on each folder's writer lane."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import MoseError
from ..watcher import FolderWatcher, PathBatcher, is_ignore_file
from .folders import (
    Folder,
    close_job,
    expand,
    folder_settings,
    index_dir_of,
    load_model,
    open_job,
    retrieve,
    uri_path,
)
from .progress import ProgressBar
from .rpc import RequestFailed

if TYPE_CHECKING:
    from ..encoder import ModelEncoder
    from ..indexer import Progress
    from ..service.types import ReindexResult

log = logging.getLogger(__name__)

# Chunks per background deep-fill step: bounds how long an edit, and closing the folder
# (`shutdown`: some clients kill the server 1.5 s after asking), wait behind it (~25 ms each
# on 2 cores, more on a busy machine).
DEEP_STEP = 8
IDLE_S = 1.0  # quiet time (no edit, event or search) before the deep pass resumes
FLUSH_CHECK_S = 30.0  # how often dirty vector indexes are considered for saving
FLUSH_MIN_INTERVAL_S = 60.0  # ... and the least time between two saves of one index
BATCH_MAX_DELAY_S = 2.0  # a stream of file events is handed over at least this often


class Workspace:
    """Mixed into :class:`~mose_lsp.lsp.session.MoseService`: the folders' life."""

    def folder_by_uri(self, uri: str) -> Folder | None:
        if uri in self.folders:
            return self.folders[uri]
        path = uri_path(uri)
        if path is None:
            return None
        for folder in self.folders.values():
            if path == folder.path or path == folder.root or path.resolve() == folder.root:
                return folder
        return None

    def locate(self, uri: str) -> tuple[Folder, str] | None:
        """The folder holding the document ``uri`` (the innermost one) and its relative path."""
        path = uri_path(uri)
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
        path = uri_path(uri)
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
        self.relocate_documents()

    async def remove_folder(self, uri: str) -> None:
        folder = self.folder_by_uri(uri)
        if folder is None:
            return
        self.folders.pop(folder.uri, None)
        await self.close_folder(folder)
        self.relocate_documents()

    async def restart_folder(self, folder: Folder, rebuild: bool = False,
                             cancel: threading.Event | None = None) -> Folder | None:
        """Close the folder's index and open it again (new settings, rebuild, or retry)."""
        self.folders.pop(folder.uri, None)
        await self.close_folder(folder)
        if rebuild:
            from ..store import remove_index

            path = index_dir_of(folder_settings(self.settings, folder.root), folder.root)
            await self.run(self._readers, remove_index, path)
        for key, fut in list(self._models.items()):  # retry a model that failed to load
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                del self._models[key]
        new = self.add_folder(folder.uri, start=False)
        if new is not None:
            self.start_folder(new, cancel)
        return new

    def model_for(self, settings: Settings) -> asyncio.Future[ModelEncoder]:
        """The encoder of ``settings`` (loaded once, on a reader thread)."""
        key = (settings.model, settings.resolved_threads())
        fut = self._models.get(key)
        if fut is None:
            fut = self._models[key] = asyncio.ensure_future(
                self.run(self._readers, load_model, settings))
            fut.add_done_callback(retrieve)
        return fut

    async def _start_folder(self, folder: Folder, cancel: threading.Event | None = None) -> None:
        settings = folder.settings = folder_settings(self.settings, folder.root)
        cancel = cancel or threading.Event()
        loading = self.model_for(self.settings)  # starts now, while the bar is being created
        # The bar shows from the start: loading the model and opening the index come first.
        bar = await self.progress(f"mose: indexing {folder.name}", "loading the model",
                                  cancellable=True, on_cancel=cancel.set)
        try:
            model = await asyncio.shield(loading)
            bar.report(0, "opening the index")
            index = await self.run(folder.writer, open_job, folder, settings, model,
                                   self.get_service)
        except Exception as err:  # noqa: BLE001 (any failure: the folder is marked and logged)
            bar.end("failed")
            if folder.stop.is_set():
                return
            self.folder_failed(folder, err)
            return
        if index is None or folder.stop.is_set():
            bar.end("stopped")
            return
        folder.opened.set_result(index)
        if index.store.rebuild_reason:
            log.info("%s: vector index rebuilt (%s)", folder.name, index.store.rebuild_reason)
        folder.spawn(self._deep_loop(folder))
        await self.start_watching(folder)
        await self.scan(folder, cancel, bar)

    def folder_failed(self, folder: Folder, err: BaseException) -> None:
        if isinstance(err, MoseError):
            message = str(err)
        else:
            log.error("%s: cannot open the index", folder.name, exc_info=err)
            message = f"internal error: {type(err).__name__}: {err}"
        folder.state, folder.error = "error", message
        self.error(f"{folder.name}: {message}")
        if not folder.opened.done():
            folder.opened.set_exception(RequestFailed(f"{folder.name}: {message}"))

    async def close_folder(self, folder: Folder) -> None:
        """Stop the folder's work and close its index (after the scan or batch in flight,
        which notices the stop flag)."""
        folder.stop.set()
        folder.scan_cancel.set()
        await self.stop_watching(folder)
        for task in list(folder.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._debouncer is not None:
            for doc in self.docs.values():
                if doc.folder_uri == folder.uri:
                    self._debouncer.cancel(doc.uri)
        overlays = [d.rel for d in self.docs.values() if d.folder_uri == folder.uri and d.overlay]

        def restore_disk() -> None:  # the index keeps no unsaved buffer once the folder closes
            if folder.index is not None and overlays:
                folder.index.update_paths(overlays)

        try:
            await self.run(folder.editor, restore_disk)  # after the edits in flight
            await self.run(folder.writer, close_job, folder, self.get_service)  # after any scan or batch
        except Exception:
            log.exception("%s: error while closing the index", folder.name)
        folder.writer.shutdown(wait=False)
        folder.editor.shutdown(wait=False)
        if not folder.opened.done():
            folder.opened.set_exception(RequestFailed(f"{folder.name}: the folder was closed"))
        folder.state = "closed"

    async def scan(self, folder: Folder, cancel: threading.Event | None = None,
                   bar: ProgressBar | None = None) -> ReindexResult | None:
        """Bring the folder's index up to date with the disk (``Service.reindex``, on the
        writer lane), with a progress bar. The scan stops early when ``cancel`` is set (or
        the client cancels the progress, or the folder closes)."""
        async with folder.scan_lock:
            workspace = folder.workspace
            if folder.stop.is_set() or folder.index is None or workspace is None:
                if bar is not None:
                    bar.end("stopped")
                return None
            cancel = folder.scan_cancel = cancel or threading.Event()
            folder.state = "indexing"
            if bar is None:
                bar = await self.progress(f"mose: indexing {folder.name}", "scanning files",
                                          cancellable=True, on_cancel=cancel.set)
            else:
                bar.report(0, "scanning files")

            def on_progress(p: Progress) -> None:
                bar.report_threadsafe(p.percent, f"{p.done}/{p.total} files")

            try:
                (report,) = await self.run(folder.writer, self.get_service().reindex,
                                           [workspace], progress=on_progress, cancel=cancel)
            except Exception as err:  # noqa: BLE001 (marked as the folder's error, logged)
                bar.end("failed")
                if not folder.stop.is_set():
                    self.folder_failed(folder, err)
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
        self.reapply_overlays(folder)
        folder.deep_wake.set()
        return report

    # -- watching

    async def start_watching(self, folder: Folder) -> None:
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
            await self.run(self._readers, watcher.start)
        except OSError as err:
            folder.watch_mode = "off"
            self.warn([(f"{folder.name}: cannot watch files for changes ({err}); run "
                        "mose.reindex after changes on disk, or raise the inotify watch limit")])
            return
        if folder.stop.is_set():
            watcher.stop()
            return
        folder.watcher = watcher

    async def stop_watching(self, folder: Folder) -> None:
        watcher, folder.watcher = folder.watcher, None
        if watcher is not None:
            await self.run(self._readers, watcher.stop)
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
            paths = [p for p in expand(index, rels) if p not in overlays]
            report = index.update_paths(paths)
            log.info("%s: %d paths updated: %s", folder.name, len(paths), report)
            return paths

        try:
            paths = await self.run(folder.writer, job)
        finally:
            folder.paths_in_flight -= len(rels)
        self.reapply_overlays(folder, set(paths))
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
        """Fill deep-exit vectors in small steps whenever the folder is idle. The steps are
        the index's own (``WorkspaceIndex.fill_deep``), not ``Service.fill_deep``: the server
        waits for idle time between steps of :data:`DEEP_STEP` chunks and shows progress."""
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
                    done = await self.run(folder.writer, index.fill_deep, DEEP_STEP,
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
                await self.run(folder.writer, folder.index.flush)

    async def flusher(self) -> None:
        """Save changed vector indexes now and then, so that a crash loses little."""
        while not self.closed:
            await asyncio.sleep(FLUSH_CHECK_S)
            for folder in list(self.folders.values()):
                index = folder.index
                if index is not None and not folder.stop.is_set() and index.store.dirty:
                    try:
                        await self.run(folder.writer, index.maybe_flush,
                                       FLUSH_MIN_INTERVAL_S)
                    except Exception:
                        log.exception("%s: periodic flush failed", folder.name)
