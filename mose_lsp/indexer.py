"""Keeps a workspace's store equal to its files: first scan, incremental updates, deep fill.

The indexer reads files (through the walker's rules), chunks them, embeds only chunks whose
content hash the store does not already hold, and writes each file in one transaction
(``Store.replace_file``). Renames are detected by file content hash and keep every vector.
Unsaved editor buffers go through the same path with a negative ``mtime_ns`` (minus the pid
of the process that wrote them, :func:`overlay_mtime`) so that a scan replaces them with the
disk version: a scan of that process does at once (the language server then re-applies the
buffers still open), another process's scan leaves them while their owner lives (the editor's
buffers stay the editor's) and restores the disk version once it has died. A background pass
fills deep-exit vectors.

Everything here is blocking and thread-safe through the store's single-writer lock: the
language server calls it from worker threads, never from its event loop.

Several processes (the language server, MCP servers, CLI commands) may open one index at
once. Every write here runs under the index's writer lock (:mod:`mose_lsp.service.lock`, an
flock that the kernel drops when its owner dies), taken per batch: opening the store, each
batch of a scan, each file-event batch or buffer update, each step of the deep pass, each
save of the vector indexes. After taking it the store catches up with what other processes
committed (``Store.sync``) and every file is re-checked against the store, so nothing another
process indexed meanwhile is embedded again. Readers take no lock.

``MOSE_ENCODE_LOG=<file>`` (a debugging aid): every encode call of indexing, the deep pass
and on-the-fly search vectors appends one JSON line to that file: pid, purpose, exit layer
and per chunk encoded its (path, content hash), or ("#<chunk id>", "") for the deep pass. It
shows which process embedded what, and that no chunk was embedded twice.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .chunker import Chunk, ChunkLimits, ChunkResult, SkipReason, chunk_source, decode_source
from .config import Settings
from .encoder import ModelEncoder
from .errors import StoreError
from .filetypes import detect_language
from .service.lock import LockBusy, writer_lock
from .store import FileMeta, FileState, Store, default_index_dir
from .walker import FileEntry, IgnoreRules, iter_files

log = logging.getLogger(__name__)

OVERLAY_MTIME = -1  # an unsaved buffer of an unknown (or dead) owner: never equals a disk mtime
EMBED_POOL = 256  # new chunks gathered across files before one encode call
# How long an open waits for another process's write batch (a batch holds the lock for a few
# seconds; a longer wait means that process is stuck, and the error names it).
OPEN_WAIT_S = 120.0
SAVE_INTERVAL_S = 60.0  # least time between two saves of the vector indexes by a scan
CLOSE_WAIT_S = 5.0  # how long close waits to save the vector indexes (else leaves them)
ENCODE_LOG_ENV = "MOSE_ENCODE_LOG"


def overlay_mtime(pid: int | None = None) -> int:
    """The ``mtime_ns`` recorded for an unsaved buffer written by process ``pid`` (this one)."""
    return -(os.getpid() if pid is None else pid)


def foreign_overlay(state) -> bool:
    """Whether the store's record of a file is an unsaved buffer of another live process
    (whose buffers a scan here must leave alone)."""
    if state is None or state.mtime_ns >= OVERLAY_MTIME:
        return False
    pid = -state.mtime_ns
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def encode_log(purpose: str, exit_layer: int, items: Iterable[tuple[str, str]]) -> None:
    """Append one line to ``$MOSE_ENCODE_LOG`` (when set): see the module docstring."""
    target = os.environ.get(ENCODE_LOG_ENV)
    if not target:
        return
    line = json.dumps({"pid": os.getpid(), "t": round(time.time(), 3), "purpose": purpose,
                       "exit": exit_layer, "items": [list(i) for i in items]})
    try:  # one write of a line opened with O_APPEND: lines of several processes never mix
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError as err:
        log.warning("%s=%s cannot be written: %s", ENCODE_LOG_ENV, target, err)


@dataclass(frozen=True)
class Progress:
    phase: str  # "scan" | "embed" | "deep"
    done: int
    total: int
    message: str = ""
    chunks: int = 0  # chunks embedded so far by this operation

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
    """Identity of the model and exits a store was built with (name + exit file checksums;
    the name alone for an encoder without a model directory, such as a training checkpoint
    that ``mose eval`` scores)."""
    m = getattr(model, "manifest", None)
    if m is None:
        return str(model.name)
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
        self.lock = writer_lock(store.index_dir)

    @classmethod
    def open(cls, root: str | Path, settings: Settings | None = None,
             model: ModelEncoder | None = None, wait_s: float = OPEN_WAIT_S) -> WorkspaceIndex:
        """Open the workspace's index (creating it), under its writer lock: ``wait_s`` bounds
        the wait for another process's write batch (:class:`LockBusy` after it)."""
        settings = settings or Settings()
        root = Path(root).expanduser().resolve()
        model = model or ModelEncoder.open(settings.model, threads=settings.resolved_threads())
        index_dir = Path(settings.index_dir) if settings.index_dir else default_index_dir(root)
        dims = {layer: model.dim(layer) for layer in model.exits}
        with writer_lock(index_dir).hold("open", wait_s):
            store = Store.open(index_dir, dims=dims, index_exit=model.index_exit,
                               rerank_exit=model.rerank_exit, model_id=model_id(model))
        return cls(root, settings, model, store)

    def close(self) -> None:
        """Save the vector indexes (when the writer lock comes within ``CLOSE_WAIT_S``; else
        the process holding it saves them) and close the store."""
        try:
            self.lock.acquire("close", CLOSE_WAIT_S)
        except LockBusy:
            self.store.close(save=False)
            return
        try:
            try:
                self._sync()
            except StoreError:
                pass  # closed already (close is idempotent)
            self.store.close()
        finally:
            self.lock.release()

    # -- the writer lock

    @contextmanager
    def writing(self, what: str, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the index's writer lock (waiting up to ``timeout_s``; None: as long as it
        takes) with the store caught up with other processes' commits."""
        with self.lock.hold(what, timeout_s):
            self._sync()
            yield

    def _sync(self) -> None:
        self.store.sync()

    @property
    def scanning(self) -> bool:
        """Whether a scan of this index is running in this process."""
        return self._scan_lock.locked()

    def update_running(self) -> bool:
        """Whether another process (or thread) is writing this index right now."""
        return self.lock.busy()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Save the vector indexes that changed (under the writer lock)."""
        with self.writing("save", timeout_s):
            return self.store.flush()

    def maybe_flush(self, min_interval_s: float = 60.0, timeout_s: float | None = 0.0) -> bool:
        """``Store.maybe_flush`` under the writer lock; False when it is busy (the owner saves)."""
        if not self.store.dirty:
            return False
        try:
            with self.writing("save", timeout_s):
                return self.store.maybe_flush(min_interval_s)
        except LockBusy:
            return False

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
        texts, langs, logged = [], [], []
        for p in pending:
            for i in p.embed_rows:
                texts.append(p.chunks[i].text)
                langs.append(p.chunks[i].language)
                logged.append((p.rel, p.chunks[i].content_hash))
        if texts:
            encode_log("index", self.index_exit, logged)
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
             cancel: threading.Event | None = None, wait_s: float | None = None) -> ScanReport:
        """Bring the store up to date with the files on disk (first index or catch-up).

        ``wait_s`` bounds each wait for the writer lock (None: as long as it takes); when it
        runs out, :class:`LockBusy` is raised and the batches written so far stay."""
        started = time.monotonic()
        if not self._scan_lock.acquire(timeout=-1 if wait_s is None else max(0.0, wait_s)):
            raise LockBusy(self.store.index_dir, self.lock.owner(), time.monotonic() - started)
        try:
            return self._scan(progress, cancel, wait_s)
        finally:
            self._scan_lock.release()

    def _scan(self, progress: ProgressFn | None, cancel: threading.Event | None,
              wait_s: float | None = None) -> ScanReport:
        started = time.perf_counter()
        report = ScanReport()
        entries = list(iter_files(self.root, self.settings))
        report.files_seen = len(entries)
        self._sync()
        known = {s.path: s for s in self.store.all_files()}
        on_disk = {e.rel for e in entries}
        changed = [e for e in entries if not _same_state(known.get(e.rel), e)]
        report.files_unchanged = len(entries) - len(changed)
        gone = {rel: state for rel, state in known.items() if rel not in on_disk}
        total = len(changed)
        at = 0
        while at < total:  # one batch per hold of the writer lock
            if cancel is not None and cancel.is_set():
                break
            with self.writing("scan", wait_s):
                at = self._scan_batch(changed, at, gone, report, progress, cancel)
            self.lock.yield_if_wanted()
        if gone and not (cancel is not None and cancel.is_set()):
            with self.writing("scan", wait_s):
                for rel, seen in gone.items():  # unless another process re-indexed it since
                    if self.store.file_state(rel) == seen and self.store.delete_file(rel):
                        report.files_deleted += 1
        if self.store.dirty:  # a long scan saves as it goes; close saves the rest
            self.maybe_flush(SAVE_INTERVAL_S, wait_s)
        report.seconds = time.perf_counter() - started
        return report

    def _scan_batch(self, changed: list[FileEntry], at: int, gone: dict[str, FileState],
                    report: ScanReport, progress: ProgressFn | None,
                    cancel: threading.Event | None) -> int:
        """Index ``changed[at:]`` until about ``EMBED_POOL`` new chunks are embedded (writer
        lock held); returns where the next batch starts. Each file is re-checked against the
        store first: another process may have indexed it since the scan listed it."""
        pending: list[_Pending] = []
        pool = 0
        total = len(changed)
        gone_by_hash: dict[str, list[str]] = {}
        for rel, seen in gone.items():
            state = self.store.file_state(rel)
            if state == seen and state.content_hash and not state.skipped:
                gone_by_hash.setdefault(state.content_hash, []).append(rel)
        while at < total and pool < EMBED_POOL:
            if cancel is not None and cancel.is_set():
                break
            entry = changed[at]
            at += 1
            state = self.store.file_state(entry.rel)
            if _same_state(state, entry):
                report.files_unchanged += 1
            else:
                meta, result = self._read(entry)
                if state is None and (olds := gone_by_hash.get(meta.content_hash)):
                    old = olds.pop()
                    del gone[old]
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
            if progress is not None:
                progress(Progress("scan", at, total, entry.rel, report.chunks_embedded))
        if pending:
            report.chunks_embedded += self._flush(pending, background=True)
            if progress is not None:
                progress(Progress("scan", at, total, changed[at - 1].rel,
                                  report.chunks_embedded))
        return at

    def update_paths(self, rels: Iterable[str]) -> ScanReport:
        """Re-check specific workspace-relative paths (file watcher events): changed files are
        re-indexed, vanished ones deleted, ignored ones dropped."""
        with self.writing("update"):
            return self._update_paths(rels)

    def _update_paths(self, rels: Iterable[str]) -> ScanReport:
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
            if (state is not None and state.size == st.st_size
                    and state.mtime_ns == st.st_mtime_ns) or foreign_overlay(state):
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

        Returns how many chunks were embedded. The file is recorded with
        :func:`overlay_mtime` so that this process's next scan or ``update_paths`` restores the
        disk version (another process's scans leave it while this process lives).
        """
        raw = text.encode("utf-8")
        meta, result = self._chunk_bytes(rel, raw, overlay_mtime())
        with self.writing("buffer"):
            item = self._prepare(rel, meta, result)
            return self._flush([item]) if item is not None else 0

    def fill_vectors(self, exit_layer: int, max_chunks: int = 256,
                     cancel: threading.Event | None = None) -> int:
        """Embed up to ``max_chunks`` chunks that lack a vector at ``exit_layer``."""
        done = 0
        while done < max_chunks and not (cancel is not None and cancel.is_set()):
            with self.writing("deep"):  # chosen and stored under one hold: never twice
                batch = self.store.chunks_missing_vectors(
                    exit_layer, min(self.settings.batch_size * 2, max_chunks - done))
                if not batch:
                    break
                encode_log("deep" if exit_layer != self.index_exit else "index", exit_layer,
                           [(f"#{c.chunk_id}", "") for c in batch])
                vectors = self.model.encode([c.text for c in batch], "code", exit_layer,
                                            [c.language or "" for c in batch],
                                            batch_size=self.settings.batch_size,
                                            background=True)
                self.store.put_vectors(exit_layer, [c.chunk_id for c in batch], vectors)
            done += len(batch)
            self.lock.yield_if_wanted()
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


def _same_state(state, entry: FileEntry) -> bool:
    """Whether the store's record of a file matches its size and mtime on disk (or is another
    live process's unsaved buffer, which is left alone)."""
    return (state is not None and state.size == entry.size
            and state.mtime_ns == entry.mtime_ns) or foreign_overlay(state)
