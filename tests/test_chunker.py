"""Chunker and language detection: real-style files in every parsed language, limits, skips."""

from __future__ import annotations

import itertools
import re
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mose_lsp.chunker import (
    Chunk,
    ChunkLimits,
    chunk_file,
    chunk_source,
    chunk_text,
    content_hash,
    decode_source,
)
from mose_lsp.errors import ConfigError, MoseError
from mose_lsp.languages import PARSED_LANGUAGES, detect_language, get_parser

FIXTURES = Path(__file__).parent / "fixtures" / "chunker"
DEFAULT = ChunkLimits()
SMALL = ChunkLimits(max_lines=25, overlap_lines=3)  # splits the fixtures' classes
WORD = re.compile(r"[A-Za-z0-9_]")
LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def summary(chunks: list[Chunk]) -> list[tuple[str, str | None, int, int]]:
    return [(c.kind, c.symbol, c.start_line, c.end_line) for c in chunks]


def check_invariants(text: str, chunks: list[Chunk]) -> None:
    """Byte ranges inside the file, text == the slice, lines == the line of each offset."""
    data = text.encode("utf-8", errors="replace")
    for c in chunks:
        assert 0 <= c.start_byte < c.end_byte <= len(data), c
        assert data[c.start_byte : c.end_byte].decode("utf-8") == c.text
        assert c.start_line == len(LINE_BREAK.findall(data, 0, c.start_byte))
        assert c.end_line == len(LINE_BREAK.findall(data, 0, c.end_byte - 1))
        assert c.text.strip()
        assert c.content_hash == content_hash(c.language, c.kind, c.symbol, c.text)
    assert [(c.start_byte, c.end_byte) for c in chunks] == sorted(
        (c.start_byte, c.end_byte) for c in chunks
    )


# --------------------------------------------------------------------------------------
# Every parsed language on a real-style file: the exact units and line ranges (0-based,
# end inclusive). SMALL limits split the large classes into a header and qualified methods.

