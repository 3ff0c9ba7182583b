"""The query of "find similar code", for every front end: the innermost chunk around a line,
exactly a range of lines, a whole file, or a pasted snippet, from text (the file on disk, or an
editor's unsaved buffer), and which hits are the query's own code (left out of its answer).

Pure: no index, no model. The language server (``mose.similar``) and the service
(``Service.similar``: CLI, MCP) build their queries here, then search with ``Searcher.search``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MoseError

EXTRA = 8  # more hits asked of the searcher, since the query's own code is dropped
EXTRA_WHOLE_FILE_MAX = 200


class QueryError(MoseError):
    """No query can be made from what was given; the message says why and what to give."""


@dataclass(frozen=True)
class SimilarQuery:
    text: str
    lang: str
    rel: str | None  # the file the query comes from (None: a pasted snippet)
    lines: tuple[int, int] | None  # its own lines, 0-based inclusive (None: the whole file)
    content_hash: str | None = None  # the chunk's, when the query is the chunk at a line
    symbol: str | None = None  # ... and its symbol

    def candidates(self, k: int) -> int:
        """How many hits to ask for so that ``k`` remain once the own code is left out (a
        whole file's own chunks are about one per five lines)."""
        if self.lines is not None or self.rel is None:
            return k + EXTRA
        return k + min(EXTRA_WHOLE_FILE_MAX, len(self.text.splitlines()) // 5 + EXTRA)

    def is_own(self, rel: str, start_line: int, end_line: int, text: str,
               symbol: str | None) -> bool:
        """Whether a hit (in the query's folder) is the query's own code: the same snippet;
        anything in the whole file; a chunk overlapping the query's lines, or another chunk of
        its symbol in that file (the other windows of a long function)."""
        if self.rel is None:
            return " ".join(text.split()) == " ".join(self.text.split())
        if rel != self.rel:
            return False
        if self.lines is None or (self.symbol is not None and symbol == self.symbol):
            return True
        return not (end_line < self.lines[0] or start_line > self.lines[1])


def snippet_query(text: str, lang: str = "") -> SimilarQuery:
    if not text.strip():
        raise QueryError("the snippet is empty: paste the code to match")
    return SimilarQuery(text, lang, None, None)


def file_query(rel: str, text: str, start: int | None = None, end: int | None = None,
               max_file_bytes: int = 1_000_000) -> SimilarQuery:
    """The query from ``text``, the content of ``rel``: the whole text (no line), the lines
    ``start..end`` (0-based, inclusive; ``end`` is clipped to the last line), or the innermost
    chunk around ``start`` (no ``end``), as the chunker cuts the file for the index."""
    from .chunker import ChunkLimits, chunk_source
    from .filetypes import detect_language

    lang = detect_language(rel) or ""
    lines = text.splitlines()
    if start is None:
        if end is not None:
            raise QueryError("an end line needs a start line")
        if not text.strip():
            raise QueryError(f"{rel} is empty")
        return SimilarQuery(text, lang, rel, None)
    if start < 0 or (end is not None and end < start):
        raise QueryError(f"bad line range {start + 1}-{(end if end is not None else start) + 1}:"
                         " the start must be a line of the file, at most the end")
    if start >= len(lines):
        raise QueryError(f"line {start + 1} is past the end of {rel} ({len(lines)} lines)")
    if end is not None:
        end = min(end, len(lines) - 1)
        body = "\n".join(lines[start:end + 1])
        if not body.strip():
            raise QueryError(f"lines {start + 1}-{end + 1} of {rel} are blank")
        return SimilarQuery(body, lang, rel, (start, end))
    result = chunk_source(rel, text, ChunkLimits(max_file_bytes=max_file_bytes))
    if result.skipped is not None:
        raise QueryError(f"{rel} is not indexed code ({result.skipped.message})")
    around = [c for c in result.chunks if c.start_line <= start <= c.end_line]
    if not around:
        raise QueryError(f"no code around line {start + 1} of {rel}; give a line inside a "
                         "function or class, or a line range")
    chunk = min(around, key=lambda c: c.end_line - c.start_line)
    return SimilarQuery(chunk.text, chunk.language or lang, rel,
                        (chunk.start_line, chunk.end_line), chunk.content_hash, chunk.symbol)
