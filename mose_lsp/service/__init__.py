"""The service layer: what every front end (language server, MCP server, CLI) calls.

Plain Python, blocking, thread-safe; no LSP or MCP types. Call it from worker threads, never
from an event loop.

API
---
``Service(settings=None, model=None)``
    Holds the workspace folders and one encoder (loaded on first use, or the one given).

``service.add_folder(root, settings=None) -> Workspace`` / ``remove_folder(root)`` /
``service.folders`` / ``service.locate(path) -> (Workspace, rel) | None`` / ``close()``
    A :class:`Workspace` opens its index on first use (``workspace.index``: the
    ``indexer.WorkspaceIndex``; ``workspace.searcher``: its ``Searcher``).

``service.adopt(index, searcher=None) -> Workspace`` / ``service.release(workspace)``
    A folder on an index the caller opened and keeps (the language server opens, scans,
    watches and closes its folders' indexes on its own lanes, and answers through the
    service); released, the index stays open for its owner to close.

``service.search(query, kind="text"|"code", limit=None, languages=(), path_glob=None,
folders=None, fresh=True, wait_s=FRESH_WAIT_S, cancel=None) -> SearchResult``
    ``fresh``: first index what changed on disk (an incremental scan). If another client
    is writing the index for longer than ``wait_s``, the answer comes from the last
    committed index and ``result.update_in_progress`` is True (``result.freshness`` says
    which folder, who writes, and what this call updated). Once ``cancel`` (an Event) is
    set, the folders not searched yet are left out. Hits are ranked deep-scored first.

``service.similar(path=..., start_line=None, end_line=None | text=..., language="", limit,
languages, path_glob, folders, fresh, wait_s, keep_own=False) -> SearchResult``
    Code like the chunk around a line, a line range, a whole file, or a pasted snippet;
    the query's own code (and, for the chunk at a line, the other chunks of its symbol in
    that file) is left out unless ``keep_own``. Lines are 0-based.

``service.similar_to(query, own, limit, languages, path_glob, folders, keep_own, cancel)``
    The same search for a query already made: ``similar_query(root, rel, start, end,
    max_file_bytes, content=None)`` (the file as the index reads it, or an editor's unsaved
    buffer) or :mod:`mose_lsp.similar`; ``own`` is the folder it comes from (or None).

``service.status(folders=None, count_pending=True) -> list[FolderStatus]``
    Files, chunks, deep coverage, files changed since indexed, and whether a writer (this
    or another process) holds the index's lock.

``service.reindex(folders=None, rebuild=False, deep=False, progress=None, cancel=None)
-> list[ReindexResult]``  and  ``service.fill_deep(folders=None, max_chunks=256, ...)``
    Update now (waiting for other writers); ``rebuild`` re-embeds everything.

``service.refresh(folders=None, wait_s=FRESH_WAIT_S) -> tuple[Freshness, ...]``
    Only the freshness step (an incremental update of changed files).

Errors are :class:`ServiceError` (a request that cannot be answered, with what to send
instead), ``LockBusy`` (another writer held the lock past the wait) and the other
``MoseError`` subclasses; each message says what to do.

Many clients, one index
-----------------------
Any number of processes may open one workspace's index. Writes go through
``indexer.WorkspaceIndex``, which takes the index's writer lock (:mod:`.lock`: an flock on
``writer.lock`` in the index folder, dropped by the kernel when its owner dies, so a crashed
owner's lock is taken over at once) per batch, catches up with other processes' commits
(``Store.sync``) and re-checks each file against the store, so nothing is embedded twice.
Readers take no lock: they read SQLite's last commit, and each file's change is one
transaction. A search that computed deep vectors on the fly stores them only if the lock is
free at that moment; otherwise the deep pass makes them later.

Unsaved editor buffers (``WorkspaceIndex.update_text``) are recorded with minus the writer's
pid as their mtime: other processes' updates leave them while that process lives.

Front ends: the MCP server (:mod:`mose_lsp.mcp`), the CLI and the language server call this
layer for search, similar, status and scans. The language server keeps what is its own: its
lanes, unsaved buffers, the watcher, progress, and rebuilds (it removes and reopens an index
that may not open), and searches with ``fresh=False``: its watcher keeps the index current.
Servers call :func:`.memory.limit_allocator_arenas` first thing (see :mod:`.memory`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .lock import LockBusy, LockOwner, WriterLock, writer_lock

if TYPE_CHECKING:
    from .core import FRESH_WAIT_S, Service, ServiceError, Workspace, forget_all, similar_query
    from .types import (
        FolderStatus,
        Freshness,
        ReindexResult,
        SearchResult,
        ServiceHit,
        SkippedFile,
    )

__all__ = [
    "FRESH_WAIT_S", "FolderStatus", "Freshness", "LockBusy", "LockOwner", "ReindexResult",
    "SearchResult", "Service", "ServiceError", "ServiceHit", "SkippedFile", "Workspace",
    "WriterLock", "forget_all", "similar_query", "writer_lock",
]

_LAZY = {
    "FRESH_WAIT_S": "core", "Service": "core", "ServiceError": "core", "Workspace": "core",
    "forget_all": "core", "similar_query": "core", "FolderStatus": "types", "Freshness": "types",
    "ReindexResult": "types", "SearchResult": "types", "ServiceHit": "types",
    "SkippedFile": "types",
}


def __getattr__(name: str) -> Any:
    # Lazy: the indexer imports .lock, and .core imports the indexer.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