EXPECTED = [
    ("ratelimit.py", "python", DEFAULT, [
        ("module", None, 0, 12),
        ("class", "Quota", 15, 20),
        ("class", "RateLimitExceeded", 23, 24),
        ("class", "TokenBucket", 27, 79),
        ("function", "limited", 82, 92),
        ("module", None, 95, 99),
    ]),
    ("ratelimit.py", "python", SMALL, [
        ("module", None, 0, 12),
        ("class", "Quota", 15, 20),
        ("class", "RateLimitExceeded", 23, 24),
        ("class", "TokenBucket", 27, 33),
        ("method", "TokenBucket.__init__", 35, 39),
        ("method", "TokenBucket.tokens", 41, 45),
        ("method", "TokenBucket._refill", 47, 51),
        ("method", "TokenBucket.try_acquire", 53, 60),
        ("method", "TokenBucket.acquire", 62, 79),
        ("function", "limited", 82, 92),
        ("module", None, 95, 99),
    ]),
    ("eventBus.js", "javascript", DEFAULT, [
        ("module", None, 0, 3),
        ("function", "parseTopic", 5, 14),
        ("function", "matches", 16, 18),
        ("class", "EventBus", 20, 58),
        ("function", "EventBus.prototype.once", 60, 66),
        ("module", None, 68, 68),
    ]),
    ("eventBus.js", "javascript", SMALL, [
        ("module", None, 0, 3),
        ("function", "parseTopic", 5, 14),
        ("function", "matches", 16, 18),
        ("class", "EventBus", 20, 22),
        ("method", "EventBus.constructor", 24, 29),
        ("method", "EventBus.subscribe", 31, 35),
        ("method", "EventBus.publish", 37, 47),
        ("method", "EventBus.dispatch", 49, 55),
        ("method", "EventBus.size", 57, 57),
        ("function", "EventBus.prototype.once", 60, 66),
        ("module", None, 68, 68),
    ]),
    ("cache.ts", "typescript", DEFAULT, [
        ("module", None, 0, 2),
        ("interface", "CacheOptions", 4, 9),
        ("enum", "EvictionReason", 11, 15),
        ("interface", "Entry", 17, 20),
        ("class", "LruCache", 22, 77),
        ("function", "CacheStats.hitRatio", 80, 83),
        ("function", "memoize", 86, 94),
    ]),
    ("cache.ts", "typescript", SMALL, [
        ("module", None, 0, 2),
        ("interface", "CacheOptions", 4, 9),
        ("enum", "EvictionReason", 11, 15),
        ("interface", "Entry", 17, 20),
        ("class", "LruCache", 22, 27),
        ("method", "LruCache.constructor", 29, 34),
        ("method", "LruCache.get", 36, 48),
        ("method", "LruCache.set", 50, 59),
        ("method", "LruCache.getOrLoad", 61, 69),
        ("method", "LruCache.evict", 71, 76),
        ("function", "CacheStats.hitRatio", 80, 83),
        ("function", "memoize", 86, 94),
    ]),
    ("SearchBox.tsx", "tsx", DEFAULT, [
        ("module", None, 0, 0),
        ("interface", "SearchBoxProps", 2, 6),
        ("function", "useDebounced", 8, 16),
        ("function", "SearchBox", 18, 39),
        ("module", None, 41, 41),
    ]),
    ("retry.go", "go", DEFAULT, [
        ("module", None, 0, 11),
        ("struct", "Policy", 13, 20),
        ("interface", "Temporary", 22, 25),
        ("type", "Op", 27, 27),
        ("function", "Default", 29, 32),
        ("method", "Policy.Delay", 34, 47),
        ("method", "Policy.Do", 49, 67),
        ("function", "isTemporary", 69, 72),
    ]),
    ("ring_buffer.rs", "rust", DEFAULT, [
        ("module", None, 0, 3),
        ("struct", "RingBuffer", 5, 11),
        ("enum", "Push", 13, 18),
        ("trait", "Capacity", 20, 24),
        ("impl", "RingBuffer", 26, 64),
        ("impl", "Capacity for RingBuffer", 66, 74),
        ("impl", "Debug for RingBuffer", 76, 80),
        ("impl", "FromIterator for RingBuffer", 82, 91),
        ("module", "tests", 93, 95),
        ("function", "tests.overwrites_oldest", 97, 104),
    ]),
    ("ring_buffer.rs", "rust", SMALL, [
        ("module", None, 0, 3),
        ("struct", "RingBuffer", 5, 11),
        ("enum", "Push", 13, 18),
        ("trait", "Capacity", 20, 24),
        ("method", "RingBuffer.new", 27, 36),
        ("method", "RingBuffer.push", 38, 49),
        ("method", "RingBuffer.pop", 51, 59),
        ("method", "RingBuffer.iter", 61, 63),
        ("impl", "Capacity for RingBuffer", 66, 74),
        ("impl", "Debug for RingBuffer", 76, 80),
        ("impl", "FromIterator for RingBuffer", 82, 91),
        ("module", "tests", 93, 95),
        ("function", "tests.overwrites_oldest", 97, 104),
    ]),
    ("InventoryService.java", "java", DEFAULT, [
        ("module", None, 0, 4),
        ("class", "InventoryService", 6, 65),
        ("interface", "StockListener", 67, 69),
        ("record", "StockChange", 71, 77),
    ]),
    ("InventoryService.java", "java", SMALL, [
        ("module", None, 0, 4),
        ("class", "InventoryService", 6, 14),
        ("class", "InventoryService.OutOfStockException", 16, 21),
        ("enum", "InventoryService.Level", 23, 23),
        ("method", "InventoryService.restock", 25, 30),
        ("method", "InventoryService.reserve", 32, 43),
        ("method", "InventoryService.available", 45, 47),
        ("method", "InventoryService.toString", 49, 52),
        ("method", "InventoryService.level", 54, 60),
        ("method", "InventoryService.reservedFor", 62, 64),
        ("interface", "StockListener", 67, 69),
        ("record", "StockChange", 71, 77),
    ]),
    ("strbuf.c", "c", DEFAULT, [
        ("module", None, 0, 7),
        ("struct", "strbuf", 9, 13),
        ("enum", "strbuf_status", 15, 18),
        ("function", "strbuf_grow", 20, 35),
        ("function", "strbuf_append", 37, 45),
        ("function", "strbuf_printf", 47, 63),
        ("function", "strbuf_detach", 65, 71),
    ]),
    ("matrix.hpp", "cpp", DEFAULT, [
        ("module", None, 0, 6),
        ("class", "Matrix", 8, 39),
        ("method", "Matrix.transposed", 41, 49),
        ("function", "multiply", 51, 63),
        ("struct", "Shape", 65, 68),
    ]),
    ("matrix.hpp", "cpp", SMALL, [
        ("module", None, 0, 6),
        ("class", "Matrix", 8, 10),
        ("method", "Matrix.Matrix", 11, 12),
        ("class", "Matrix", 14, 15),
        ("method", "Matrix.operator()", 17, 20),
        ("method", "Matrix.operator()", 22, 25),
        ("class", "Matrix", 27, 29),
        ("method", "Matrix.check", 30, 34),
        ("class", "Matrix", 36, 39),
        ("method", "Matrix.transposed", 41, 49),
        ("function", "multiply", 51, 63),
        ("struct", "Shape", 65, 68),
    ]),
    ("OrderProcessor.cs", "csharp", DEFAULT, [
        ("module", None, 0, 8),
        ("class", "OrderProcessor", 10, 56),
        ("interface", "IOrderStore", 58, 62),
    ]),
    ("OrderProcessor.cs", "csharp", SMALL, [
        ("module", None, 0, 8),
        ("class", "OrderProcessor", 10, 19),
        ("method", "OrderProcessor.Total", 21, 28),
        ("method", "OrderProcessor.Submit", 30, 39),
        ("method", "OrderProcessor.Ship", 41, 50),
        ("class", "OrderProcessor", 52, 56),
        ("interface", "IOrderStore", 58, 62),
    ]),
    ("slugger.rb", "ruby", DEFAULT, [
        ("module", None, 0, 2),
        ("class", "Publishing.Slugger", 5, 42),
        ("method", "Publishing.slugify", 44, 46),
    ]),
    ("slugger.rb", "ruby", SMALL, [
        ("module", None, 0, 2),
        ("class", "Publishing.Slugger", 5, 10),
        ("method", "Publishing.Slugger.initialize", 12, 14),
        ("method", "Publishing.Slugger.slug_for", 16, 27),
        ("method", "Publishing.Slugger.normalize", 29, 35),
        ("method", "Publishing.Slugger.default", 38, 40),
        ("method", "Publishing.slugify", 44, 46),
    ]),
    ("UserRepository.php", "php", DEFAULT, [
        ("module", None, 0, 7),
        ("interface", "UserFinder", 9, 12),
        ("class", "UserRepository", 14, 46),
        ("trait", "Timestamps", 48, 54),
        ("function", "normalize_email", 56, 59),
    ]),
    ("UserRepository.php", "php", SMALL, [
        ("module", None, 0, 7),
        ("interface", "UserFinder", 9, 12),
        ("class", "UserRepository", 14, 19),
        ("method", "UserRepository.__construct", 21, 23),
        ("method", "UserRepository.findByEmail", 25, 32),
        ("method", "UserRepository.save", 34, 45),
        ("trait", "Timestamps", 48, 54),
        ("function", "normalize_email", 56, 59),
    ]),
    ("inventory.lua", "lua", DEFAULT, [
        ("module", None, 0, 4),
        ("function", "Inventory.new", 6, 13),
        ("method", "Inventory.add", 15, 26),
        ("method", "Inventory.remove", 28, 38),
        ("function", "weight_of", 40, 42),
        ("function", "Inventory.total_weight", 44, 50),
        ("module", None, 52, 52),
    ]),
]  # fmt: skip


