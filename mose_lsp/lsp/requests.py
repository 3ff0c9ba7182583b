"""The server's requests: mose.search, mose.similar, mose.status, mose.reindex and
workspace/symbol, answered from worker threads and converted to the shapes of
:mod:`mose_lsp.protocol`.

Search, similar and status are the service layer's (:class:`mose_lsp.service.Service`, on the
folders' indexes it adopted when they opened), as for the MCP server and the CLI; this module
converts LSP arguments and results. What stays here: the folders' readiness (a request waits
for a folder still opening, and names the ones not fully indexed in ``incomplete``), the
query from an editor's unsaved buffer, and ``fresh=False`` (the server keeps its indexes
current with its watcher and the open buffers, so a search never scans)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lsprotocol import types as lsp

from .. import __version__
from ..errors import MoseError
from ..protocol import (
    Filters,
    ParamsError,
    ReindexArgs,
    Result,
    SearchArgs,
    SearchResponse,
    SimilarArgs,
    StatusArgs,
    camel_dict,
    definition_span,
    lsp_range,
    snippet,
)
from ..similar import QueryError, SimilarQuery, file_query
from .folders import Folder, folder_settings, index_dir_of
from .rpc import Cancelled, RequestFailed

if TYPE_CHECKING:
    from ..service.core import Service
    from ..service.core import Workspace as ServiceFolder
    from ..service.types import FolderStatus, ReindexResult, SearchResult

def similar_lines(args: SimilarArgs) -> tuple[int | None, int | None]:
    """``mose.similar``'s lines (0-based): the range's, the position's line (the innermost
    chunk around it), or none (the whole file)."""
    if args.range is not None:
        return args.range.lines()
    return (args.position.line if args.position is not None else None), None


def query_from_text(rel: str, text: str, args: SimilarArgs, max_bytes: int) -> SimilarQuery:
    """The query of ``mose.similar`` (:mod:`mose_lsp.similar`, shared with the service): the
    innermost chunk around the position, the lines of the range, or the whole text."""
    start, end = similar_lines(args)
    try:
        return file_query(rel, text, start, end, max_bytes)
    except QueryError as err:
        raise ParamsError(f"{SimilarArgs.COMMAND}: {err}") from None


class Requests:
    """Mixed into :class:`~mose_lsp.lsp.session.MoseService`: the requests' answers."""

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

    def _answer(self, folders: list[Folder], cancel: threading.Event,
                ask: Callable[[list[ServiceFolder]], SearchResult]) -> list[Result]:
        """Ask the service (a reader thread) over the folders that are open, and convert its
        ranked hits (deep-scored first) to results with URIs as the client names its folders."""
        scope = [(f, w) for f in folders if (w := f.workspace) is not None and not f.stop.is_set()]
        if cancel.is_set():
            raise Cancelled()
        if not scope:
            return []
        by_root = {w.root: f for f, w in scope}
        answer = ask([w for _, w in scope])
        if cancel.is_set():
            raise Cancelled()
        out = []
        for hit in answer.hits:
            folder = by_root[hit.folder]
            out.append(Result(folder.uri_of(hit.path), hit.path, folder.uri, hit.start_line,
                              hit.end_line, hit.symbol, hit.kind, hit.language, hit.score,
                              hit.exit, snippet(hit.text),
                              definition_span(hit.text, hit.symbol, hit.start_line)))
        return out

    async def search(self, args: SearchArgs, cancel: threading.Event) -> SearchResponse:
        self.last_request = time.monotonic()
        folders = await self._ready(self._scope(args.filters.folder, SearchArgs.COMMAND),
                                    SearchArgs.COMMAND)
        k = args.filters.k or self.settings.limit

        def ask(scope: list[ServiceFolder]) -> SearchResult:
            return self.get_service().search(
                args.query, kind=args.kind, limit=k, languages=args.filters.languages,
                path_glob=args.filters.path_glob, folders=scope, fresh=False, cancel=cancel)

        results = await self.run(self._readers, self._answer, folders, cancel, ask)
        return SearchResponse(tuple(results), self._incomplete(folders))

    def _incomplete(self, folders: list[Folder]) -> tuple[str, ...]:
        return tuple(f.uri for f in folders
                     if f.state == "cancelled" or (f.state == "indexing" and f.last_scan is None))

    async def similar(self, args: SimilarArgs, cancel: threading.Event) -> SearchResponse:
        self.last_request = time.monotonic()
        found = self.locate(args.uri)
        if found is None:
            raise ParamsError(f"mose.similar: {args.uri} is not inside a workspace folder")
        own, rel = found
        folders = await self._ready(self._scope(args.filters.folder, SimilarArgs.COMMAND),
                                    SimilarArgs.COMMAND)
        buffer = self.text(args.uri) if args.uri in self.docs else None
        k = args.filters.k or self.settings.limit
        start, end = similar_lines(args)
        max_bytes = self.settings.max_file_bytes

        def ask(scope: list[ServiceFolder]) -> SearchResult:
            from ..service.core import ServiceError, similar_query

            # The file as the index reads it (a regular file inside the folder, no more than
            # is indexed), or the editor's unsaved buffer.
            try:
                q = similar_query(own.root, rel, start, end, max_bytes, content=buffer)
            except ServiceError as err:
                raise ParamsError(f"{SimilarArgs.COMMAND}: {err}") from None
            # ``own`` lends the stored vectors of a chunk indexed as is (not encoded again),
            # and its own code is left out of the answer.
            return self.get_service().similar_to(
                q, own.workspace, limit=k, languages=args.filters.languages,
                path_glob=args.filters.path_glob, folders=scope, cancel=cancel)

        results = await self.run(self._readers, self._answer, folders, cancel, ask)
        return SearchResponse(tuple(results), self._incomplete(folders))

    async def status(self, args: StatusArgs) -> dict[str, Any]:
        folders = (self._scope(args.folder, StatusArgs.COMMAND) if args.folder
                   else list(self.folders.values()))
        out = []
        for folder in folders:
            data = self._folder_status(folder)
            workspace = folder.workspace
            if workspace is not None and not folder.stop.is_set():
                data.update(await self.run(self._readers, index_status, self.get_service(),
                                           workspace))
            out.append(data)
        return {"version": __version__, "settings": self.config.to_json(),
                "warnings": list(self.config.warnings), "folders": out}

    def _folder_status(self, folder: Folder) -> dict[str, Any]:
        """What the loop knows about a folder (the index's counts come from a thread)."""
        docs = [d for d in self.docs.values() if d.folder_uri == folder.uri]
        settings = folder.settings or folder_settings(self.settings, folder.root)
        return {
            "uri": folder.uri, "name": folder.name, "state": folder.state, "error": folder.error,
            "indexDir": str(index_dir_of(settings, folder.root)), "watcher": folder.watch_mode,
            "files": None, "indexedFiles": None, "chunks": None,
            "pending": {"paths": folder.paths_in_flight
                        + (folder.batcher.pending if folder.batcher else 0),
                        "documents": sum(1 for d in docs if d.indexed_version != d.version)},
            "openDocuments": sum(1 for d in docs if d.overlay),
            "deepCoverage": None, "deepFilling": folder.deep_filling, "model": None,
            "writer": None,
            "skipped": {}, "skippedFiles": [],
            "lastScan": scan_json(folder.last_scan),
        }

    async def reindex(self, args: ReindexArgs, cancel: threading.Event) -> dict[str, Any]:
        """Scan again (``cancel``, set on $/cancelRequest, stops the scan: the folder is left
        "cancelled" and a later reindex resumes it). The scan is the service's
        (``Service.reindex``, in :meth:`Workspace.scan`), with the server's progress bar.

        A rebuild (or a folder in error) stays the server's: it closes the folder, removes its
        index folder and opens it again, which also recovers an index that cannot be opened
        (another model, a damaged store), where ``Service.reindex(rebuild=True)`` forgets the
        files of an open index."""
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
            out.append({"uri": folder.uri, "lastScan": scan_json(folder.last_scan)})
        return {"folders": out}

    async def symbols(self, query: str, cancel: threading.Event) -> list[lsp.WorkspaceSymbol]:
        if not query.strip() or not self.folders:
            return []
        response = await self.search(SearchArgs(query, "text", Filters()), cancel)
        return [workspace_symbol(r) for r in response.results]


