"""Which files are chunked at all: ``chunk_file``/``chunk_source`` skip too large, binary,
undecodable, minified, generated and unsupported files with a typed :class:`SkipReason` that
``mose status`` shows, and hand the rest to ``units.chunk_text``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath, PurePosixPath

from ..filetypes import PROSE_LANGUAGES, detect_language
from .records import DEFAULT_LIMITS, ChunkLimits, ChunkResult, SkipReason, posix_path
from .units import chunk_text

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
    rel = posix_path(path)
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