def test_expected_covers_every_parsed_language() -> None:
    assert {lang for _, lang, _, _ in EXPECTED} == PARSED_LANGUAGES


@pytest.mark.parametrize(
    ("name", "language", "limits", "expected"),
    EXPECTED,
    ids=[f"{name}-{'small' if lim is SMALL else 'default'}" for name, _, lim, _ in EXPECTED],
)
def test_units_per_language(
    name: str, language: str, limits: ChunkLimits, expected: list[tuple[str, str | None, int, int]]
) -> None:
    text = read(name)
    assert detect_language(name) == language
    chunks = chunk_text(name, text, limits=limits)
    assert summary(chunks) == expected
    check_invariants(text, chunks)
    assert {c.language for c in chunks} == {language}
    assert {c.path for c in chunks} == {name}
    for c in chunks:
        assert c.end_line - c.start_line < limits.max_lines
        assert len(c.text.encode()) <= limits.max_chunk_bytes


@pytest.mark.parametrize(
    ("name", "symbol", "first_line"),
    [
        ("ratelimit.py", "Quota", "@dataclass(frozen=True)"),  # decorator
        ("eventBus.js", "parseTopic", "/**"),  # JSDoc
        ("eventBus.js", "EventBus", "// A tiny publish/subscribe bus on top of EventEmitter."),
        ("retry.go", "Policy.Delay", "// Delay returns how long to wait before attempt n (0-based)."),
        ("ring_buffer.rs", "RingBuffer", "/// A ring buffer holding at most `capacity` elements."),
        ("ring_buffer.rs", "tests", "#[cfg(test)]"),  # attribute
        ("InventoryService.java", "InventoryService.reserve", "    /**"),
        ("InventoryService.java", "InventoryService.toString", "    @Override"),
        ("strbuf.c", "strbuf_grow", "/* Makes room for at least `extra` more bytes plus the terminator. */"),
        ("matrix.hpp", "multiply", "/// Multiplies two matrices; throws if the shapes do not match."),
        ("OrderProcessor.cs", "OrderProcessor", "    /// <summary>"),
        ("slugger.rb", "Publishing.Slugger.slug_for", "    # Returns a slug for +title+, adding a counter when the plain slug is taken."),
        ("UserRepository.php", "UserRepository.save", "    /** Inserts or updates; returns the user's id. */"),
        ("inventory.lua", "Inventory.new", "--- Creates an empty inventory."),
    ],
)  # fmt: skip
def test_attached_comments_decorators_and_attributes(
    name: str, symbol: str, first_line: str
) -> None:
    chunks = chunk_text(name, read(name), limits=SMALL)
    (chunk,) = [c for c in chunks if c.symbol == symbol][:1]
    assert chunk.text.split("\n")[0] == first_line


def test_python_docstring_and_nested_functions_stay_in_their_unit() -> None:
    chunks = chunk_text("ratelimit.py", read("ratelimit.py"), limits=SMALL)
    acquire = next(c for c in chunks if c.symbol == "TokenBucket.acquire")
    assert '"""Wait until ``cost`` tokens are available' in acquire.text
    assert "def wait_time() -> float:" in acquire.text  # nested function inside its parent
    limited = next(c for c in chunks if c.symbol == "limited")
    assert "def wrapper(*args, **kwargs):" in limited.text
    assert not any(c.symbol and "wait_time" in c.symbol for c in chunks)


