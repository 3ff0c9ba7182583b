"""The server's requests: mose.search, mose.similar, mose.status, mose.reindex and
workspace/symbol, answered from worker threads and converted to the shapes of
:mod:`mose_lsp.protocol`."""

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
    from ..indexer import ScanReport, WorkspaceIndex
    from ..searcher import Hit, Query

SKIPPED_LISTED = 200  # skipped files listed by mose.status (all are counted)


def query_from_text(rel: str, text: str, args: SimilarArgs, max_bytes: int) -> SimilarQuery:
    """The query of ``mose.similar`` (:mod:`mose_lsp.similar`, shared with the service): the
    innermost chunk around the position, the lines of the range, or the whole text."""
    start, end = args.range.lines() if args.range is not None else (
        args.position.line if args.position is not None else None, None)
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

    def _results(self, pairs: list[tuple[Folder, Hit]], k: int) -> list[Result]:
        def rank(pair: tuple[Folder, Hit]) -> tuple[int, float]:
            folder, hit = pair
            deep = folder.index is not None and hit.exit == folder.index.rerank_exit
            return (0 if deep else 1, -hit.score)

        out = []
        for folder, hit in sorted(pairs, key=rank)[:k]:
            out.append(Result(folder.uri_of(hit.path), hit.path, folder.uri, hit.start_line,
                              hit.end_line, hit.symbol, hit.kind, hit.language, hit.score,
                              hit.exit, snippet(hit.text),
                              definition_span(hit.text, hit.symbol, hit.start_line)))
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
        from ..searcher import Query

        self.last_request = time.monotonic()
        folders = await self._ready(self._scope(args.filters.folder, SearchArgs.COMMAND),
                                    SearchArgs.COMMAND)
        k = args.filters.k or self.settings.limit
        query = Query(args.query, args.kind, k=k, languages=args.filters.languages,
                      path_glob=args.filters.path_glob)
        pairs = await self.run(self._readers, self._search_job, folders, query, cancel)
        return SearchResponse(tuple(self._results(pairs, k)), self._incomplete(folders))

    def _incomplete(self, folders: list[Folder]) -> tuple[str, ...]:
        return tuple(f.uri for f in folders
                     if f.state == "cancelled" or (f.state == "indexing" and f.last_scan is None))

    async def similar(self, args: SimilarArgs, cancel: threading.Event) -> SearchResponse:
        from ..searcher import Query

        self.last_request = time.monotonic()
        found = self.locate(args.uri)
        if found is None:
            raise ParamsError(f"mose.similar: {args.uri} is not inside a workspace folder")
        own, rel = found
        folders = await self._ready(self._scope(args.filters.folder, SimilarArgs.COMMAND),
                                    SimilarArgs.COMMAND)
        buffer = self.text(args.uri) if args.uri in self.docs else None
        k = args.filters.k or self.settings.limit
        max_bytes = self.settings.max_file_bytes

        def job() -> list[tuple[Folder, Hit]]:
            text = buffer
            if text is None:
                from ..chunker import ChunkLimits, SkipReason, decode_source
                from ..indexer import read_regular

                try:  # a regular file inside the folder only, and no more than is indexed
                    raw = read_regular(own.root / rel, own.root, max_bytes + 1)
                except OSError as err:
                    raise ParamsError(f"mose.similar: cannot read {rel}: "
                                      f"{err.strerror or err}") from err
                decoded = decode_source(raw, ChunkLimits(max_file_bytes=max_bytes))
                if isinstance(decoded, SkipReason):  # as the index decodes it
                    raise ParamsError(f"mose.similar: {rel} is not indexed code "
                                      f"({decoded.message})")
                text = decoded
            q = query_from_text(rel, text, args, max_bytes)
            vectors, vectors_model = {}, ""
            searcher = own.searcher
            if q.content_hash is not None and searcher is not None:
                # The chunk as indexed (on disk or from the buffer): its stored vectors
                # are the query's, so it is not encoded again.
                stored = searcher.stored_chunk(rel, q.content_hash, q.text)
                if stored is not None:
                    vectors, vectors_model = searcher.stored_vectors(stored), searcher.model_id
            query = Query(q.text, "code", lang=q.lang, k=q.candidates(k),
                          languages=args.filters.languages, path_glob=args.filters.path_glob,
                          vectors=vectors, vectors_model=vectors_model)

            def keep(folder: Folder, hit: Hit) -> bool:
                return folder is not own or not q.is_own(hit.path, hit.start_line, hit.end_line,
                                                         hit.text, hit.symbol)

            return self._search_job(folders, query, cancel, keep)

        pairs = await self.run(self._readers, job)
        return SearchResponse(tuple(self._results(pairs, k)), self._incomplete(folders))

    async def status(self, args: StatusArgs) -> dict[str, Any]:
        folders = (self._scope(args.folder, StatusArgs.COMMAND) if args.folder
                   else list(self.folders.values()))
        out = []
        for folder in folders:
            data = self._folder_status(folder)
            if folder.index is not None and not folder.stop.is_set():
                data.update(await self.run(self._readers, index_status, folder.index))
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
            out.append({"uri": folder.uri, "lastScan": scan_json(folder.last_scan)})
        return {"folders": out}

    async def symbols(self, query: str, cancel: threading.Event) -> list[lsp.WorkspaceSymbol]:
        if not query.strip() or not self.folders:
            return []
        response = await self.search(SearchArgs(query, "text", Filters()), cancel)
        return [workspace_symbol(r) for r in response.results]


def index_status(index: WorkspaceIndex) -> dict[str, Any]:
    """The index's counts (a reader thread). With no chunk yet there is no coverage to
    report: ``deepCoverage`` is None, never a 1.0 of nothing."""
    try:
        stats = index.store.stats()
        skipped = [s for s in index.store.all_files() if s.skipped]
        owner = index.lock.owner()  # the index's writer lock (any process: LSP, MCP, CLI)
    except MoseError as err:  # closed meanwhile
        return {"error": str(err)}
    manifest = index.model.manifest
    return {
        "writer": None if owner is None else {"pid": owner.pid, "what": owner.what},
        "files": stats.files, "indexedFiles": stats.indexed_files, "chunks": stats.chunks,
        "deepCoverage": stats.deep_coverage if stats.chunks else None,
        "model": {"name": manifest.name, "version": manifest.version,
                  "path": str(index.model.model_dir.path), "indexExit": index.index_exit,
                  "rerankExit": index.rerank_exit},
        "skipped": dict(stats.skipped),
        "skippedFiles": [{"path": s.path, "code": s.skip_code, "message": s.skip_message}
                         for s in skipped[:SKIPPED_LISTED]],
    }


def scan_json(report: ScanReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    data = camel_dict({k: v for k, v in report.__dict__.items() if k != "skipped"})
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
