"""Typed results of the service (plain dataclasses: no LSP, MCP or CLI types).

Lines are 0-based and inclusive here, as everywhere inside the runtime; front ends convert
(the MCP server and the CLI show 1-based lines, the language server sends LSP ranges).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lock import LockOwner


@dataclass(frozen=True)
class ServiceHit:
    """One result: a chunk of a workspace folder."""

    folder: Path  # the workspace folder's root
    path: str  # relative to ``folder``, posix separators
    start_line: int  # 0-based
    end_line: int  # 0-based, inclusive
    symbol: str | None
    kind: str | None
    language: str | None
    score: float  # cosine of ``exit`` (plus the lexical part when fused)
    exit: int  # the exit layer whose cosine ``score`` holds
    deep: bool  # scored by the deep (rerank) exit; shallow-scored hits rank after deep ones
    text: str  # the whole chunk
    chunk_id: int

    def code(self, max_lines: int | None = None) -> str:
        """The chunk's text, cut to ``max_lines`` lines (None: all)."""
        if max_lines is None:
            return self.text
        return "\n".join(self.text.splitlines()[:max(0, max_lines)])


@dataclass(frozen=True)
class Freshness:
    """What the service did to bring one folder up to date before answering."""

    folder: Path
    files_updated: int = 0  # files (re)indexed, deleted or renamed by this call
    chunks_embedded: int = 0
    seconds: float = 0.0  # spent on the check and the update
    update_in_progress: bool = False  # another client was writing: answered from its last commit
    writer: str | None = None  # who holds the writer lock then ("pid 123 (scan)")
    error: str | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[ServiceHit, ...]
    freshness: tuple[Freshness, ...] = ()

    @property
    def update_in_progress(self) -> bool:
        return any(f.update_in_progress for f in self.freshness)


@dataclass(frozen=True)
class SkippedFile:
    path: str
    code: str
    message: str


@dataclass(frozen=True)
class FolderStatus:
    folder: Path
    index_dir: Path
    files: int  # known to the index, indexed or skipped
    indexed_files: int
    chunks: int
    deep_coverage: float | None  # share of chunks with a deep vector (None: no deep exit or
    # no chunks yet, so that it never claims a coverage before there is anything to cover)
    pending_files: int | None  # files changed on disk since the index saw them (None: not counted)
    update_running: bool  # a writer (this or another process) holds the index's lock
    writer: str | None  # who: "pid 123 (scan)"
    model: str  # "name version"
    index_exit: int
    rerank_exit: int | None
    bytes_on_disk: int
    skipped: dict[str, int] = field(default_factory=dict)  # skip code -> files
    skipped_files: tuple[SkippedFile, ...] = ()
    owner: LockOwner | None = None  # the writer lock's owner, as ``writer`` names it
    model_name: str = ""
    model_version: str = ""
    model_path: str = ""  # the model's folder

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["folder"], data["index_dir"] = str(self.folder), str(self.index_dir)
        return data


@dataclass(frozen=True)
class ReindexResult:
    folder: Path
    rebuilt: bool
    files_seen: int
    files_indexed: int
    files_unchanged: int
    files_skipped: int
    files_deleted: int
    files_renamed: int
    chunks_embedded: int
    deep_filled: int
    seconds: float
    chunks: int  # in the index afterwards

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["folder"] = str(self.folder)
        return data