def test_class_header_holds_signature_docstring_and_fields() -> None:
    chunks = chunk_text("ratelimit.py", read("ratelimit.py"), limits=SMALL)
    header = next(c for c in chunks if c.symbol == "TokenBucket" and c.kind == "class")
    assert header.text.startswith("class TokenBucket:\n")
    assert "Tokens are added lazily" in header.text
    assert "clock = staticmethod(time.monotonic)" in header.text
    assert "def " not in header.text


# Modules and namespaces are always split; their bare declaration line is no chunk (the
# nested chunks' symbols carry the name).
BARE_DECLARATIONS = {"cache.ts": [79], "slugger.rb": [4]}


@pytest.mark.parametrize("name", sorted({name for name, _, _, _ in EXPECTED}))
def test_module_level_code_is_covered(name: str) -> None:
    """With default limits every line with a word on it is in some chunk, except the
    closing lines of blocks (``}``, ``end``) and bare module declarations."""
    text = read(name)
    chunks = chunk_text(name, text)
    covered = set()
    for c in chunks:
        covered.update(range(c.start_line, c.end_line + 1))
    missing = [
        (number, line)
        for number, line in enumerate(text.split("\n"))
        if number not in covered
        and WORD.search(line)
        and line.strip() not in ("end", "?>")
        and not line.lstrip().startswith("}")
    ]
    assert [number for number, _ in missing] == BARE_DECLARATIONS.get(name, [])


def test_nested_functions_are_split_out_when_the_parent_is_too_big() -> None:
    body = "".join(f"    step_{i} = compute({i})\n" for i in range(70))
    text = (
        "def pipeline(data):\n"
        '    """Run every stage."""\n'
        "    def normalise(row):\n"
        "        cleaned = row.strip()\n"
        "        return cleaned.lower()\n"
        "\n" + body + "    return [normalise(r) for r in data]\n"
    )
    chunks = chunk_text("pipeline.py", text)
    check_invariants(text, chunks)
    assert ("function", "pipeline.normalise", 2, 4) in summary(chunks)
    parts = [c for c in chunks if c.symbol == "pipeline"]
    assert len(parts) >= 2 and all(c.kind == "function" for c in parts)
    assert parts[0].text.startswith('def pipeline(data):\n    """Run every stage."""')
    assert parts[-1].text.endswith("return [normalise(r) for r in data]")


# --------------------------------------------------------------------------------------
# Windows


def big_function(lines: int) -> str:
    body = "".join(f"    total += weight_{i} * value_{i}\n" for i in range(lines))
    return f"def accumulate(values):\n    total = 0\n{body}    return total\n"


def test_large_function_is_windowed_with_overlap() -> None:
    text = "import math\n\n\n" + big_function(150)
    limits = ChunkLimits(max_lines=40, overlap_lines=5)
    chunks = chunk_text("big.py", text, limits=limits)
    check_invariants(text, chunks)
    parts = [c for c in chunks if c.symbol == "accumulate"]
    assert all(c.kind == "function" for c in parts)
    assert len(parts) >= 4
    assert parts[0].start_line == 3 and parts[0].text.startswith("def accumulate(values):")
    assert parts[-1].end_line == 3 + 152 and parts[-1].text.endswith("return total")
    for before, after in itertools.pairwise(parts):
        assert after.start_line == before.end_line + 1 - 5  # 5 lines of overlap
        assert after.end_line > before.end_line
    assert all(c.end_line - c.start_line < 40 for c in parts)


def test_window_prefers_a_blank_line_near_its_end() -> None:
    paragraphs = ["\n".join(f"    x{p}_{i} = {i}" for i in range(8)) for p in range(12)]
    text = "def setup():\n" + "\n\n".join(paragraphs) + "\n"
    chunks = chunk_text("setup.py", text, limits=ChunkLimits(max_lines=30, overlap_lines=2))
    lines = text.split("\n")
    for c in chunks[:-1]:
        assert lines[c.end_line + 1] == ""  # each window but the last ends before a blank line


def test_windows_respect_the_byte_limit_and_cut_over_long_lines() -> None:
    long_line = "    payload = '" + "é" * 2000 + "'"  # 4,000+ bytes, 2-byte characters
    text = "def blob():\n" + long_line + "\n    return payload\n" * 3
    limits = ChunkLimits(max_chunk_bytes=1000)
    chunks = chunk_text("blob.py", text, limits=limits)
    check_invariants(text, chunks)
    assert all(len(c.text.encode()) <= 1000 for c in chunks)
    assert "".join(c.text for c in chunks if c.start_line == c.end_line == 1) == long_line


def test_markdown_is_cut_at_blank_lines_with_headings_carried() -> None:
    text = read("README.md")
    limits = ChunkLimits(max_lines=12, overlap_lines=2)
    chunks = chunk_text("docs/README.md", text, limits=limits)
    check_invariants(text, chunks)
    lines = text.split("\n")
    assert {(c.kind, c.symbol, c.language) for c in chunks} == {("window", None, "markdown")}
    for c in chunks:
        assert c.start_line == 0 or lines[c.start_line - 1] == ""
        assert c.end_line == len(lines) - 2 or lines[c.end_line + 1] == ""
    covered = {n for c in chunks for n in range(c.start_line, c.end_line + 1)}
    assert {n for n, line in enumerate(lines) if line.strip()} <= covered
    # A short block ending a full window is repeated at the start of the next one.
    starts = [c.start_line for c in chunks]
    assert any(a.end_line >= b.start_line for a, b in itertools.pairwise(chunks)), starts


