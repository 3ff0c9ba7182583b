"""Files -> chunks: the units of code that get embedded, stored and returned as hits.

A chunk is a contiguous slice of one file: ``chunk.text`` is exactly the file's UTF-8 bytes
``[start_byte, end_byte)``, decoded. Lines are 0-based and ``end_line`` is inclusive (the
last line holding chunk text), as in LSP; ``\\n``, ``\\r\\n`` and a lone ``\\r`` each end a
line, as in LSP.

How a parsed file is cut (languages.py says which syntax nodes are units, per language):

* every function, method, class, struct, interface, trait, impl, enum, module ... is a unit,
  with the comments, decorators and attributes directly above it (no blank line between);
  a unit starts at the beginning of its first line when only indentation precedes it;
* a unit that fits the limits (``max_lines`` and ``max_chunk_bytes``) is one chunk, nested
  units included (a small class holds its methods, a function its inner functions);
* a unit that does not fit emits its nested units as chunks of their own, and its remaining
  lines (a class's signature, docstring and fields; the body of a function around its inner
  functions) as windows of the same kind and symbol; a large unit with nothing nested is cut
  into windows of whole lines that overlap by ``overlap_lines``, each repeating the symbol;
* modules and namespaces (Rust ``mod``, Ruby ``module``, TypeScript ``namespace``) are always
  split this way;
* units with fewer than ``min_unit_lines`` non-blank lines are no chunk of their own: they
  stay with the code around them (one-line getters are part of their class's windows), unless
  such a unit is alone between blank lines, where it keeps its kind and name;
* code outside every unit (module docstring, imports, constants, scripts) is grouped into
  "module" windows, so every line with a word on it is searchable. Windows of such code (and
  of text files) are packed from blank-line-separated blocks; a short last block is repeated
  at the start of the next window (a heading stays with its paragraph); blocks too large for
  one window are cut by lines with overlap, and a single line over ``max_chunk_bytes`` is cut
  into pieces;
* dropped as noise: leftovers with no word but ``end``; a short leftover (under
  ``min_unit_lines``) that opens with a closing bracket (``}  // namespace x``); inside a
  split unit, any short leftover (a bare ``class Foo(Base):`` or ``mod tests {`` line, a lone
  field or section comment), since the nested chunks' symbols already name the unit;
* symbols are qualified by the enclosing units: ``ClassName.method``, ``outer.inner``,
  ``Outer.Inner.method``; a function inside a class-like unit has kind "method".

Files with no parser are cut by the window splitter alone (kind "window"). In files whose
parse is mostly errors (``max_error_ratio``: macro-heavy C, a file in the wrong language) only
the units that parsed cleanly are kept, and the rest is cut into "window" chunks.

Which files are chunked at all is decided by ``chunk_file``/``chunk_source``: too large,
binary, undecodable, minified, generated and unsupported files are skipped with a typed
:class:`SkipReason` that ``mose status`` shows.

Performance: one parse per file with a cached parser, one tree-sitter query for all units
(the tree is walked in C), then work linear in the number of units and lines.
"""

from __future__ import annotations

import hashlib
import os
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path, PurePath, PurePosixPath
from typing import Literal

from tree_sitter import Node, QueryCursor

from .errors import ConfigError
from .languages import (
    CLASS_LIKE_KINDS,
    PROSE_LANGUAGES,
    LanguageSpec,
    Name,
    detect_language,
    get_parser,
    get_query,
    language_spec,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Chunk",
    "ChunkLimits",
    "ChunkResult",
    "SkipCode",
    "SkipReason",
    "chunk_file",
    "chunk_source",
    "chunk_text",
    "content_hash",
    "decode_source",
]

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


# --------------------------------------------------------------------------------------
# Skipping files

