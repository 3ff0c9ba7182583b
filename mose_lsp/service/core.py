"""The service: workspace folders, their indexes, and the operations every front end calls.

Blocking and thread-safe: call it from worker threads (the language server and the MCP
server never call it on their event loop). See the package docstring for the API.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..config import Settings
from ..errors import MoseError
from ..indexer import Progress, ScanReport, WorkspaceIndex, foreign_overlay, read_regular
from ..searcher import Hit, Query, Searcher
from ..similar import QueryError, SimilarQuery, file_query, snippet_query
from ..walker import iter_files, relative_path
from .lock import LockBusy
from .types import (
    FolderStatus,
    Freshness,
    ReindexResult,
    SearchResult,
    ServiceHit,
    SkippedFile,
)

log = logging.getLogger(__name__)

# How long a search waits for another client's write batch before it answers from the last
# committed index (and says an update is in progress). A batch holds the lock for a few
# seconds at most; a query should not wait that long.
FRESH_WAIT_S = 1.0
OWN_STEP_WAIT_S = 60.0  # ... and for a step of this process's own background work
SKIPPED_LISTED = 200


class ServiceError(MoseError):
    """A request the service cannot answer; the message says what to send instead."""


class Workspace:
    """One workspace folder: its index (opened on first use) and searcher.

    An *adopted* folder (:meth:`Service.adopt`) uses an index its caller opened and keeps:
    closing the folder lets go of the index without closing it, and it is never reopened."""

    def __init__(self, root: Path, settings: Settings, model_fn: Callable[[], object],
                 index: WorkspaceIndex | None = None, searcher: Searcher | None = None):
        self.root = root
        self.settings = settings
        self._model_fn = model_fn
        self._index = index
        self._searcher = searcher or (Searcher(index) if index is not None else None)
        self.adopted = index is not None
        self._open_lock = threading.Lock()

    @property
    def index(self) -> WorkspaceIndex:
        with self._open_lock:
            if self._index is None:
                if self.adopted:
                    raise ServiceError(f"{self.root}: the folder was closed")
                self._index = WorkspaceIndex.open(self.root, self.settings, self._model_fn())
                self._searcher = Searcher(self._index)
            return self._index

    @property
    def searcher(self) -> Searcher:
        self.index  # noqa: B018  (opens it)
        assert self._searcher is not None
        return self._searcher

    @property
    def is_open(self) -> bool:
        return self._index is not None

    def close(self) -> None:
        with self._open_lock:
            index, self._index, self._searcher = self._index, None, None
        if index is not None and not self.adopted:
            index.close()

    def writer(self) -> str | None:
        owner = self.index.lock.owner()
        return f"pid {owner.pid} ({owner.what})" if owner else None

    def refresh(self, wait_s: float | None = FRESH_WAIT_S) -> Freshness:
        """Index what changed on disk since the index last saw it (an incremental scan:
        a walk and a stat per file, embedding only new chunks). When another client holds
        the writer lock longer than ``wait_s``, stop and say so: the caller answers from
        the last committed index."""
        started = time.perf_counter()
        index = self.index
        if wait_s is not None and index.scanning:  # e.g. this server's first index, running
            return Freshness(self.root, seconds=time.perf_counter() - started,
                             update_in_progress=True, writer=f"pid {os.getpid()} (scan)")
        try:
            try:
                report = index.scan(wait_s=wait_s)
            except LockBusy as busy:
                if busy.owner is None or busy.owner.pid != os.getpid():
                    raise
                # Our own background step (the deep pass) holds it: one short step, wait.
                report = index.scan(wait_s=OWN_STEP_WAIT_S)
        except LockBusy as busy:
            owner = busy.owner
            return Freshness(self.root, seconds=time.perf_counter() - started,
                             update_in_progress=True,
                             writer=f"pid {owner.pid} ({owner.what})" if owner else None)
        updated = (report.files_indexed + report.files_deleted + report.files_renamed
                   + report.files_skipped)
        return Freshness(self.root, updated, report.chunks_embedded,
                         time.perf_counter() - started)

    def hit(self, hit: Hit) -> ServiceHit:
        index = self.index
        return ServiceHit(self.root, hit.path, hit.start_line, hit.end_line, hit.symbol,
                          hit.kind, hit.language, hit.score, hit.exit,
                          hit.exit == index.rerank_exit and index.rerank_exit != index.index_exit,
                          hit.text, hit.chunk_id)


class Service:
    """Workspace folders and the operations on them: what the language server, the MCP
    server and the CLI call. One model is loaded (on first use) and shared by all folders."""

    def __init__(self, settings: Settings | None = None, model: object | None = None):
        self.settings = settings or Settings()
        self._model = model
        self._model_lock = threading.Lock()
        self._folders: dict[Path, Workspace] = {}
        self._folders_lock = threading.Lock()

    # -- folders

    def model(self):
        """The encoder, loaded once (the first call pays for it)."""
        with self._model_lock:
            if self._model is None:
                from ..encoder import ModelEncoder

                self._model = ModelEncoder.open(self.settings.model,
                                                threads=self.settings.resolved_threads())
            return self._model

    def add_folder(self, root: Path | str, settings: Settings | None = None) -> Workspace:
        """Add a workspace folder (its index opens on first use). Adding one twice returns
        the same folder."""
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise ServiceError(f"workspace {path} is not a folder")
        with self._folders_lock:
            folder = self._folders.get(path)
            if folder is None:
                folder = self._folders[path] = Workspace(path, settings or self.settings,
                                                         self.model)
            return folder

    def adopt(self, index: WorkspaceIndex, searcher: Searcher | None = None) -> Workspace:
        """A folder on an index the caller opened (the language server opens, scans, watches
        and closes its folders' indexes on its own threads): the caller keeps the index and
        closes it after :meth:`release`. It replaces an adopted folder of the same root."""
        folder = Workspace(index.root, index.settings, lambda: index.model, index, searcher)
        with self._folders_lock:
            old = self._folders.get(folder.root)
            if old is not None and not old.adopted and old.is_open:
                raise ServiceError(f"{folder.root} is already open in this service")
            self._folders[folder.root] = folder
        return folder

    def release(self, folder: Workspace) -> None:
        """Forget ``folder``; an adopted folder's index stays open (its caller closes it)."""
        with self._folders_lock:
            if self._folders.get(folder.root) is folder:
                del self._folders[folder.root]
        folder.close()

    def remove_folder(self, root: Path | str) -> None:
        with self._folders_lock:
            folder = self._folders.pop(Path(root).expanduser().resolve(), None)
        if folder is not None:
            folder.close()

    @property
    def folders(self) -> list[Workspace]:
        with self._folders_lock:
            return list(self._folders.values())

    def locate(self, path: Path | str) -> tuple[Workspace, str] | None:
        """The folder holding ``path`` (absolute, or relative to a folder) and the path
        relative to it; the innermost folder wins."""
        given = Path(path).expanduser()
        candidates = [given] if given.is_absolute() else [f.root / given for f in self.folders]
        best: tuple[Workspace, str] | None = None
        for candidate in candidates:
            for folder in self.folders:
                rel = relative_path(folder.root, candidate)
                if rel is not None and (best is None or len(folder.root.parts)
                                        > len(best[0].root.parts)):
                    best = (folder, rel)
        return best

    def close(self) -> None:
        for folder in self.folders:
            try:
                folder.close()
            except MoseError as err:
                log.warning("%s: %s", folder.root, err)
        with self._folders_lock:
            self._folders.clear()

    def _scope(self, folders: Sequence[Workspace] | None) -> list[Workspace]:
        chosen = list(folders) if folders is not None else self.folders
        if not chosen:
            raise ServiceError("no workspace folder is open: add one first")
        return chosen

    # -- freshness

    def refresh(self, folders: Sequence[Workspace] | None = None,
                wait_s: float | None = FRESH_WAIT_S) -> tuple[Freshness, ...]:
        """Bring each folder's index up to date with the disk (see :meth:`Workspace.refresh`)."""
        out = []
        for folder in self._scope(folders):
            try:
                out.append(folder.refresh(wait_s))
            except MoseError as err:
                out.append(Freshness(folder.root, error=str(err)))
        return tuple(out)

    # -- search

    def search(self, query: str, *, kind: str = "text", limit: int | None = None,
               languages: Iterable[str] = (), path_glob: str | None = None,
               folders: Sequence[Workspace] | None = None, fresh: bool = True,
               wait_s: float | None = FRESH_WAIT_S,
               cancel: threading.Event | None = None) -> SearchResult:
        """Search in words (``kind="text"``) or with a code snippet (``kind="code"``).
        ``fresh``: index what changed on disk first (:meth:`refresh`). ``cancel``: once set,
        the folders not searched yet are left out (the caller drops the answer)."""
        if not query.strip():
            raise ServiceError("the query is empty: describe the code you look for, or paste "
                               "a snippet of it")
        if kind not in ("text", "code"):
            raise ServiceError(f"kind must be 'text' or 'code', not {kind!r}")
        k = self._limit(limit)
        scope = self._scope(folders)
        freshness = self.refresh(scope, wait_s) if fresh else ()
        q = Query(query, kind, k=k, languages=tuple(languages), path_glob=path_glob or None)
        return SearchResult(self._search(scope, q, k, cancel=cancel), freshness)

    def similar(self, *, path: str | Path | None = None, start_line: int | None = None,
                end_line: int | None = None, text: str | None = None, language: str = "",
                limit: int | None = None, languages: Iterable[str] = (),
                path_glob: str | None = None, folders: Sequence[Workspace] | None = None,
                fresh: bool = True, wait_s: float | None = FRESH_WAIT_S,
                keep_own: bool = False, cancel: threading.Event | None = None) -> SearchResult:
        """Code like a file's code: the innermost chunk around ``start_line`` (0-based), the
        lines ``start_line..end_line``, the whole file (no line), or a pasted ``text``
        snippet (no path). The query's own code is not among the results, nor (for the chunk
        at a line) the other chunks of its symbol in that file (the other windows of a long
        function), unless ``keep_own``."""
        self._limit(limit)
        scope = self._scope(folders)
        if (path is None) == (text is None):
            raise ServiceError("give either a path (with an optional line or line range) or a "
                               "code snippet, not both and not neither")
        freshness = self.refresh(scope, wait_s) if fresh else ()
        own: Workspace | None = None
        if text is not None:
            try:
                q = snippet_query(text, language)
            except QueryError as err:
                raise ServiceError(str(err)) from None
        else:
            found = self.locate(path)
            if found is None:
                raise ServiceError(f"{path} is not inside a workspace folder "
                                   f"({', '.join(str(f.root) for f in scope)}); give a path "
                                   "relative to the workspace")
            own, rel = found
            q = similar_query(own.root, rel, start_line, end_line, own.settings.max_file_bytes)
        result = self.similar_to(q, own, limit=limit, languages=languages, path_glob=path_glob,
                                 folders=scope, keep_own=keep_own, cancel=cancel)
        return SearchResult(result.hits, freshness)

    def similar_to(self, q: SimilarQuery, own: Workspace | None, *, limit: int | None = None,
                   languages: Iterable[str] = (), path_glob: str | None = None,
                   folders: Sequence[Workspace] | None = None, keep_own: bool = False,
                   cancel: threading.Event | None = None) -> SearchResult:
        """The search of :meth:`similar` for a query already made (:func:`similar_query`, or
        :mod:`mose_lsp.similar` from an editor's unsaved buffer). ``own``: the folder ``q``
        comes from (None: not open, or a snippet): a chunk indexed as is lends its stored
        vectors, and its own code is left out unless ``keep_own``. No freshness step."""
        k = self._limit(limit)
        scope = self._scope(folders)
        vectors, vectors_model = {}, ""
        if own is not None and q.content_hash is not None and q.rel is not None:
            stored = own.searcher.stored_chunk(q.rel, q.content_hash, q.text)
            if stored is not None:  # indexed as is: its stored vectors are the query's
                vectors, vectors_model = own.searcher.stored_vectors(stored), own.searcher.model_id
        query = Query(q.text, "code", lang=q.lang, k=q.candidates(k), languages=tuple(languages),
                      path_glob=path_glob or None, vectors=vectors, vectors_model=vectors_model)

        def keep(folder: Workspace, hit: Hit) -> bool:  # the query's own code is left out
            if keep_own or (q.rel is not None and folder is not own):
                return True
            return not q.is_own(hit.path, hit.start_line, hit.end_line, hit.text, hit.symbol)

        return SearchResult(self._search(scope, query, k, keep, cancel))

    def _search(self, scope: Sequence[Workspace], query: Query, k: int,
                keep: Callable[[Workspace, Hit], bool] | None = None,
                cancel: threading.Event | None = None) -> tuple[ServiceHit, ...]:
        hits = []
        for folder in scope:
            if cancel is not None and cancel.is_set():
                break
            hits += [folder.hit(h) for h in folder.searcher.search(query)
                     if keep is None or keep(folder, h)]
        return self._rank(hits, k)

    def _limit(self, limit: int | None) -> int:
        if limit is None:
            return self.settings.limit
        if limit < 1:
            raise ServiceError(f"limit must be at least 1, not {limit}")
        return limit

    @staticmethod
    def _rank(hits: list[ServiceHit], k: int) -> tuple[ServiceHit, ...]:
        # Deep-scored hits first: shallow cosines are on another scale.
        return tuple(sorted(hits, key=lambda h: (0 if h.deep else 1, -h.score))[:k])

    # -- status and maintenance

    def status(self, folders: Sequence[Workspace] | None = None,
               count_pending: bool = True) -> list[FolderStatus]:
        """Per folder: files, chunks, deep coverage, files changed since indexed (a walk
        and a stat per file; ``count_pending=False`` skips it), and whether a writer is busy."""
        out = []
        for folder in self._scope(folders):
            index = folder.index
            index.store.sync()
            stats = index.store.stats()
            skipped = [s for s in index.store.all_files() if s.skipped]
            pending = None
            if count_pending:
                pending = sum(1 for e in iter_files(index.root, index.settings)
                              if ((st := index.store.file_state(e.rel)) is None
                                  or st.size != e.size or st.mtime_ns != e.mtime_ns)
                              and not foreign_overlay(st))
            owner = index.lock.owner()
            manifest = index.model.manifest
            out.append(FolderStatus(
                folder.root, index.store.index_dir, stats.files, stats.indexed_files,
                stats.chunks, stats.deep_coverage if stats.chunks else None, pending,
                owner is not None,
                f"pid {owner.pid} ({owner.what})" if owner else None,
                f"{manifest.name} {manifest.version}", index.index_exit, index.rerank_exit,
                stats.bytes_on_disk, dict(stats.skipped),
                tuple(SkippedFile(s.path, s.skip_code or "", s.skip_message or "")
                      for s in skipped[:SKIPPED_LISTED]),
                owner, manifest.name, manifest.version, _model_path(index)))
        return out

    def reindex(self, folders: Sequence[Workspace] | None = None, *, rebuild: bool = False,
                deep: bool = False, progress: Callable[[Progress], None] | None = None,
                cancel: threading.Event | None = None) -> list[ReindexResult]:
        """Bring each folder's index up to date now (waiting for other writers). ``rebuild``:
        forget every file first, so everything is read and embedded again (the index folder
        stays, so other clients using it carry on). ``deep``: also fill every deep vector."""
        out = []
        for folder in self._scope(folders):
            index = folder.index
            if rebuild:
                forget_all(index)
            report = index.scan(progress=progress, cancel=cancel)
            filled = self.fill_deep([folder], None, cancel, progress) if deep else 0
            out.append(_reindex_result(folder.root, rebuild, report, filled,
                                       index.store.stats().chunks))
        return out

    def fill_deep(self, folders: Sequence[Workspace] | None = None,
                  max_chunks: int | None = 256, cancel: threading.Event | None = None,
                  progress: Callable[[Progress], None] | None = None) -> int:
        """The deep pass: deep-exit vectors for up to ``max_chunks`` chunks per folder (None:
        all). Each step holds the writer lock briefly, so other clients interleave."""
        done = 0
        for folder in self._scope(folders):
            index = folder.index
            while max_chunks is None or done < max_chunks:
                step = 512 if max_chunks is None else min(512, max_chunks - done)
                n = index.fill_deep(step, cancel, progress)
                done += n
                if n == 0 or (cancel is not None and cancel.is_set()):
                    break
            index.flush()
        return done


def similar_query(root: Path, rel: str, start: int | None = None, end: int | None = None,
                  max_file_bytes: int = 1_000_000, content: str | None = None) -> SimilarQuery:
    """The query of "find similar" for a file of the folder ``root``: the chunk around
    line ``start``, the lines ``start..end`` (0-based), or the whole file (no line), read as
    the index reads it, or from ``content`` (an editor's unsaved buffer)."""
    if content is None:
        from ..chunker import ChunkLimits, SkipReason, decode_source

        limits = ChunkLimits(max_file_bytes=max_file_bytes)
        try:
            raw = read_regular(root / rel, root, max_file_bytes + 1)
        except OSError as err:
            raise ServiceError(f"cannot read {rel}: {err.strerror or err}; give the path of a "
                               "file in the workspace, relative to it") from err
        decoded = decode_source(raw, limits)
        if isinstance(decoded, SkipReason):
            raise ServiceError(f"{rel} is not indexed code ({decoded.message})")
        content = decoded
    try:
        return file_query(rel, content, start, end, max_file_bytes)
    except QueryError as err:
        raise ServiceError(str(err)) from None


def folder_settings(settings: Settings, root: Path, several: bool) -> Settings:
    """A folder's settings when ``settings.index_dir`` is configured: with one folder it is
    that folder's index; with several, it holds one sub-folder per folder (named as in the
    default cache), so that folders never share an index."""
    if not settings.index_dir or not several:
        return settings
    from dataclasses import replace

    from ..store import default_index_dir

    return replace(settings, index_dir=str(Path(settings.index_dir) / default_index_dir(root).name))


def _model_path(index: WorkspaceIndex) -> str:
    model_dir = getattr(index.model, "model_dir", None)  # None: an encoder without one
    return str(model_dir.path) if model_dir is not None else ""


def forget_all(index: WorkspaceIndex) -> int:
    """Delete every file of the index (one transaction per file, under the writer lock), so
    that the next scan reads and embeds everything again. Returns how many were deleted."""
    with index.writing("rebuild"):
        files = [s.path for s in index.store.all_files()]
        for rel in files:
            index.store.delete_file(rel)
    return len(files)


def _reindex_result(root: Path, rebuild: bool, report: ScanReport, filled: int,
                    chunks: int) -> ReindexResult:
    return ReindexResult(root, rebuild, report.files_seen, report.files_indexed,
                         report.files_unchanged, report.files_skipped, report.files_deleted,
                         report.files_renamed, report.chunks_embedded, filled,
                         round(report.seconds, 3), chunks)