def test_unknown_language_and_unparsable_code_use_the_window_splitter() -> None:
    garbage = "}}} foo ((( ]]] <<< bar >>>\n" * 30
    chunks = chunk_text("broken.py", garbage)
    assert chunks and {c.kind for c in chunks} == {"window"}
    check_invariants(garbage, chunks)
    java = read("InventoryService.java")  # a file in the wrong language
    chunks = chunk_text("InventoryService.py", java)
    assert {(c.kind, c.symbol) for c in chunks} == {("window", None)}
    covered = {n for c in chunks for n in range(c.start_line, c.end_line + 1)}
    assert {n for n, line in enumerate(java.split("\n")) if WORD.search(line)} <= covered
    notes = "first note\nsecond line\n\nanother paragraph\n"
    assert summary(chunk_text("notes", notes)) == [("window", None, 0, 3)]
    assert chunk_text("notes", notes)[0].language == "text"


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("ratelimit.py", "def try_acquire(self, cost: float = 1.0) -> bool:",
         "def try_acquire(self, cost: float = 1.0 -> bool:"),
        ("eventBus.js", "  publish(topic, payload) {", "  publish(topic, payload {"),
        ("retry.go", "func (p Policy) Delay(n int) time.Duration {",
         "func (p Policy) Delay(n int time.Duration {"),
    ],
)  # fmt: skip
def test_a_half_typed_line_keeps_the_units(name: str, good: str, bad: str) -> None:
    """While a user types, one broken line must not change how the rest of the file is cut."""
    text = read(name)
    limits = SMALL if name != "retry.go" else DEFAULT
    edited = text.replace(good, bad)
    assert edited != text
    assert summary(chunk_text(name, edited, limits=limits)) == summary(
        chunk_text(name, text, limits=limits)
    )


def test_clean_units_survive_a_mostly_broken_parse() -> None:
    """An MFC message map is macro soup to the C++ grammar: most lines hold parse errors, and
    the function that parsed cleanly is still a unit."""
    entries = "".join(f"    ON_COMMAND(ID_TOOL_{i}, OnTool{i})\n" for i in range(40))
    text = (
        '#include "stdafx.h"\n#include "MainFrm.h"\n\n'
        "BEGIN_MESSAGE_MAP(CMainFrame, CFrameWnd)\n    ON_WM_CREATE()\n"
        + entries
        + "END_MESSAGE_MAP()\n\n"
        "int CMainFrame::OnCreate(LPCREATESTRUCT lpCreateStruct)\n{\n"
        "    if (CFrameWnd::OnCreate(lpCreateStruct) == -1)\n        return -1;\n"
        "    return 0;\n}\n"
    )
    chunks = chunk_text("MainFrm.cpp", text)
    check_invariants(text, chunks)
    assert summary(chunks) == [("window", None, 0, 45), ("method", "CMainFrame.OnCreate", 47, 52)]
    # With errors tolerated, the macro lines are ordinary module code.
    tolerant = chunk_text("MainFrm.cpp", text, limits=ChunkLimits(max_error_ratio=1.0))
    assert summary(tolerant)[0] == ("module", None, 0, 45)


def test_small_units_join_the_code_around_them() -> None:
    text = (
        "import os\n"
        "def one(): return 1\n"
        "def two(): return 2\n"
        "def three(): return 3\n"
        "\n"
        "\n"
        "def four():\n"
        "    return 4\n"
        "\n"
        "\n"
        "def five(): return 5\n"
    )
    assert summary(chunk_text("small.py", text)) == [
        ("module", None, 0, 3),  # the one-liners are module code with the import
        ("function", "four", 6, 7),
        ("function", "five", 10, 10),  # alone between blank lines: keeps its name
    ]


def test_empty_and_blank_files_have_no_chunks() -> None:
    assert chunk_text("empty.py", "") == []
    assert chunk_text("blank.go", "\n\n   \n\t\n") == []
    assert chunk_text("closing.js", "}\n") == []


# --------------------------------------------------------------------------------------
# Line endings and non-ASCII text


@pytest.mark.parametrize("name", ["ratelimit.py", "retry.go", "InventoryService.java"])
def test_crlf_gives_the_same_lines(name: str) -> None:
    text = read(name)
    crlf = text.replace("\n", "\r\n")
    lf_chunks, crlf_chunks = chunk_text(name, text), chunk_text(name, crlf)
    assert summary(crlf_chunks) == summary(lf_chunks)
    check_invariants(crlf, crlf_chunks)
    for lf, cr in zip(lf_chunks, crlf_chunks):
        assert cr.text == lf.text.replace("\n", "\r\n")
        assert not cr.text.endswith("\r")


def test_lone_carriage_returns_end_lines_as_in_lsp() -> None:
    text = "alpha\rbeta\r\rgamma delta\r"
    chunks = chunk_text("old-mac.txt", text)
    assert summary(chunks) == [("window", None, 0, 3)]
    check_invariants(text, chunks)