# Lockfiles and other files that tools write; their names are enough.
_GENERATED_NAMES = frozenset(
    {
        "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lock",
        "bun.lockb", "Cargo.lock", "poetry.lock", "Pipfile.lock", "uv.lock", "pdm.lock",
        "composer.lock", "Gemfile.lock", "go.sum", "go.work.sum", "flake.lock", "mix.lock",
        "Package.resolved", "packages.lock.json", "pubspec.lock", "Podfile.lock",
        "gradle.lockfile", "conda-lock.yml",
    }
)  # fmt: skip
_GENERATED_SUFFIXES = (
    ".min.js", ".min.mjs", ".min.cjs", ".min.css", "-min.js", ".bundle.js", ".pb.go",
    ".pb.gw.go", ".pb.cc", ".pb.h", "_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".pb.swift",
    ".pb.rs", ".g.dart", ".freezed.dart", ".designer.cs", ".g.cs", ".g.i.cs",
)  # fmt: skip
# Generators announce themselves in the file's header comment: the comment lines at the top,
# before any code or docstring (after a "#!" line and blank lines). Only that header counts,
# and only statements generators write, not any mention of the words (a docstring saying
# "helpers for auto-generated forms" is hand-written code).
_GENERATED_HEADER_LINES = 40  # how far the header may run (licence blocks come first)
_GENERATED_MARKER = re.compile(
    r"@generated\b|\bDO NOT EDIT\b|\bDO NOT MODIFY\b|<auto-?generated\b"
    r"|\b(?:auto-?generated|automatically generated|generated automatically|code generated"
    r"|generated)\s+(?:by|from|with|using)\b"
    r"|\b(?:this|the)\s+(?:file|code|module|source)\s+(?:is|was|has been)\s+"
    r"(?:auto-?generated|automatically generated|generated)\b",
    re.IGNORECASE,
)
_COMMENT_LEADERS = ("#", "//", "/*", "*", "--", "<!--", ";", "%", "{-", "(*")


def _generated_name(path: str) -> str | None:
    name = PurePosixPath(path).name
    if name in _GENERATED_NAMES:
        return f"{name} is a lockfile"
    lower = name.lower()
    for suffix in _GENERATED_SUFFIXES:
        if lower.endswith(suffix):
            return f"*{suffix} files are generated"
    return None


def _generated_marker(text: str) -> str | None:
    """A generator's marker in the header comment (see ``_GENERATED_MARKER``), if any."""
    lines = text.split("\n", _GENERATED_HEADER_LINES)[:_GENERATED_HEADER_LINES]
    in_block = False  # inside a /* ... */ or <!-- ... --> comment
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or (number == 0 and stripped.startswith("#!")):
            continue
        if not in_block and not stripped.startswith(_COMMENT_LEADERS):
            return None  # the first code (or docstring) line ends the header
        match = _GENERATED_MARKER.search(stripped)
        if match:
            return f"marker {match.group(0)!r} on line {number + 1}"
        if stripped.startswith(("/*", "<!--")):
            in_block = "*/" not in stripped and "-->" not in stripped
        elif in_block and ("*/" in stripped or "-->" in stripped):
            in_block = False
    return None


def _minified(text: str, limits: ChunkLimits) -> str | None:
    lines = text.split("\n")
    longest = max(map(len, lines))
    average = len(text) / len(lines)
    if longest > limits.minified_line_chars and average > limits.minified_avg_line_chars:
        return f"longest line {longest:,} characters, average {average:,.0f}"
    return None


