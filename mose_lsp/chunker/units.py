"""Cutting a file's text into chunks (``chunk_text``).

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

Performance: one parse per file with a cached parser, one tree-sitter query for all units
(the tree is walked in C), then work linear in the number of units and lines.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import PurePath

from tree_sitter import Node, QueryCursor

from ..languages import (
    CLASS_LIKE_KINDS,
    LanguageSpec,
    Name,
    detect_language,
    get_parser,
    get_query,
    language_spec,
)
from .records import DEFAULT_LIMITS, Chunk, ChunkLimits, content_hash, posix_path


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
    rel = posix_path(path)
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
