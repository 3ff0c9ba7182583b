"""``mose mcp``: semantic code search for coding agents, over the Model Context Protocol (stdio).

Built on the official Python SDK (``mcp``, imported only here). Four tools call the service
layer (:mod:`mose_lsp.service`): ``search``, ``similar``, ``status`` and ``reindex``. Each
result is structured output (its schema is the tool's output schema) and readable text.

Freshness: before ``search`` and ``similar`` answer, the folders' indexes are brought up to
date with the disk (an incremental scan: a stat per file, embedding only changed chunks), so
an answer reflects the files as they are at the call (``--no-update`` skips it, for a
workspace that another client keeps current). When another client (the editor's
language server, another agent, ``mose index``) is writing the index at that moment, the
answer comes from its last commit and says so (``update_in_progress``).

Tool calls run in worker threads; the event loop only moves messages. Between calls, when
idle, a background pass fills deep-exit vectors (as the language server does), in small
steps under the index's writer lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import MoseError
from ..service import Service, ServiceHit
from ..service.memory import trim
from ..service.types import FolderStatus, ReindexResult

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_LINES = 30  # lines of code shown per hit unless the server or the call says
DEEP_STEP = 32  # chunks per background deep-pass step (bounds a call's wait behind it)
IDLE_S = 2.0  # quiet time after a call before the deep pass resumes

INSTRUCTIONS = """\
mose is a local semantic code search over this workspace: it finds code by what it does, not \
by the words it contains. Use `search` when you do not know the names to grep for ("where do \
we retry failed HTTP requests", "parse the config file"), `similar` to find code like a given \
function (duplicates, other implementations, callers' patterns), `status` to see what is \
indexed. Use grep instead for an exact identifier or string. Results are fresh: files saved \
on disk are indexed before each answer."""

SEARCH_DESCRIPTION = """\
Semantic code search: find functions, classes and code blocks by meaning.

Use it when you do not know the exact names (grep needs them): describe what the code does, \
in a short phrase, as a docstring would ("compute the edit distance between two strings", \
"retry an HTTP request with exponential backoff", "where are user sessions invalidated"). \
A code snippet works too (set kind="code"): it finds code that looks and behaves alike. For \
an exact identifier or literal string, grep is faster and exact.

Returns the best chunks first: path relative to the workspace, 1-based start and end lines, \
symbol, language, score (cosine; higher is closer; compare within one answer only) and the \
code (cut to max_lines lines). Filter with language (e.g. "python") and path (a glob such as \
"src/**" or "**/*.ts")."""

SIMILAR_DESCRIPTION = """\
Find code similar to a piece of the workspace: the function or class around a line \
(path + line), a line range (path + line + end_line), a whole file (path only), or a pasted \
snippet (snippet, optionally with language). The given code itself is left out of the \
results. Use it to find duplicated logic, other implementations of the same idea, or \
examples of a pattern before changing it everywhere. Lines are 1-based; paths are relative \
to the workspace (absolute paths inside it work too)."""

STATUS_DESCRIPTION = """\
What the index holds, per workspace folder: files and chunks indexed, files skipped (and \
why), the share of chunks with deep (more accurate) vectors, files changed on disk since \
they were indexed, and whether another client (editor, agent, CLI) is updating the index \
right now. Call it when results look incomplete."""

REINDEX_DESCRIPTION = """\
Bring the index up to date with the files on disk now (search and similar already do this \
before answering, so this is rarely needed), or with rebuild=true read and embed every file \
again (slow: use it when results look wrong after a model change or a damaged index). \
Waits for another client's update in progress."""


# -- structured outputs (their JSON schemas are the tools' output schemas)


class Hit(BaseModel):
    workspace: str = Field(description="The workspace folder the path is relative to.")
    path: str = Field(description="File path relative to the workspace.")
    start_line: int = Field(description="First line of the hit, 1-based.")
    end_line: int = Field(description="Last line of the hit, 1-based, inclusive.")
    symbol: str | None = Field(description="Function, class or method name, when there is one.")
    kind: str | None = Field(description="What the chunk is: function, class, method, ...")
    language: str | None
    score: float = Field(description="Similarity (higher is closer); compare within one answer.")
    code: str = Field(description="The code of the hit, cut to max_lines lines.")
    truncated: bool = Field(description="Whether code was cut (the hit has more lines).")


class SearchOutput(BaseModel):
    hits: list[Hit]
    update_in_progress: bool = Field(
        description="Another client was updating the index: the answer is from its last commit.")
    files_updated: int = Field(description="Changed files indexed before answering.")
    update_ms: float = Field(description="Time spent bringing the index up to date first.")
    notes: list[str] = Field(default_factory=list)


class FolderInfo(BaseModel):
    workspace: str
    index_dir: str
    files: int
    indexed_files: int
    chunks: int
    deep_coverage: float | None = Field(description="Share of chunks with deep vectors (0..1).")
    pending_files: int | None = Field(description="Files changed on disk since indexed.")
    update_running: bool = Field(description="A client is writing the index right now.")
    writer: str | None = Field(description="Which process writes, when one does.")
    model: str
    skipped: dict[str, int] = Field(description="Files not indexed, by reason.")
    skipped_examples: list[str] = Field(description="Some skipped files with the reason.")


class StatusOutput(BaseModel):
    version: str
    folders: list[FolderInfo]


class ReindexFolder(BaseModel):
    workspace: str
    rebuilt: bool
    files_seen: int
    files_indexed: int
    files_unchanged: int
    files_skipped: int
    files_deleted: int
    files_renamed: int
    chunks_embedded: int
    chunks: int
    seconds: float


class ReindexOutput(BaseModel):
    folders: list[ReindexFolder]


# -- the server


class MoseMcp:
    """The tools' implementation around one :class:`Service` (kept apart from the SDK's
    registration so that it reads top-down)."""

    def __init__(self, service: Service, max_lines: int = DEFAULT_MAX_LINES,
                 update: bool = True):
        self.service = service
        self.max_lines = max_lines
        self.update = update  # index what changed on disk before search/similar answer
        self.ready = threading.Event()
        self.start_error: str | None = None
        self._last_call = time.monotonic()
        self._calls = 0  # in flight
        self._calls_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle

    def start(self) -> None:
        """Load the model and open the indexes (catching up with the disk) in the
        background, then run the deep pass when idle."""
        for target, name in ((self._open, "mose-mcp-open"), (self._deep_loop, "mose-mcp-deep")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.service.close()

    def _open(self) -> None:
        """Open the indexes (calls wait for that), then catch up with the disk: a first index
        of a large workspace takes minutes, and calls meanwhile answer from what is indexed so
        far, saying that an update is in progress."""
        try:
            for folder in self.service.folders:
                folder.index  # noqa: B018  (opens it)
        except MoseError as err:
            self.start_error = str(err)
            log.error("%s", err)
        finally:
            self.ready.set()
        if self.start_error is None and self.update:
            for freshness in self.service.refresh(wait_s=None):
                if freshness.error:
                    log.error("%s: %s", freshness.folder, freshness.error)
        self._wake.set()

    def _idle(self) -> bool:
        with self._calls_lock:
            return self._calls == 0 and time.monotonic() - self._last_call >= IDLE_S

    def _deep_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set() and self.start_error is None:
                if not self._idle():
                    self._stop.wait(IDLE_S / 2)
                    continue
                try:
                    done = self.service.fill_deep(max_chunks=DEEP_STEP, cancel=self._stop)
                except MoseError as err:
                    log.warning("deep pass: %s", err)
                    break
                if done == 0:
                    break
            trim()  # idle: hand freed heap back to the system

    # -- calls

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a service call in a worker thread; domain errors become tool errors."""
        with self._calls_lock:
            self._calls += 1
        try:
            await anyio.to_thread.run_sync(self.ready.wait)
            if self.start_error is not None:
                raise ToolError(f"the index could not be opened: {self.start_error}")
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except MoseError as err:
            raise ToolError(str(err)) from None
        finally:
            with self._calls_lock:
                self._calls -= 1
                self._last_call = time.monotonic()
            self._wake.set()

    def hit(self, h: ServiceHit, max_lines: int) -> Hit:
        lines = h.text.splitlines()
        return Hit(workspace=str(h.folder), path=h.path, start_line=h.start_line + 1,
                   end_line=h.end_line + 1, symbol=h.symbol, kind=h.kind, language=h.language,
                   score=round(h.score, 4), code="\n".join(lines[:max_lines]),
                   truncated=len(lines) > max_lines)

    def search_output(self, result, max_lines: int | None) -> SearchOutput:
        n = self.max_lines if max_lines is None else max_lines
        notes = []
        for f in result.freshness:
            if f.update_in_progress:
                notes.append(f"{f.folder}: an update by {f.writer or 'another client'} is in "
                             "progress; results are from what is indexed so far")
            if f.error:
                notes.append(f"{f.folder}: could not update the index first: {f.error}")
        return SearchOutput(
            hits=[self.hit(h, n) for h in result.hits],
            update_in_progress=result.update_in_progress,
            files_updated=sum(f.files_updated for f in result.freshness),
            update_ms=round(1000 * sum(f.seconds for f in result.freshness), 1),
            notes=notes)

    def folder_info(self, s: FolderStatus) -> FolderInfo:
        return FolderInfo(
            workspace=str(s.folder), index_dir=str(s.index_dir), files=s.files,
            indexed_files=s.indexed_files, chunks=s.chunks,
            deep_coverage=None if s.deep_coverage is None else round(s.deep_coverage, 4),
            pending_files=s.pending_files, update_running=s.update_running, writer=s.writer,
            model=s.model, skipped=dict(s.skipped),
            skipped_examples=[f"{k.path}: {k.message}" for k in s.skipped_files[:10]])

    @staticmethod
    def reindex_folder(r: ReindexResult) -> ReindexFolder:
        return ReindexFolder(workspace=str(r.folder), rebuilt=r.rebuilt, files_seen=r.files_seen,
                             files_indexed=r.files_indexed, files_unchanged=r.files_unchanged,
                             files_skipped=r.files_skipped, files_deleted=r.files_deleted,
                             files_renamed=r.files_renamed, chunks_embedded=r.chunks_embedded,
                             chunks=r.chunks, seconds=r.seconds)


# -- readable text


def hits_text(out: SearchOutput, several: bool) -> str:
    lines = []
    for n, h in enumerate(out.hits, 1):
        where = f"{h.workspace}/{h.path}" if several else h.path
        symbol = f"  {h.symbol}" if h.symbol else ""
        lines.append(f"{n}. {where}:{h.start_line}-{h.end_line}{symbol}  "
                     f"({h.language or 'text'}, score {h.score:.3f})")
        lines.append("```" + (h.language or ""))
        lines.append(h.code + ("\n..." if h.truncated else ""))
        lines.append("```")
    if not out.hits:
        lines.append("No results.")
    lines.extend(f"note: {note}" for note in out.notes)
    return "\n".join(lines)


def status_text(out: StatusOutput) -> str:
    lines = [f"mose {out.version}"]
    for f in out.folders:
        deep = "n/a" if f.deep_coverage is None else f"{f.deep_coverage:.0%}"
        lines.append(f"{f.workspace}: {f.indexed_files} files indexed, {f.chunks} chunks, "
                     f"deep vectors {deep}, "
                     f"{'?' if f.pending_files is None else f.pending_files} changed since "
                     f"indexed, {sum(f.skipped.values())} skipped"
                     + (f"; update running ({f.writer})" if f.update_running else ""))
    return "\n".join(lines)


def reindex_text(out: ReindexOutput) -> str:
    return "\n".join(
        f"{f.workspace}: {'rebuilt; ' if f.rebuilt else ''}{f.files_indexed} files indexed, "
        f"{f.files_deleted} deleted, {f.files_renamed} renamed, {f.chunks_embedded} chunks "
        f"embedded in {f.seconds:.1f}s; {f.chunks} chunks in the index" for f in out.folders)


def result(model: BaseModel, text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=model.model_dump(mode="json"))


def create_server(service: Service, max_lines: int = DEFAULT_MAX_LINES,
                  update: bool = True) -> tuple[MCPServer, MoseMcp]:
    """The MCP server for ``service``'s folders and the object behind its tools."""
    mose = MoseMcp(service, max_lines, update)
    app = MCPServer("mose", version=__version__, instructions=INSTRUCTIONS)
    several = len(service.folders) > 1
    read_only = ToolAnnotations(readOnlyHint=True, openWorldHint=False)

    @app.tool(description=SEARCH_DESCRIPTION, annotations=read_only)
    async def search(
        query: Annotated[str, Field(description="What the code does, in a short phrase; or a "
                                                "code snippet with kind='code'.", min_length=1)],
        limit: Annotated[int, Field(ge=1, le=100, description="Number of results.")] = 10,
        language: Annotated[str | None, Field(description="Only this language, e.g. python, "
                                                          "typescript, go.")] = None,
        path: Annotated[str | None, Field(description="Only paths matching this glob, e.g. "
                                                      "'src/**' or '**/*.py'.")] = None,
        kind: Annotated[Literal["text", "code"], Field(
            description="'text': the query is a description; 'code': a snippet.")] = "text",
        max_lines: Annotated[int | None, Field(ge=1, le=1000, description="Lines of code per "
                                               "hit (default: the server's).")] = None,
    ) -> Annotated[CallToolResult, SearchOutput]:
        found = await mose.call(service.search, query, kind=kind, limit=limit,
                                languages=(language,) if language else (), path_glob=path,
                                fresh=mose.update)
        out = mose.search_output(found, max_lines)
        return result(out, hits_text(out, several))

    @app.tool(description=SIMILAR_DESCRIPTION, annotations=read_only)
    async def similar(
        path: Annotated[str | None, Field(description="A file in the workspace (relative "
                                                      "path). Omit when pasting a snippet.")] = None,
        line: Annotated[int | None, Field(ge=1, description="1-based line: the function or "
                                                            "class around it is the query.")] = None,
        end_line: Annotated[int | None, Field(ge=1, description="With line: the query is "
                                              "lines line..end_line.")] = None,
        snippet: Annotated[str | None, Field(description="Code to match, instead of a path.")] = None,
        language: Annotated[str | None, Field(description="The snippet's language; with a "
                                              "path, only results in this language.")] = None,
        limit: Annotated[int, Field(ge=1, le=100, description="Number of results.")] = 10,
        path_glob: Annotated[str | None, Field(description="Only results whose path matches "
                                               "this glob.")] = None,
        max_lines: Annotated[int | None, Field(ge=1, le=1000, description="Lines of code per "
                                               "hit (default: the server's).")] = None,
    ) -> Annotated[CallToolResult, SearchOutput]:
        if (path is None) == (snippet is None):
            raise ToolError("send either path (optionally with line, or line and end_line) or "
                            "snippet, not both and not neither")
        if end_line is not None and line is None:
            raise ToolError("end_line needs line: send line (the first line) too")
        if line is not None and end_line is not None and end_line < line:
            raise ToolError(f"end_line {end_line} is before line {line}: send line <= end_line")
        if path is not None:
            found = await mose.call(
                service.similar, path=path, start_line=None if line is None else line - 1,
                end_line=None if end_line is None else end_line - 1, limit=limit,
                languages=(language,) if language else (), path_glob=path_glob,
                fresh=mose.update)
        else:
            found = await mose.call(service.similar, text=snippet, language=language or "",
                                    limit=limit, path_glob=path_glob, fresh=mose.update)
        out = mose.search_output(found, max_lines)
        return result(out, hits_text(out, several))

    @app.tool(description=STATUS_DESCRIPTION, annotations=read_only)
    async def status() -> Annotated[CallToolResult, StatusOutput]:
        folders = await mose.call(service.status)
        out = StatusOutput(version=__version__, folders=[mose.folder_info(s) for s in folders])
        return result(out, status_text(out))

    @app.tool(description=REINDEX_DESCRIPTION,
              annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False,
                                          idempotentHint=True, openWorldHint=False))
    async def reindex(
        rebuild: Annotated[bool, Field(description="Read and embed every file again.")] = False,
    ) -> Annotated[CallToolResult, ReindexOutput]:
        done = await mose.call(service.reindex, rebuild=rebuild)
        out = ReindexOutput(folders=[mose.reindex_folder(r) for r in done])
        return result(out, reindex_text(out))

    return app, mose


def serve(roots: list[Path], settings, max_lines: int = DEFAULT_MAX_LINES,
          update: bool = True) -> None:
    """Run the MCP server over stdio until the client closes it."""
    from ..service.core import folder_settings

    service = Service(settings)
    for root in roots:
        service.add_folder(root, folder_settings(settings, root, len(roots) > 1))
    app, mose = create_server(service, max_lines, update)
    mose.start()
    try:
        app.run("stdio")
    finally:
        mose.close()