def index_status(service: Service, workspace: ServiceFolder) -> dict[str, Any]:
    """The index's part of a folder's mose.status, from ``Service.status`` (a reader thread;
    the server counts pending paths and documents itself)."""
    try:
        (st,) = service.status([workspace], count_pending=False)
    except MoseError as err:  # closed meanwhile
        return {"error": str(err)}
    return status_json(st)


def status_json(st: FolderStatus) -> dict[str, Any]:
    """A folder's status in mose.status's shape. With no chunk yet there is no coverage to
    report: ``deepCoverage`` is None, never a 1.0 of nothing."""
    owner = st.owner  # the index's writer lock (any process: LSP, MCP, CLI)
    return {
        "writer": None if owner is None else {"pid": owner.pid, "what": owner.what},
        "files": st.files, "indexedFiles": st.indexed_files, "chunks": st.chunks,
        "deepCoverage": st.deep_coverage if st.chunks else None,
        "model": {"name": st.model_name, "version": st.model_version, "path": st.model_path,
                  "indexExit": st.index_exit, "rerankExit": st.rerank_exit},
        "skipped": dict(st.skipped),
        "skippedFiles": [{"path": s.path, "code": s.code, "message": s.message}
                         for s in st.skipped_files],
    }


SCAN_FIELDS = ("files_seen", "files_indexed", "files_unchanged", "files_skipped",
               "files_deleted", "files_renamed", "chunks_embedded", "seconds")