def test_non_ascii_text_keeps_lines_and_byte_offsets_right() -> None:
    text = (
        '"""Übersetzungen — 翻訳 — traductions 🚀."""\n'
        "\n"
        "GRÜSSE = {'ja': 'こんにちは', 'de': 'Grüß Gott'}\n"
        "\n"
        "\n"
        "def grüße(name: str) -> str:\n"
        '    """Sagt Grüß Gott 👋."""\n'
        '    return f"Grüß Gott, {name}"\n'
        "\n"
        "\n"
        "class Café:\n"
        "    menu = ('crème brûlée', 'ラーメン')\n"
        "\n"
        "    def order(self, dish: str) -> str:\n"
        "        return f'{dish} ✓'\n"
    )
    chunks = chunk_text("i18n.py", text)
    check_invariants(text, chunks)
    assert summary(chunks) == [
        ("module", None, 0, 2),
        ("function", "grüße", 5, 7),
        ("class", "Café", 10, 14),
    ]
    func = chunks[1]
    assert func.start_byte == len(text[: text.index("def grüße")].encode())
    assert func.start_byte != text.index("def grüße")  # bytes, not characters


def test_crlf_and_non_ascii_together_in_a_braces_language() -> None:
    text = (
        "// Ünïcödé header ✓\r\n"
        "package main\r\n"
        "\r\n"
        "// Größe gibt die Größe zurück.\r\n"
        "func Größe(s string) int {\r\n"
        "\treturn len([]rune(s)) // 字数\r\n"
        "}\r\n"
    )
    chunks = chunk_text("size.go", text)
    check_invariants(text, chunks)
    assert summary(chunks) == [("module", None, 0, 1), ("function", "Größe", 3, 6)]


# --------------------------------------------------------------------------------------
# Content hashes


def test_content_hash_is_stable_and_tracks_content() -> None:
    assert (
        content_hash("python", "function", "parse", "def parse(text):\n    return text.split()")
        == "73e61a1497df17316fc3f7e498e637c6"
    )
    text = read("retry.go")
    first = {c.symbol: c.content_hash for c in chunk_text("retry.go", text)}
    moved = {c.symbol: c.content_hash for c in chunk_text("retry.go", "\n\n// x\n" + text)}
    assert first["Policy.Do"] == moved["Policy.Do"]  # moving a unit keeps its hash
    edited = text.replace("return ctx.Err()", 'return fmt.Errorf("cancelled: %w", ctx.Err())')
    changed = {c.symbol: c.content_hash for c in chunk_text("retry.go", edited)}
    assert changed["Policy.Do"] != first["Policy.Do"]
    assert changed["Policy.Delay"] == first["Policy.Delay"]
    assert content_hash("go", "function", "a", "x") != content_hash("go", "method", "a", "x")
    assert content_hash("go", "function", "a", "x") != content_hash("go", "function", "b", "x")


# --------------------------------------------------------------------------------------
# Files and skip reasons


