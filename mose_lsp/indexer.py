"""Keeps a workspace's store equal to its files: first scan, incremental updates, deep fill.

The indexer reads files (through the walker's rules), chunks them, embeds only chunks whose
content hash the store does not already hold, and writes each file in one transaction
(``Store.replace_file``). Renames are detected by file content hash and keep every vector.
Unsaved editor buffers go through the same path with ``mtime_ns = OVERLAY_MTIME`` so the next
scan replaces them with the disk version. A background pass fills deep-exit vectors.

Everything here is blocking and thread-safe through the store's single-writer lock: the
language server calls it from worker threads, never from its event loop.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .chunker import Chunk, ChunkLimits, ChunkResult, SkipReason, chunk_source, decode_source
from .config import Settings
from .encoder import ModelEncoder
from .languages import detect_language
from .store import FileMeta, Store, default_index_dir
from .walker import FileEntry, IgnoreRules, iter_files

log = logging.getLogger(__name__)

OVERLAY_MTIME = -1  # mtime_ns recorded for unsaved buffer content: never equals a disk file's
EMBED_POOL = 256  # new chunks gathered across files before one encode call


@dataclass(frozen=True)
class Progress:
    phase: str  # "scan" | "embed" | "deep"
    done: int
    total: int
    message: str = ""

    @property
    def percent(self) -> int:
        return 100 if self.total <= 0 else min(100, int(100 * self.done / self.total))


@dataclass
class ScanReport:
    files_seen: int = 0
    files_indexed: int = 0  # (re)chunked because new or changed
    files_unchanged: int = 0
    files_skipped: int = 0
    files_deleted: int = 0
    files_renamed: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)  # skip code -> files


ProgressFn = Callable[[Progress], None]


def file_hash(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def model_id(model: ModelEncoder) -> str:
    """Identity of the model and exits a store was built with (name + exit file checksums)."""
    m = model.manifest
    sums = ",".join(f"{e.layer}:{m.files.get(e.file, '')[-16:]}" for e in m.exits)
    return f"{m.name}@{m.version}[{sums}]"


def read_regular(path: Path, root: Path, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a regular file inside ``root``.

    The walker checked the entry, but it may have changed since: a file swapped for a FIFO
    would block ``open`` forever (O_NONBLOCK), one swapped for a symbolic link could lead out
    of the workspace (the real path must be inside; O_NOFOLLOW on the last component).
    """
    real, root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != root and root not in real.parents:
        raise OSError(errno.EXDEV, "the file now resolves outside the workspace")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(real, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit)
    finally:
        os.close(fd)


@dataclass
class _Pending:
    rel: str
    meta: FileMeta
    chunks: tuple[Chunk, ...]
    embed_rows: list[int]  # positions in chunks that need a new shallow vector