def scan_json(report: ReindexResult | None) -> dict[str, Any] | None:
    """A folder's last scan in mose.status's and mose.reindex's shape."""
    if report is None:
        return None
    data = camel_dict({k: getattr(report, k) for k in SCAN_FIELDS})
    data["seconds"] = round(report.seconds, 3)
    return data


SYMBOL_KINDS = {
    "function": lsp.SymbolKind.Function, "method": lsp.SymbolKind.Method,
    "class": lsp.SymbolKind.Class, "interface": lsp.SymbolKind.Interface,
    "trait": lsp.SymbolKind.Interface, "struct": lsp.SymbolKind.Struct,
    "record": lsp.SymbolKind.Struct, "union": lsp.SymbolKind.Struct,
    "enum": lsp.SymbolKind.Enum, "property": lsp.SymbolKind.Property,
    "module": lsp.SymbolKind.Module, "type": lsp.SymbolKind.TypeParameter,
    "impl": lsp.SymbolKind.Class, "macro": lsp.SymbolKind.Function,
}


def _range(data: dict[str, Any]) -> lsp.Range:
    return lsp.Range(start=lsp.Position(**data["start"]), end=lsp.Position(**data["end"]))


def workspace_symbol(result: Result) -> lsp.WorkspaceSymbol:
    """A result as a workspace symbol: its location is the symbol's name (where a client
    jumps); ``data.range`` holds the whole chunk (decorators, docstring, body)."""
    return lsp.WorkspaceSymbol(
        name=result.symbol or f"{result.path}:{result.start_line + 1}",
        kind=SYMBOL_KINDS.get(result.kind or "", lsp.SymbolKind.Namespace),
        location=lsp.Location(uri=result.uri, range=_range(result.selection_range())),
        container_name=result.path,
        data={"score": round(result.score, 6), "exit": result.exit,
              "range": lsp_range(result.start_line, result.end_line)},
    )