def write(root: Path, rel: str, content: bytes | str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_chunk_file_returns_workspace_relative_posix_paths(tmp_path: Path) -> None:
    write(tmp_path, "pkg/net/retry.go", read("retry.go"))
    result = chunk_file(tmp_path, "pkg/net/retry.go")
    assert result.skipped is None and result.language == "go"
    assert {c.path for c in result.chunks} == {"pkg/net/retry.go"}
    absolute = chunk_file(tmp_path, tmp_path / "pkg" / "net" / "retry.go")
    assert absolute.chunks == result.chunks
    with pytest.raises(ValueError):
        chunk_file(tmp_path / "pkg", tmp_path / "other.go")


@pytest.mark.parametrize(
    ("rel", "content", "code"),
    [
        ("big.py", "x = 1\n" * 400, "too-large"),
        ("image.py", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("dist/app.js", "var a=1;" * 200 + "\n", "minified"),
        ("package-lock.json", '{"lockfileVersion": 3}\n', "generated"),
        ("Cargo.lock", "# This file is automatically @generated by Cargo.\n", "generated"),
        ("static/vendor.min.js", "function a(){}\n", "generated"),
        ("api/service.pb.go", "package api\n", "generated"),
        (
            "gen/enums.go",
            "// Code generated by stringer; DO NOT EDIT.\n\npackage gen\n",
            "generated",
        ),
        ("schema.py", "# @generated by tools/gen_schema.py\nFIELDS = []\n", "generated"),
        ("photo.xyz", "just some data\n", "unsupported"),
        ("bin/runme", "echo hello\n", "unsupported"),
        ("legacy.txt", b"caf\xe9 cr\xe8me br\xfbl\xe9e " * 40, "invalid-encoding"),
    ],
)
def test_skip_reasons(tmp_path: Path, rel: str, content: bytes | str, code: str) -> None:
    write(tmp_path, rel, content)
    result = chunk_file(tmp_path, rel, ChunkLimits(max_file_bytes=2_000))
    assert result.chunks == ()
    assert result.skipped is not None and result.skipped.code == code
    assert result.skipped.message
    if code == "too-large":
        assert result.skipped.message == "file is 2.4 kB, over the 2.0 kB limit (max_file_bytes)"


def test_unreadable_files_are_skipped_not_raised(tmp_path: Path) -> None:
    missing = chunk_file(tmp_path, "gone.py")
    assert missing.skipped is not None and missing.skipped.code == "unreadable"
    (tmp_path / "pkg.py").mkdir()
    directory = chunk_file(tmp_path, "pkg.py")
    assert directory.skipped is not None and directory.skipped.code == "unreadable"


def test_too_large_uses_the_default_limit(tmp_path: Path) -> None:
    write(tmp_path, "data.json", "[" + "1," * 600_000 + "1]\n")
    result = chunk_file(tmp_path, "data.json")
    assert result.skipped is not None and result.skipped.code == "too-large"
    assert "1.0 MB" in result.skipped.message


def test_files_that_are_not_skipped(tmp_path: Path) -> None:
    # A "#!" line names the language of a file without an extension.
    write(tmp_path, "bin/deploy", "#!/usr/bin/env python3\n\ndef main():\n    print('deploy')\n")
    result = chunk_file(tmp_path, "bin/deploy")
    assert result.language == "python"
    assert ("function", "main", 2, 3) in summary(list(result.chunks))
    # A few invalid bytes are replaced; line numbers stay right.
    write(tmp_path, "notes.py", b"# caf\xe9\n\ndef f():\n    return 1\n")
    result = chunk_file(tmp_path, "notes.py")
    assert result.skipped is None
    assert summary(list(result.chunks)) == [("module", None, 0, 0), ("function", "f", 2, 3)]
    assert "\ufffd" in result.chunks[0].text
    # A C++ header named ".h" is parsed as C++.
    write(tmp_path, "include/matrix.h", read("matrix.hpp"))
    result = chunk_file(tmp_path, "include/matrix.h")
    assert result.language == "cpp"
    assert ("method", "Matrix.transposed", 41, 49) in summary(list(result.chunks))
    # A UTF-8 BOM is dropped; UTF-16 with a BOM is decoded.
    write(tmp_path, "bom.py", b"\xef\xbb\xbfdef g():\n    return 2\n")
    assert summary(list(chunk_file(tmp_path, "bom.py").chunks)) == [("function", "g", 0, 1)]
    write(tmp_path, "wide.cs", "class W\n{\n    int X;\n}\n".encode("utf-16"))
    assert summary(list(chunk_file(tmp_path, "wide.cs").chunks)) == [("class", "W", 0, 3)]
    # Long paragraphs are not "minified" in prose.
    write(tmp_path, "essay.md", ("word " * 400 + "\n\n") * 3)
    assert chunk_file(tmp_path, "essay.md").skipped is None
    # "DO NOT EDIT" in code rather than in a header comment does not mark a file generated.
    write(tmp_path, "banner.py", "BANNER = 'DO NOT EDIT'\n\ndef show():\n    print(BANNER)\n")
    assert chunk_file(tmp_path, "banner.py").skipped is None


def test_chunk_source_applies_the_content_rules_to_unsaved_text() -> None:
    assert chunk_source("src/app.min.js", "x").skipped.code == "generated"  # type: ignore[union-attr]
    minified = chunk_source("src/app.js", "let a=1;" * 500)
    assert minified.skipped is not None and minified.skipped.code == "minified"
    ok = chunk_source("src/app.py", "def f():\n    return 1\n")
    assert ok.skipped is None and summary(list(ok.chunks)) == [("function", "f", 0, 1)]


def test_decode_source() -> None:
    assert decode_source("ü\n".encode()) == "ü\n"
    binary = decode_source(b"abc\x00def")
    assert not isinstance(binary, str) and binary.code == "binary"
    assert decode_source("x".encode("utf-16")) == "x"


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="overlap_lines"):
        ChunkLimits(max_lines=10, overlap_lines=10)
    with pytest.raises(MoseError, match="max_chunk_bytes"):
        ChunkLimits(max_chunk_bytes=10)


# --------------------------------------------------------------------------------------
# Language detection


@pytest.mark.parametrize(
    ("path", "head", "language"),
    [
        ("src/app.py", None, "python"),
        ("types.pyi", None, "python"),
        ("web/index.mjs", None, "javascript"),
        ("web/App.jsx", None, "javascript"),
        ("web/api.ts", None, "typescript"),
        ("web/App.tsx", None, "tsx"),
        ("main.go", None, "go"),
        ("lib.rs", None, "rust"),
        ("Main.java", None, "java"),
        ("util.c", None, "c"),
        ("util.h", "#include <stdio.h>\nint add(int a, int b);\n", "c"),
        ("matrix.h", "#pragma once\nnamespace linalg {\nclass Matrix;\n}\n", "cpp"),
        ("engine.cc", None, "cpp"),
        ("Program.cs", None, "csharp"),
        ("Rakefile", None, "ruby"),
        ("app/models/user.rb", None, "ruby"),
        ("index.php", None, "php"),
        ("init.lua", None, "lua"),
        ("README.md", None, "markdown"),
        ("deploy.sh", None, "shell"),
        ("config.yml", None, "yaml"),
        ("pyproject.toml", None, "toml"),
        ("App.kt", None, "kotlin"),
        ("schema.sql", None, "sql"),
        ("Dockerfile", None, "dockerfile"),
        ("C:\\work\\Main.java", None, "java"),
        ("bin/tool", "#!/usr/bin/env python3.12\nprint(1)\n", "python"),
        ("bin/serve", "#!/usr/bin/env -S node --experimental-vm-modules\n", "javascript"),
        ("bin/setup", "#!/bin/bash\nset -e\n", "shell"),
        ("bin/data", "no shebang here\n", None),
        ("photo.jpeg", None, None),
        ("archive.tar.gz", None, None),
        (".env", None, None),
    ],
)
def test_detect_language(path: str, head: str | None, language: str | None) -> None:
    assert detect_language(path, head) == language


def test_parsers_are_cached_per_thread() -> None:
    assert get_parser("python") is get_parser("python")
    with ThreadPoolExecutor(max_workers=2) as pool:
        other = pool.submit(get_parser, "python").result()
    assert other is not get_parser("python")


def test_chunking_from_several_threads_agrees() -> None:
    names = sorted({name for name, _, _, _ in EXPECTED})
    texts = {name: read(name) for name in names}
    expected = {name: summary(chunk_text(name, texts[name])) for name in names}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: (n, summary(chunk_text(n, texts[n]))), names * 4))
    assert all(result == expected[name] for name, result in results)