class WorkspaceIndex:
    """One workspace folder: its store, its model and the rules for its files."""

    def __init__(self, root: Path, settings: Settings, model: ModelEncoder, store: Store):
        self.root = root.resolve()
        self.settings = settings
        self.model = model
        self.store = store
        self.limits = ChunkLimits(max_file_bytes=settings.max_file_bytes)
        self.index_exit = model.index_exit
        self.rerank_exit = model.rerank_exit
        self._rules = IgnoreRules(self.root, settings)
        self._scan_lock = threading.Lock()

    @classmethod
    def open(cls, root: str | Path, settings: Settings | None = None,
             model: ModelEncoder | None = None) -> WorkspaceIndex:
        settings = settings or Settings()
        root = Path(root).expanduser().resolve()
        model = model or ModelEncoder.open(settings.model, threads=settings.resolved_threads())
        index_dir = Path(settings.index_dir) if settings.index_dir else default_index_dir(root)
        dims = {layer: model.dim(layer) for layer in model.exits}
        store = Store.open(index_dir, dims=dims, index_exit=model.index_exit,
                           rerank_exit=model.rerank_exit, model_id=model_id(model))
        return cls(root, settings, model, store)

    def close(self) -> None:
        self.store.close()

    def reload_rules(self) -> None:
        """Read the ignore files again (the server calls this when a .gitignore or .moseignore
        changed; ``scan`` always reads them afresh)."""
        self._rules = IgnoreRules(self.root, self.settings)

    # -- reading files

    def _read(self, entry: FileEntry) -> tuple[FileMeta, ChunkResult]:
        """Read and chunk one file; never raises for file problems (they become skips)."""
        rel = entry.rel
        lang = detect_language(rel)
        if lang is None and PurePosixPath(rel).suffix:
            meta = FileMeta(entry.size, entry.mtime_ns, "", None)
            return meta, ChunkResult((), SkipReason("unsupported",
                                                    f"no chunker for {PurePosixPath(rel).suffix} files"))
        if entry.size > self.limits.max_file_bytes:
            meta = FileMeta(entry.size, entry.mtime_ns, "", lang)
            return meta, ChunkResult((), SkipReason(
                "too-large", f"{entry.size:,} bytes is over the {self.limits.max_file_bytes:,}-byte "
                             f"limit (setting max_file_bytes)"), lang)
        try:
            raw = read_regular(entry.path, self.root, self.limits.max_file_bytes + 1)
        except OSError as err:
            meta = FileMeta(entry.size, entry.mtime_ns, "", lang)
            return meta, ChunkResult((), SkipReason("unreadable", f"cannot read: {err.strerror or err}"),
                                     lang)
        return self._chunk_bytes(rel, raw, entry.mtime_ns)

    def _chunk_bytes(self, rel: str, raw: bytes, mtime_ns: int) -> tuple[FileMeta, ChunkResult]:
        text = decode_source(raw, self.limits)
        if isinstance(text, SkipReason):
            return FileMeta(len(raw), mtime_ns, file_hash(raw), detect_language(rel)), \
                ChunkResult((), text)
        result = chunk_source(rel, text, self.limits)
        return FileMeta(len(raw), mtime_ns, file_hash(raw), result.language), result

    # -- writing

    def _prepare(self, rel: str, meta: FileMeta, result: ChunkResult) -> _Pending | None:
        if result.skipped is not None:
            self.store.record_skip(rel, meta, result.skipped.code, result.skipped.message)
            return None
        known = self.store.chunk_hashes(rel)
        rows = [i for i, c in enumerate(result.chunks) if c.content_hash not in known]
        return _Pending(rel, meta, result.chunks, rows)

    def _flush(self, pending: list[_Pending], background: bool = False) -> int:
        """Embed the new chunks of ``pending`` files in one call, then write each file.
        ``background`` (a scan): the encoder pauses while a query runs."""
        texts, langs = [], []
        for p in pending:
            for i in p.embed_rows:
                texts.append(p.chunks[i].text)
                langs.append(p.chunks[i].language)
        vectors = (self.model.encode(texts, "code", self.index_exit, langs,
                                     batch_size=self.settings.batch_size, background=background)
                   if texts else np.zeros((0, self.model.dim(self.index_exit)), np.float32))
        at = 0
        dim = self.model.dim(self.index_exit)
        for p in pending:
            rows = np.zeros((len(p.chunks), dim), dtype=np.float32)
            for i in p.embed_rows:
                rows[i] = vectors[at]
                at += 1
            self.store.replace_file(p.rel, p.meta, p.chunks, rows)
        pending.clear()
        return len(texts)

    # -- public operations

    def scan(self, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> ScanReport:
        """Bring the store up to date with the files on disk (first index or catch-up)."""
        with self._scan_lock:
            return self._scan(progress, cancel)

    def _scan(self, progress: ProgressFn | None, cancel: threading.Event | None) -> ScanReport:
        started = time.perf_counter()
        report = ScanReport()
        entries = list(iter_files(self.root, self.settings))
        report.files_seen = len(entries)
        known = {s.path: s for s in self.store.all_files()}
        on_disk = {e.rel for e in entries}
        changed = [e for e in entries
                   if (s := known.get(e.rel)) is None or s.size != e.size
                   or s.mtime_ns != e.mtime_ns]
        report.files_unchanged = len(entries) - len(changed)
        gone = {rel: known[rel] for rel in known if rel not in on_disk}
        gone_by_hash: dict[str, list[str]] = {}
        for rel, state in gone.items():
            if state.content_hash and not state.skipped:
                gone_by_hash.setdefault(state.content_hash, []).append(rel)

        pending: list[_Pending] = []
        pool = 0
        total = len(changed)
        for n, entry in enumerate(changed, 1):
            if cancel is not None and cancel.is_set():
                break
            meta, result = self._read(entry)
            if entry.rel not in known and (olds := gone_by_hash.get(meta.content_hash)):
                old = olds.pop()
                gone.pop(old, None)
                self.store.rename_file(old, entry.rel)  # keeps chunks and every vector
                report.files_renamed += 1
            item = self._prepare(entry.rel, meta, result)
            if item is None:
                report.files_skipped += 1
                code = result.skipped.code if result.skipped else "?"
                report.skipped[code] = report.skipped.get(code, 0) + 1
            else:
                report.files_indexed += 1
                pending.append(item)
                pool += len(item.embed_rows)
            if pool >= EMBED_POOL or n == total:
                report.chunks_embedded += self._flush(pending, background=True)
                pool = 0
            if progress is not None:
                progress(Progress("scan", n, total, entry.rel))
        if pending:
            report.chunks_embedded += self._flush(pending, background=True)
        if not (cancel is not None and cancel.is_set()):
            for rel in gone:
                self.store.delete_file(rel)
                report.files_deleted += 1
        self.store.flush()
        report.seconds = time.perf_counter() - started
        return report

    def update_paths(self, rels: Iterable[str]) -> ScanReport:
        """Re-check specific workspace-relative paths (file watcher events): changed files are
        re-indexed, vanished ones deleted, ignored ones dropped."""
        report = ScanReport()
        pending: list[_Pending] = []
        for rel in dict.fromkeys(rels):
            path = self.root / rel
            state = self.store.file_state(rel)
            try:
                st = path.stat()
                is_file = path.is_file() and not self._rules.ignored(rel, False)
            except OSError:
                is_file = False
            if not is_file:
                if state is not None and self.store.delete_file(rel):
                    report.files_deleted += 1
                continue
            if state is not None and state.size == st.st_size and state.mtime_ns == st.st_mtime_ns:
                report.files_unchanged += 1
                continue
            meta, result = self._read(FileEntry(rel, path, st.st_size, st.st_mtime_ns))
            item = self._prepare(rel, meta, result)
            if item is None:
                report.files_skipped += 1
            else:
                report.files_indexed += 1
                pending.append(item)
        report.chunks_embedded += self._flush(pending)
        return report

    def update_text(self, rel: str, text: str) -> int:
        """Index unsaved buffer content for ``rel`` in place of the disk version.

        Returns how many chunks were embedded. The file is recorded with ``OVERLAY_MTIME`` so
        that the next scan or ``update_paths`` restores the disk version.
        """
        raw = text.encode("utf-8")
        meta, result = self._chunk_bytes(rel, raw, OVERLAY_MTIME)
        item = self._prepare(rel, meta, result)
        return self._flush([item]) if item is not None else 0

    def fill_vectors(self, exit_layer: int, max_chunks: int = 256,
                     cancel: threading.Event | None = None) -> int:
        """Embed up to ``max_chunks`` chunks that lack a vector at ``exit_layer``."""
        done = 0
        while done < max_chunks and not (cancel is not None and cancel.is_set()):
            batch = self.store.chunks_missing_vectors(
                exit_layer, min(self.settings.batch_size * 2, max_chunks - done))
            if not batch:
                break
            vectors = self.model.encode([c.text for c in batch], "code", exit_layer,
                                        [c.language or "" for c in batch],
                                        batch_size=self.settings.batch_size, background=True)
            self.store.put_vectors(exit_layer, [c.chunk_id for c in batch], vectors)
            done += len(batch)
        return done

    def fill_deep(self, max_chunks: int = 256, cancel: threading.Event | None = None,
                  progress: ProgressFn | None = None) -> int:
        """The background pass: deep-exit vectors (and any missing shallow ones first)."""
        done = self.fill_vectors(self.index_exit, max_chunks, cancel)
        if self.rerank_exit != self.index_exit:
            done += self.fill_vectors(self.rerank_exit, max_chunks - done, cancel)
        if progress is not None:
            stats = self.store.stats()
            progress(Progress("deep", int((stats.deep_coverage or 0) * stats.chunks), stats.chunks))
        return done
