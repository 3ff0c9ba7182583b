"""The values that cross the store's boundary: what it reads from the indexer's chunks and
file metadata, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class ChunkLike(Protocol):
    """What :meth:`Store.replace_file` reads from a chunk (the chunker's ``Chunk`` fits)."""

    symbol: str | None
    kind: str | None
    language: str | None
    start_line: int
    end_line: int
    start_byte: int
    end_byte: int
    content_hash: str
    text: str


class FileMetaLike(Protocol):
    """What the store records about a file's content on disk."""

    size: int
    mtime_ns: int
    content_hash: str
    language: str | None


@dataclass(frozen=True)
class ChunkRow:
    """A chunk to store (input of :meth:`Store.replace_file`)."""

    symbol: str | None
    kind: str | None
    language: str | None
    start_line: int  # 0-based, inclusive
    end_line: int  # 0-based, inclusive
    start_byte: int
    end_byte: int
    content_hash: str
    text: str


@dataclass(frozen=True)
class FileMeta:
    """A file's size, modification time, content hash and language."""

    size: int
    mtime_ns: int
    content_hash: str
    language: str | None = None


@dataclass(frozen=True)
class FileState:
    """What the store knows about one file."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str
    language: str | None
    skip_code: str | None  # None when the file is indexed
    skip_message: str | None
    indexed_at: float  # unix time of the last replace_file / record_skip

    @property
    def skipped(self) -> bool:
        return self.skip_code is not None


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk with its file path (output of :meth:`Store.get_chunks`)."""

    id: int
    path: str
    symbol: str | None
    kind: str | None
    language: str | None
    start_line: int
    end_line: int
    start_byte: int
    end_byte: int
    content_hash: str
    text: str


class PendingChunk(NamedTuple):
    """A chunk that still lacks a vector at some exit."""

    chunk_id: int
    text: str
    language: str | None


@dataclass(frozen=True)
class ReplaceResult:
    """What :meth:`Store.replace_file` did."""

    chunk_ids: list[int]  # id of each input chunk, in input order
    added: list[int]  # new chunk ids (embedded from the given vectors)
    reused: list[int]  # kept ids (same content hash): vectors of every exit kept
    removed: list[int]  # ids dropped with their vectors


@dataclass(frozen=True)
class StoreStats:
    """Counts for ``mose status`` and progress reports."""

    files: int  # rows in files, indexed or skipped
    indexed_files: int
    chunks: int
    skipped: dict[str, int]  # skip_code -> files
    vectors: dict[int, int]  # exit layer -> chunks holding a vector at that exit
    index_exit: int
    rerank_exit: int | None
    shallow_coverage: float  # share of chunks with an index-exit vector (1.0 when no chunks)
    deep_coverage: float | None  # share with a rerank-exit vector; None without a rerank exit
    index_count: int  # live vectors in the in-memory vector indexes (deep + fresh)
    generation: int
    bytes_on_disk: int  # everything in the index folder
    deep_index_count: int = 0  # chunks in the deep index (0 without one)
    fresh_index_count: int = 0  # chunks in the fresh index
    extra: dict[str, Any] = field(default_factory=dict)