# --------------------------------------------------------------------------------------
# Real files and fuzzing


def stdlib_sample() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = ["textwrap.py", "json/decoder.py", "json/encoder.py", "shlex.py", "dataclasses.py",
             "argparse.py", "heapq.py", "string.py", "fractions.py", "configparser.py"]  # fmt: skip
    return [stdlib / name for name in names if (stdlib / name).is_file()]


def test_real_stdlib_modules_are_fully_covered() -> None:
    """Every line with a word on it is in a chunk when no small gaps are dropped."""
    sample = stdlib_sample()
    assert len(sample) >= 8
    limits = ChunkLimits(min_unit_lines=0)
    for path in sample:
        text = path.read_text(encoding="utf-8")
        chunks = chunk_text(path.name, text, limits=limits)
        check_invariants(text, chunks)
        assert all(c.end_line - c.start_line < limits.max_lines for c in chunks)
        assert all(len(c.text.encode()) <= limits.max_chunk_bytes for c in chunks)
        covered = {n for c in chunks for n in range(c.start_line, c.end_line + 1)}
        missing = [
            n for n, line in enumerate(text.split("\n")) if n not in covered and WORD.search(line)
        ]
        assert missing == [], (path.name, missing[:5])
        methods = [c.symbol for c in chunks if c.kind == "method"]
        assert all(s and "." in s for s in methods)


EXTENSION = {
    "python": "py", "javascript": "js", "typescript": "ts", "tsx": "tsx", "go": "go",
    "rust": "rs", "java": "java", "c": "c", "cpp": "cpp", "csharp": "cs", "ruby": "rb",
    "php": "php", "lua": "lua",
}  # fmt: skip
TOKENS = [
    "def ", "class ", "fn ", "func ", "function ", "impl ", "struct ", "module ", "end", "<?php ",
    "local ", "public ", "x", "Foo", "(", ")", "{", "}", "[", "]", ":", ";", "=", "=>", "->",
    ".", ",", "'", '"', '"""', "/*", "*/", "//", "#", "--", "@", " ", "    ", "\t", "\n", "\n",
    "\r\n", "\r", "é", "翻", "🚀", "\x00", "\u2028", "\ufeff",
]  # fmt: skip
code_like = st.lists(st.sampled_from(TOKENS), max_size=120).map("".join)
FUZZ_LIMITS = ChunkLimits(max_lines=6, max_chunk_bytes=64, overlap_lines=2)


@pytest.mark.parametrize("language", sorted(PARSED_LANGUAGES) + ["markdown"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=300), code_like), small=st.booleans())
def test_fuzz_chunk_text_never_raises(language: str, text: str, small: bool) -> None:
    name = f"fuzz.{EXTENSION.get(language, 'md')}"
    chunks = chunk_text(name, text, language=language, limits=FUZZ_LIMITS if small else DEFAULT)
    check_invariants(text, chunks)
    assert {c.language for c in chunks} <= {language}


def test_lone_surrogates_do_not_raise() -> None:
    text = "def f():\n    return '\ud800'\n"
    chunks = chunk_text("s.py", text)
    assert [c.symbol for c in chunks] == ["f"]
    assert "\ufffd" in chunks[0].text


FIXTURE_NAMES = sorted({name for name, _, _, _ in EXPECTED})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(FIXTURE_NAMES),
    cuts=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 400), st.booleans()), max_size=4),
    small=st.booleans(),
)
def test_fuzz_edited_real_files(
    name: str, cuts: list[tuple[float, int, bool]], small: bool
) -> None:
    """Half-typed code: slices of real files deleted or duplicated at random."""
    text = read(name)
    for where, length, duplicate in cuts:
        at = int(where * len(text))
        piece = text[at : at + length]
        text = text[:at] + (piece + piece if duplicate else "") + text[at + length :]
    chunks = chunk_text(name, text, limits=FUZZ_LIMITS if small else SMALL)
    check_invariants(text, chunks)