def decode_source(raw: bytes, limits: ChunkLimits = DEFAULT_LIMITS) -> str | SkipReason:
    """Decode a file's bytes to text, or say why it cannot be indexed.

    UTF-8 (a BOM is dropped); UTF-16 with a BOM; otherwise UTF-8 with invalid bytes replaced
    by U+FFFD when at most ``max_invalid_utf8_ratio`` of the characters are replaced.
    Chunk byte offsets refer to the UTF-8 encoding of the returned text, which is the file
    itself for valid UTF-8 without a BOM.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as err:
            return SkipReason("invalid-encoding", f"invalid UTF-16 despite its BOM ({err.reason})")
    if b"\0" in raw[: limits.binary_sniff_bytes]:
        return SkipReason(
            "binary",
            f"binary file (NUL byte in the first {len(raw[: limits.binary_sniff_bytes]):,} bytes)",
        )
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - raw.count("\ufffd".encode())
    ratio = replaced / max(1, len(text))
    if ratio > limits.max_invalid_utf8_ratio:
        return SkipReason(
            "invalid-encoding",
            f"not UTF-8: {replaced:,} undecodable characters ({ratio:.0%} of the text)",
        )
    return text


def chunk_source(
    path: str | PurePath,
    text: str,
    limits: ChunkLimits = DEFAULT_LIMITS,
    language: str | None = None,
) -> ChunkResult:
    """Apply the content skip rules to ``text`` (a file's content or an unsaved buffer),
    then chunk it. ``path`` is workspace-relative; ``language`` overrides detection."""
    rel = _posix(path)
    lang = language or detect_language(rel, text[:8192])
    if lang is None:
        return ChunkResult((), _unsupported(rel))
    reason = _generated_name(rel) or _generated_marker(text)
    if reason:
        return ChunkResult((), SkipReason("generated", f"generated file: {reason}"), lang)
    size = len(text.encode("utf-8", errors="replace"))
    if size > limits.max_file_bytes:
        return ChunkResult((), _too_large(size, limits), lang)
    if lang not in PROSE_LANGUAGES and text:
        reason = _minified(text, limits)
        if reason:
            return ChunkResult((), SkipReason("minified", f"minified file: {reason}"), lang)
    return ChunkResult(tuple(chunk_text(rel, text, lang, limits)), None, lang)


def chunk_file(
    root: str | os.PathLike[str],
    path: str | os.PathLike[str],
    limits: ChunkLimits = DEFAULT_LIMITS,
) -> ChunkResult:
    """Read and chunk one file of the workspace at ``root``.

    ``path`` is absolute or relative to ``root`` and must lie inside it. Never raises for
    file problems: they come back as ``ChunkResult.skipped``.
    """
    root_path = Path(root)
    full = Path(path) if Path(path).is_absolute() else root_path / path
    rel = os.path.relpath(full, root_path)
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{full} is not inside the workspace {root_path}")
    rel = PurePath(rel).as_posix()
    reason = _generated_name(rel)
    if reason:
        return ChunkResult((), SkipReason("generated", f"generated file: {reason}"))
    language = detect_language(rel)
    if language is None and PurePosixPath(rel).suffix:
        return ChunkResult((), _unsupported(rel))  # extensionless files may have a "#!" line
    try:
        size = full.stat().st_size
        if not full.is_file():
            return ChunkResult((), SkipReason("unreadable", "not a regular file"), language)
        if size > limits.max_file_bytes:
            return ChunkResult((), _too_large(size, limits), language)
        with full.open("rb") as handle:
            raw = handle.read(limits.max_file_bytes + 1)
    except OSError as err:
        return ChunkResult(
            (), SkipReason("unreadable", f"cannot read: {err.strerror or err}"), language
        )
    if len(raw) > limits.max_file_bytes:
        return ChunkResult((), _too_large(len(raw), limits), language)
    text = decode_source(raw, limits)
    if isinstance(text, SkipReason):
        return ChunkResult((), text, language)
    return chunk_source(rel, text, limits)  # detects again with the head: "#!", C++ ".h"


def _unsupported(path: str) -> SkipReason:
    suffix = PurePosixPath(path).suffix
    what = f"'{suffix}' files" if suffix else "files without a known extension or #! line"
    return SkipReason("unsupported", f"unsupported file type: {what} are not indexed")


def _too_large(size: int, limits: ChunkLimits) -> SkipReason:
    return SkipReason(
        "too-large",
        f"file is {_size(size)}, over the {_size(limits.max_file_bytes)} limit (max_file_bytes)",
    )


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1_000 else f"{n} bytes"


def _posix(path: str | PurePath) -> str:
    return str(path).replace("\\", "/")


# --------------------------------------------------------------------------------------
# Chunking text


def chunk_text(
    path: str | PurePath,
    text: str,
    language: str | None = None,
    limits: ChunkLimits = DEFAULT_LIMITS,
) -> list[Chunk]:
    """Cut ``text`` (the content of ``path``) into chunks, sorted by position.

    No skip rules apply (see ``chunk_source``); never raises on any text. ``language``
    defaults to detection from the path; unknown languages are cut as plain text.
    Lone surrogates (not encodable as UTF-8) are replaced by U+FFFD first.
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = _SURROGATE.sub("\ufffd", text).encode("utf-8")
    rel = _posix(path)
    lang = language or detect_language(rel, text[:8192]) or "text"
    cutter = _Cutter(_Source(data), rel, lang, limits)
    spec = language_spec(lang)
    if spec is None or not data.strip():
        cutter.windows_of_file("window")
    else:
        root = get_parser(lang).parse(data).root_node
        if _error_ratio(root, cutter.src) <= limits.max_error_ratio:
            cutter.module(_collect_units(cutter.src, spec, root, limits), "module")
        else:  # errors everywhere: keep only the units that parsed cleanly
            cutter.module(_collect_units(cutter.src, spec, root, limits, clean=True), "window")
    return sorted(cutter.out, key=lambda c: (c.start_byte, c.end_byte))


def _error_ratio(root: Node, src: _Source) -> float:
    """The share of the file's lines that hold a parse error (ERROR or MISSING nodes)."""
    if not root.has_error:
        return 0.0
    if root.is_error:
        return 1.0
    spans: list[tuple[int, int]] = []
    stack = [root]
    while stack:  # walks only the paths that lead to errors
        for child in stack.pop().children:
            if child.is_error or child.is_missing:
                first = src.line_of(child.start_byte)
                spans.append((first, src.line_of(max(child.start_byte, child.end_byte - 1))))
            elif child.has_error:
                stack.append(child)
    spans.sort()
    bad, reach = 0, -1
    for first, last in spans:
        if last > reach:
            bad += last - max(first, reach + 1) + 1
            reach = last
    return bad / (src.last_line + 1)


_SURROGATE = re.compile("[\ud800-\udfff]")
_SPACE = frozenset(b" \t\r\n\f\v")
_NEWLINES = re.compile(rb"\r\n|\r|\n")
_CLOSERS = (b"}", b")", b"]")
_WORD = re.compile(rb"[A-Za-z0-9_\x80-\xff]+")


class _Source:
    """A file's UTF-8 bytes and its line table."""

    __slots__ = ("data", "ends", "starts")

    def __init__(self, data: bytes):
        self.data = data
        if b"\r" not in data:
            lengths = [len(line) for line in data.split(b"\n")]
            self.starts = list(accumulate((n + 1 for n in lengths[:-1]), initial=0))
            self.ends = [s + n for s, n in zip(self.starts, lengths)]
        else:
            breaks = list(_NEWLINES.finditer(data))
            self.starts = [0] + [m.end() for m in breaks]
            self.ends = [m.start() for m in breaks] + [len(data)]

    @property
    def last_line(self) -> int:
        return len(self.starts) - 1

    def line_of(self, offset: int) -> int:
        return bisect_right(self.starts, offset) - 1

    def blank(self, line: int) -> bool:
        return not self.data[self.starts[line] : self.ends[line]].strip()

    def rstrip(self, start: int, end: int) -> int:
        """``end`` moved back over trailing whitespace, not before ``start``."""
        data = self.data
        while end > start and data[end - 1] in _SPACE:
            end -= 1
        return end

    def meaningful(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` holds a word other than ``end`` (a closing keyword)."""
        return any(m.group() != b"end" for m in _WORD.finditer(self.data, start, end))


@dataclass(eq=False)
class _Unit:
    kind: str
    symbol: str | None
    scope: str | None  # what nested units' symbols start with (usually ``symbol``)
    start: int  # byte offset, extended over attached comments and indentation
    end: int  # byte offset, exclusive, trailing whitespace trimmed
    first: int  # line of start
    last: int  # line of end - 1
    tiny: bool  # fewer non-blank lines than limits.min_unit_lines
    children: list[_Unit] = field(default_factory=list)


_ALWAYS_SPLIT_KINDS = frozenset({"module"})
_MAX_DEPTH = 64  # units nested deeper than this are windowed whole (bounds recursion)


def _collect_units(
    src: _Source, spec: LanguageSpec, root: Node, limits: ChunkLimits, clean: bool = False
) -> list[_Unit]:
    """The units of a parsed file as a forest (outermost first, in file order).

    With ``clean``, units containing a parse error are left out (their code becomes
    leftovers; clean units nested in them stay).
    """
    found: dict[tuple[int, int, str], tuple[int, str, Node]] = {}
    for pattern, captures in QueryCursor(get_query(spec.id)).matches(root):
        for kind, nodes in captures.items():
            for node in nodes:
                key = (node.start_byte, node.end_byte, node.type)
                if key not in found or pattern < found[key][0]:
                    found[key] = (pattern, kind, node)

    outers = []
    for _, kind, node in found.values():
        outer = _outer(node, spec)
        outers.append((outer.start_byte, -outer.end_byte, kind, node, outer))
    outers.sort(key=lambda item: (item[0], item[1]))

    roots: list[_Unit] = []
    stack: list[tuple[int, _Unit]] = []  # (end byte of the enclosing outer node, unit)
    namer = spec.namer
    for start, neg_end, kind, node, outer in outers:
        if clean and node.has_error:
            continue
        while stack and stack[-1][0] < -neg_end:
            stack.pop()
        parent = stack[-1][1] if stack else None
        name: Name | None = namer(node) if namer else _default_name(node)
        if kind == "function" and (
            (name is not None and name.method) or (parent and parent.kind in CLASS_LIKE_KINDS)
        ):
            kind = "method"
        symbol = scope = None
        if name is not None:
            prefix = f"{parent.scope}." if parent and parent.scope else ""
            symbol = prefix + name.text
            scope = prefix + (name.scope or name.text)
        floor = parent.start if parent else 0  # a unit never starts before its parent
        unit = _make_unit(src, spec, outer, kind, symbol, scope, floor, limits)
        (parent.children if parent else roots).append(unit)
        stack.append((-neg_end, unit))
    return roots


def _default_name(node: Node) -> Name | None:
    name = node.child_by_field_name("name")
    if name is None or name.text is None:
        return None
    return Name(" ".join(name.text.decode("utf-8", errors="replace").split()))


def _outer(node: Node, spec: LanguageSpec) -> Node:
    """The node with the wrappers that belong to this unit (decorators, ``export``, ...)."""
    while True:
        parent = node.parent
        if parent is None:
            return node
        ignored = spec.wrappers.get(parent.type)
        if ignored is None:
            return node
        if sum(1 for c in parent.named_children if c.type not in ignored) != 1:
            return node
        node = parent


def _make_unit(
    src: _Source,
    spec: LanguageSpec,
    outer: Node,
    kind: str,
    symbol: str | None,
    scope: str | None,
    floor: int,
    limits: ChunkLimits,
) -> _Unit:
    data = src.data
    start = outer.start_byte
    first = src.line_of(start)
    # Attach comments/attributes directly above (each on its own line, no blank line between),
    # also when the grammar puts them before the block the unit opens (Ruby's body_statement).
    node, sibling = outer, outer.prev_named_sibling
    while sibling is None and node.parent is not None and node.parent.start_byte == start:
        node = node.parent
        sibling = node.prev_named_sibling
    while sibling is not None and sibling.type in spec.prefixes and sibling.start_byte >= floor:
        s_start = sibling.start_byte
        s_first = src.line_of(s_start)
        s_last = src.line_of(max(s_start, src.rstrip(s_start, sibling.end_byte) - 1))
        if s_last < first - 1 or data[src.starts[s_first] : s_start].strip():
            break
        start, first = s_start, s_first
        sibling = sibling.prev_named_sibling
    line_start = src.starts[first]
    if not data[line_start:start].strip():
        start = line_start
    end = src.rstrip(start, outer.end_byte)
    if end <= start:  # an empty node (possible in error recovery)
        end = max(outer.end_byte, start)
    last = src.line_of(max(start, end - 1))
    nonblank = 0
    for line in range(first, last + 1):
        if not src.blank(line):
            nonblank += 1
            if nonblank >= limits.min_unit_lines:
                break
    return _Unit(kind, symbol, scope, start, end, first, last, nonblank < limits.min_unit_lines)


class _Cutter:
    """Turns units and line ranges into chunks (collected in ``out``)."""

    def __init__(self, src: _Source, path: str, language: str, limits: ChunkLimits):
        self.src, self.path, self.language, self.limits = src, path, language, limits
        self.out: list[Chunk] = []

    # -- entry points

    def windows_of_file(self, kind: str) -> None:
        src = self.src
        for start, end in self._block_windows(0, src.last_line):
            self._emit(start, end, kind, None)

    def module(self, units: list[_Unit], kind: str) -> None:
        """Chunk a parsed file: its units, then its other code as windows of ``kind``."""
        for unit in units:
            if not unit.tiny:
                self._unit(unit)
        self._leftovers(0, self.src.last_line, units, 0, len(self.src.data), kind, None)

    # -- units

    def _fits(self, unit: _Unit) -> bool:
        return (
            unit.last - unit.first < self.limits.max_lines
            and unit.end - unit.start <= self.limits.max_chunk_bytes
        )

    def _unit(self, unit: _Unit, depth: int = 0) -> None:
        if self._fits(unit) and unit.kind not in _ALWAYS_SPLIT_KINDS:
            self._emit(unit.start, unit.end, unit.kind, unit.symbol)
            return
        nested = [c for c in unit.children if not c.tiny] if depth < _MAX_DEPTH else []
        if not nested:
            for start, end in self._line_windows(unit.first, unit.last):
                self._emit(max(start, unit.start), min(end, unit.end), unit.kind, unit.symbol)
            return
        for child in nested:
            self._unit(child, depth + 1)
        self._leftovers(
            unit.first,
            unit.last,
            unit.children,
            unit.start,
            unit.end,
            unit.kind,
            unit.symbol,
            split=True,
        )

    def _leftovers(
        self,
        first: int,
        last: int,
        children: Sequence[_Unit],
        lo: int,
        hi: int,
        kind: str,
        symbol: str | None,
        split: bool = False,
    ) -> None:
        """Chunk the lines of ``first..last`` that no emitted child covers.

        Gaps shorter than ``min_unit_lines`` that open with a closing bracket are dropped; in a
        ``split`` unit all such short gaps are (a bare ``class Foo(Base):`` or ``impl Foo {``
        line, a lone field or section comment): the nested chunks' symbols name the unit.
        A gap holding just one small unit becomes that unit's chunk.
        """
        src = self.src
        tiny: list[_Unit] = []
        gaps: list[tuple[int, int]] = []
        cursor = first
        for child in children:
            if child.tiny:
                tiny.append(child)
                continue
            if child.first > cursor:
                gaps.append((cursor, child.first - 1))
            cursor = max(cursor, child.last + 1)
        if cursor <= last:
            gaps.append((cursor, last))
        tiny_firsts = [t.first for t in tiny]
        for a, b in gaps:
            while a <= b and src.blank(a):
                a += 1
            while b >= a and src.blank(b):
                b -= 1
            if a > b:
                continue
            start, end = max(src.starts[a], lo), min(src.ends[b], hi)
            if start >= end or not src.meaningful(start, end):
                continue
            small = b - a + 1 < self.limits.min_unit_lines
            if small and src.data[start:end].lstrip()[:1] in _CLOSERS:
                continue  # "}  // namespace x", "});"
            # A gap whose only words are one small unit (and closing braces) is that unit.
            inside = tiny[bisect_left(tiny_firsts, a) : bisect_right(tiny_firsts, b)]
            if len(inside) == 1:
                only = inside[0]
                if (
                    only.end - only.start <= self.limits.max_chunk_bytes
                    and not src.meaningful(start, only.start)
                    and not src.meaningful(only.end, end)
                ):
                    self._emit(only.start, only.end, only.kind, only.symbol)
                    continue
            if small and split:
                continue  # a lone declaration line, field or section comment of a split unit
            for w_start, w_end in self._block_windows(a, b):
                self._emit(max(w_start, lo), min(w_end, hi), kind, symbol)

    # -- windows (byte ranges of whole lines, except pieces of over-long lines)

    def _fits_lines(self, a: int, b: int) -> bool:
        return (
            b - a < self.limits.max_lines
            and self.src.ends[b] - self.src.starts[a] <= self.limits.max_chunk_bytes
        )

    def _block_windows(self, a: int, b: int) -> Iterator[tuple[int, int]]:
        """Pack the blank-line-separated blocks of lines ``a..b`` into windows."""
        src = self.src
        blocks: list[tuple[int, int]] = []
        line = a
        while line <= b:
            if src.blank(line):
                line += 1
                continue
            end = line
            while end < b and not src.blank(end + 1):
                end += 1
            blocks.append((line, end))
            line = end + 2
        overlap = self.limits.overlap_lines
        cur_a = cur_b = last_block = -1
        for s, e in blocks:
            if cur_a >= 0 and self._fits_lines(cur_a, e):
                cur_b, last_block = e, s
                continue
            if cur_a >= 0:
                yield src.starts[cur_a], src.ends[cur_b]
                # Repeat a short last block (a heading, a signature) before the next one.
                if (
                    last_block > cur_a
                    and cur_b - last_block < overlap
                    and self._fits_lines(last_block, e)
                ):
                    cur_a, cur_b, last_block = last_block, e, s
                    continue
                cur_a = -1
            if self._fits_lines(s, e):
                cur_a, cur_b, last_block = s, e, s
            else:
                yield from self._line_windows(s, e)
        if cur_a >= 0:
            yield src.starts[cur_a], src.ends[cur_b]

    def _line_windows(self, a: int, b: int) -> Iterator[tuple[int, int]]:
        """Windows of at most max_lines/max_chunk_bytes over lines ``a..b``, overlapping."""
        src, limits = self.src, self.limits
        starts, ends = src.starts, src.ends
        cap = limits.max_chunk_bytes
        i = a
        while i <= b:
            while i <= b and src.blank(i):
                i += 1
            if i > b:
                return
            if ends[i] - starts[i] > cap:
                yield from self._line_pieces(i)
                i += 1
                continue
            j = i
            while j < b and j + 1 - i < limits.max_lines and ends[j + 1] - starts[i] <= cap:
                j += 1
            if j < b:  # prefer ending at a blank line in the window's last quarter
                for k in range(j, i + (j - i) * 3 // 4, -1):
                    if src.blank(k):
                        j = k - 1
                        break
            e = j
            while e > i and src.blank(e):
                e -= 1
            yield starts[i], ends[e]
            if j >= b:
                return
            nxt = j + 1
            if ends[nxt] - starts[nxt] <= cap:  # no overlap before an over-long line
                nxt = max(nxt - min(limits.overlap_lines, (j - i + 1) // 2), i + 1)
            i = nxt

    def _line_pieces(self, line: int) -> Iterator[tuple[int, int]]:
        """An over-long line cut into pieces of at most max_chunk_bytes, at UTF-8 boundaries."""
        data, cap = self.src.data, self.limits.max_chunk_bytes
        start, end = self.src.starts[line], self.src.ends[line]
        while start < end:
            cut = min(start + cap, end)
            while cut < end and cut > start + 1 and (data[cut] & 0xC0) == 0x80:
                cut -= 1
            yield start, cut
            start = cut

    # -- output

    def _emit(self, start: int, end: int, kind: str, symbol: str | None) -> None:
        if end <= start:
            return
        src = self.src
        text = src.data[start:end].decode("utf-8")
        if not text.strip():
            return
        self.out.append(
            Chunk(
                path=self.path,
                language=self.language,
                symbol=symbol,
                kind=kind,
                start_line=src.line_of(start),
                end_line=src.line_of(end - 1),
                start_byte=start,
                end_byte=end,
                text=text,
                content_hash=content_hash(self.language, kind, symbol, text),
            )
        )
