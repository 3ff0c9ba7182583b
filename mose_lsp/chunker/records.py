"""What chunking returns: chunks, skip reasons and the limits it works within."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

from ..errors import ConfigError

SkipCode = Literal[
    "too-large", "binary", "minified", "generated", "unsupported", "unreadable", "invalid-encoding"
]


@dataclass(frozen=True)
class SkipReason:
    """Why a file has no chunks: ``code`` for programs, ``message`` for people."""

    code: SkipCode
    message: str


@dataclass(frozen=True)
class Chunk:
    """One searchable slice of a file."""

    path: str  # workspace-relative, "/"-separated
    language: str  # language id (languages.py), "text" when unknown
    symbol: str | None  # qualified name ("Parser.parse"); None for module code and windows
    kind: str  # "function", "method", "class", "interface", "struct", "enum", "trait",
    # "impl", "record", "union", "type", "macro", "property", "module" (module-level code,
    # or a module/namespace unit when symbol is set), "window" (files without a parse)
    start_line: int  # 0-based
    end_line: int  # 0-based, inclusive
    start_byte: int  # offset into the file's UTF-8 bytes
    end_byte: int  # exclusive; text == bytes[start_byte:end_byte].decode()
    text: str
    content_hash: str  # content_hash(language, kind, symbol, text): stable across moves


@dataclass(frozen=True)
class ChunkResult:
    """What ``chunk_file``/``chunk_source`` made of one file."""

    chunks: tuple[Chunk, ...]
    skipped: SkipReason | None = None  # set (and chunks empty) when the file is not indexed
    language: str | None = None  # detected language id, when known


@dataclass(frozen=True)
class ChunkLimits:
    """Sizes that decide how files are cut and which are skipped. One source of defaults."""

    max_file_bytes: int = 1_048_576  # larger files are skipped ("too-large")
    max_lines: int = 60  # a chunk spans at most this many lines ...
    # ... and at most this many UTF-8 bytes (= characters in ASCII code; for other scripts
    # bytes track model tokens better than characters do). A longer single line is cut.
    max_chunk_bytes: int = 3_000
    overlap_lines: int = 5  # lines repeated between consecutive windows of one unit
    min_unit_lines: int = 2  # units with fewer non-blank lines stay with surrounding code
    minified_line_chars: int = 1_000  # a file with a line longer than this ...
    minified_avg_line_chars: int = 200  # ... and this average line length is "minified"
    binary_sniff_bytes: int = 8_192  # a NUL byte among the first this many means "binary"
    max_invalid_utf8_ratio: float = 0.05  # more replaced characters than this: "invalid-encoding"
    max_error_ratio: float = 0.5  # parse errors on more of the lines: keep only clean units

    def __post_init__(self) -> None:
        problems = []
        if self.max_file_bytes < 1:
            problems.append("max_file_bytes must be at least 1")
        if self.max_lines < 1:
            problems.append("max_lines must be at least 1")
        if self.max_chunk_bytes < 64:
            problems.append("max_chunk_bytes must be at least 64")
        if not 0 <= self.overlap_lines < self.max_lines:
            problems.append("overlap_lines must be at least 0 and below max_lines")
        if self.min_unit_lines < 0:
            problems.append("min_unit_lines must be at least 0")
        if self.minified_line_chars < 1 or self.minified_avg_line_chars < 1:
            problems.append("minified_line_chars and minified_avg_line_chars must be positive")
        if self.binary_sniff_bytes < 0:
            problems.append("binary_sniff_bytes must be at least 0")
        if not 0.0 <= self.max_invalid_utf8_ratio <= 1.0:
            problems.append("max_invalid_utf8_ratio must be between 0 and 1")
        if not 0.0 <= self.max_error_ratio <= 1.0:
            problems.append("max_error_ratio must be between 0 and 1")
        if problems:
            raise ConfigError("invalid chunker limits: " + "; ".join(problems))


DEFAULT_LIMITS = ChunkLimits()


def content_hash(language: str, kind: str, symbol: str | None, text: str) -> str:
    """Hex digest identifying a chunk's content (not its place): equal content, equal hash."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{language}\0{kind}\0{symbol or ''}\0".encode())
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def posix_path(path: str | PurePath) -> str:
    return str(path).replace("\\", "/")
