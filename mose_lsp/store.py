"""The workspace store: SQLite is the source of truth, the vector index a rebuildable cache.

Layout of an index folder (created 0700; every file in it 0600)::

    store.sqlite3 (+ -wal, -shm)   files, chunks, vectors of every exit, meta   (truth)
    shallow.hnsw + shallow.hnsw.json   HNSW over the index-exit vectors + sidecar   (cache)

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`):

- ``meta(key, value)``: ``model_id`` (model name + checksum of the exits used), ``dims`` (JSON
  ``{layer: dim}``), ``index_exit``, ``rerank_exit``, ``generation``.
- ``files``: one row per workspace file seen, indexed or skipped (``skip_code`` set).
- ``chunks``: ``id INTEGER PRIMARY KEY AUTOINCREMENT`` (never reused, so a stale id in the
  cache can never alias a newer chunk), ``file_id`` -> files ON DELETE CASCADE.
- ``vectors(chunk_id, exit_layer, vector)``: one row per chunk and exit (float32 little-endian
  BLOB), primary key ``(chunk_id, exit_layer)``, ON DELETE CASCADE. A row per exit (rather than
  a column per exit) makes "which chunks still lack the deep vector" an index probe
  (``NOT EXISTS`` on the primary key), coverage a ``COUNT(*)`` on ``(exit_layer, chunk_id)``,
  and lets a model with other exits use the same schema.

Consistency of the cache. ``meta.generation`` is bumped inside every write transaction that
changes the set of index-exit vectors. The vector index is updated after that transaction
commits, under the same writer lock, and is saved only by :meth:`Store.flush` (on close, or when
the indexer calls it when idle): saving a large graph on every edit would cost too much. The
sidecar written with it records the generation, model and exit it reflects. On open the cache
is used only if its sidecar and checksum are intact, its generation, model and exit match the
database, and its ids equal the ids of the index-exit vectors in SQLite; otherwise it is rebuilt
from SQLite (the reason is logged and kept in :attr:`Store.rebuild_reason`). After a crash the
database is ahead of the saved cache, the generations differ, and the rebuild restores it.

Concurrency: one writer at a time (a lock serialises write methods on one connection), any
number of readers, each thread with its own read-only connection; WAL lets them read while the
writer writes. One process should own an index folder: a second process's writes are seen by
SQLite readers but not by this process's in-memory vector index (a later open rebuilds it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from .ann import (
    BruteForceIndex,
    HnswIndex,
    HnswParams,
    IdFilter,
    IndexFileError,
    VectorIndex,
)
from .errors import StoreError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "store.sqlite3"
ANN_FILES = {HnswIndex.KIND: "shallow.hnsw", BruteForceIndex.KIND: "shallow.npz"}
_BATCH = 500  # ids per IN (...) query: below SQLite's oldest variable limit (999)
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE files (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    path         TEXT NOT NULL UNIQUE,   -- workspace-relative, posix separators
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    language     TEXT,
    skip_code    TEXT,                   -- NULL when indexed, else why it was skipped
    skip_message TEXT,
    indexed_at   REAL NOT NULL           -- unix time
);

CREATE TABLE chunks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id      INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    symbol       TEXT,
    kind         TEXT,
    language     TEXT,
    start_line   INTEGER NOT NULL,
    end_line     INTEGER NOT NULL,
    start_byte   INTEGER NOT NULL,
    end_byte     INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    text         TEXT NOT NULL
);
CREATE INDEX chunks_by_file ON chunks(file_id);

CREATE TABLE vectors (
    chunk_id   INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    exit_layer INTEGER NOT NULL,
    vector     BLOB NOT NULL,            -- float32 little-endian, dims[exit_layer] values
    PRIMARY KEY (chunk_id, exit_layer)
);
CREATE INDEX vectors_by_exit ON vectors(exit_layer, chunk_id);
"""

_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}
"""Schema upgrades: ``_MIGRATIONS[v]`` turns version ``v`` into ``v + 1`` in place. A version
with no path to :data:`SCHEMA_VERSION` is dropped and recreated (the store is a cache of the
workspace; the indexer fills it again)."""


# ----------------------------------------------------------------------------- value types


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
    index_count: int  # live vectors in the in-memory vector index
    generation: int
    bytes_on_disk: int  # everything in the index folder
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def default_index_dir(workspace: Path | str) -> Path:
    """Where a workspace's index lives by default: ``<user cache>/mose/indexes/<name>-<hash12>``.

    The hash is of the resolved workspace path, so two checkouts with the same folder name get
    different indexes; the name keeps the folder recognisable.
    """
    import platformdirs

    resolved = Path(workspace).expanduser().resolve()
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved.name).strip("._")[:40] or "root"
    cache = Path(platformdirs.user_cache_dir("mose", appauthor=False))
    return cache / "indexes" / f"{name}-{digest}"


def remove_index(index_dir: Path | str) -> list[Path]:
    """Delete a store's files (for ``mose index --rebuild``): the database with its WAL files
    and the vector index with its sidecar. Other files are left alone, and the folder is
    removed only if that leaves it empty. Close any open :class:`Store` on it first.
    Returns the paths removed."""
    folder = Path(index_dir).expanduser()
    names = [DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal"]
    for name in ANN_FILES.values():
        names += [name, name + ".json"]
    removed = []
    for name in names:
        path = folder / name
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise StoreError(f"cannot delete {path}: {err}") from err
        removed.append(path)
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (someone else's files) or already gone
    return removed


def _rel_path(path: str | PurePath) -> str:
    """Normalise a workspace-relative path to its posix string; refuse absolute or escaping."""
    text = path.as_posix() if isinstance(path, PurePath) else str(path)
    parts = text.split("/")
    if not text or text.startswith("/") or ".." in parts or "\\" in text:
        raise ValueError(f"expected a workspace-relative posix path, got {text!r}")
    return "/".join(p for p in parts if p not in ("", "."))


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _usable(row: np.ndarray) -> bool:
    return bool(np.isfinite(row).all() and np.any(row != 0))


def _batches(items: Sequence[int], size: int = _BATCH) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# ----------------------------------------------------------------------------- the store


class Store:
    """A workspace index: files, chunks and per-exit vectors in SQLite, plus a vector index
    of the index-exit ("shallow") vectors for candidate search. Build with :meth:`open`."""

    def __init__(self) -> None:
        """Use :meth:`Store.open`."""
        self.index_dir = Path()
        self.db_path = Path()
        self.dims: dict[int, int] = {}
        self.index_exit = 0
        self.rerank_exit: int | None = None
        self.model_id = ""
        self.needs_reembed = False
        """True when some chunks lack an index-exit vector (for example after a model change
        dropped them): the indexer should fill them with :meth:`chunks_missing_vectors` and
        :meth:`put_vectors` at the index exit."""
        self.reembed_reason: str | None = None
        self.rebuild_reason: str | None = None
        """Why the vector index was rebuilt from SQLite at open (None when it was loaded)."""
        self._ann_kind = HnswIndex.KIND
        self._hnsw_params: HnswParams | None = None
        self._ann: VectorIndex | None = None
        self._wconn: sqlite3.Connection | None = None
        self._write_lock = threading.RLock()
        self._local = threading.local()
        # Weak: a reader thread's connection closes when the thread ends; close() closes the rest.
        self._conns: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._generation = 0
        self._saved_generation: int | None = None
        self._last_save = 0.0
        self._closed = False

    # -- opening

    @classmethod
    def open(
        cls,
        index_dir: Path | str,
        *,
        dims: Mapping[int, int],
        index_exit: int,
        model_id: str,
        rerank_exit: int | None = None,
        ann: str = HnswIndex.KIND,
        hnsw_params: HnswParams | None = None,
    ) -> Store:
        """Open (or create) the store in ``index_dir``.

        ``dims`` maps each exit layer the model provides to its embedding dimension;
        ``index_exit`` is the layer whose vectors go into the vector index, ``rerank_exit`` the
        deep one (used for coverage). ``model_id`` identifies the model and the exits in use
        (name plus manifest checksums): when it differs from the one the store was built with,
        all stored vectors are dropped and :attr:`needs_reembed` is set. ``ann`` picks the
        vector index: ``"hnsw"`` (default) or ``"brute"`` (exact; fine for small workspaces).

        Raises :class:`StoreError` when the folder or database cannot be used, with what to do.
        """
        if index_exit not in dims:
            raise ValueError(f"index_exit {index_exit} is not in dims {dict(dims)}")
        if rerank_exit is not None and rerank_exit not in dims:
            raise ValueError(f"rerank_exit {rerank_exit} is not in dims {dict(dims)}")
        if ann not in ANN_FILES:
            raise ValueError(f"ann must be one of {sorted(ANN_FILES)}, got {ann!r}")
        store = cls()
        store.index_dir = Path(index_dir).expanduser().absolute()
        store.db_path = store.index_dir / DB_NAME
        store.dims = {int(k): int(v) for k, v in dims.items()}
        store.index_exit = int(index_exit)
        store.rerank_exit = None if rerank_exit is None else int(rerank_exit)
        store.model_id = model_id
        store._ann_kind = ann
        store._hnsw_params = hnsw_params
        try:
            store._open()
        except BaseException:
            store._close_connections()
            raise
        return store

    def _open(self) -> None:
        self._make_dir()
        if not self.db_path.exists():
            try:
                os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as err:
                raise StoreError(f"cannot create the index database {self.db_path}: {err}") from err
        with self._errors():
            self._wconn = self._connect(writer=True)
            self._init_schema()
            self._check_model()
            self._generation = self._read_generation(self._wconn)
            self._load_or_rebuild_ann()

    def _make_dir(self) -> None:
        path = self.index_dir
        if path.exists():
            if not path.is_dir():
                raise StoreError(f"the index folder {path} exists and is not a folder; "
                                 "remove it or configure another index folder")
            return
        try:
            path.mkdir(parents=True, mode=0o700)
            os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass
        except OSError as err:
            raise StoreError(f"cannot create the index folder {path}: {err}") from err

    def _connect(self, writer: bool) -> sqlite3.Connection:
        uri = self.db_path.as_uri() + "?mode=rw"
        conn = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,  # explicit BEGIN/COMMIT
            check_same_thread=False,  # each connection is used by one thread at a time
            timeout=_BUSY_TIMEOUT_MS / 1000,
            factory=_Connection,
        )
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if writer:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("%s: WAL journal unavailable (got %s); readers may block",
                                self.db_path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            if not writer:
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        with self._conns_lock:
            self._conns.add(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        self._check_open()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(writer=False)
            self._local.conn = conn
        return conn

    def _init_schema(self) -> None:
        conn = self._writer()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the index in {self.index_dir} was written by a newer mose (schema {version}, "
                f"this mose reads {SCHEMA_VERSION}); upgrade mose, or delete that folder "
                "(or run `mose index --rebuild`) to index the workspace again"
            )
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        if version == 0 and tables:
            raise StoreError(
                f"{self.db_path} is an SQLite database but not a mose index (tables: "
                f"{', '.join(sorted(tables))}); point the index folder elsewhere or delete it"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            while 0 < version < SCHEMA_VERSION and version in _MIGRATIONS:
                _MIGRATIONS[version](conn)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            if version != SCHEMA_VERSION:
                if tables:
                    log.warning("%s: schema %d cannot be migrated to %d; recreating the index",
                                self.db_path, version, SCHEMA_VERSION)
                    self.reembed_reason = f"index schema {version} was replaced by {SCHEMA_VERSION}"
                for name in tables:
                    conn.execute(f'DROP TABLE IF EXISTS "{name}"')
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                self._set_meta(conn, {
                    "model_id": self.model_id,
                    "dims": json.dumps({str(k): v for k, v in sorted(self.dims.items())}),
                    "index_exit": str(self.index_exit),
                    "rerank_exit": "" if self.rerank_exit is None else str(self.rerank_exit),
                    "generation": "0",
                    "created_at": str(time.time()),
                })
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _check_model(self) -> None:
        """Drop vectors made by another model (or with other dims) and record the new model."""
        conn = self._writer()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        try:
            old_dims = {int(k): int(v) for k, v in json.loads(meta.get("dims", "{}")).items()}
        except (ValueError, AttributeError):
            old_dims = {}
        drop: list[int] | None = []  # None: every layer
        reason = None
        old_model = meta.get("model_id")
        if old_model != self.model_id:
            drop = None
            reason = f"the model changed from {old_model!r} to {self.model_id!r}"
        else:
            for layer, dim in self.dims.items():
                if layer in old_dims and old_dims[layer] != dim:
                    drop.append(layer)
            if drop:
                reason = f"the dimension of exit(s) {drop} changed"
        conn.execute("BEGIN IMMEDIATE")
        try:
            if drop is None:
                conn.execute("DELETE FROM vectors")
            for layer in drop or []:
                conn.execute("DELETE FROM vectors WHERE exit_layer = ?", (layer,))
            if reason:
                self._bump_generation(conn)
            self._set_meta(conn, {
                "model_id": self.model_id,
                "dims": json.dumps({str(k): v for k, v in sorted({**old_dims, **self.dims}.items())}),
                "index_exit": str(self.index_exit),
                "rerank_exit": "" if self.rerank_exit is None else str(self.rerank_exit),
            })
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if reason:
            log.info("%s: %s; stored vectors were dropped and will be recomputed",
                     self.index_dir, reason)
            self.reembed_reason = reason
        missing = conn.execute(
            "SELECT COUNT(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM vectors v "
            "WHERE v.chunk_id = c.id AND v.exit_layer = ?)", (self.index_exit,)).fetchone()[0]
        self.needs_reembed = missing > 0
        if self.needs_reembed and self.reembed_reason is None:
            self.reembed_reason = f"{missing} chunks lack a vector at exit {self.index_exit}"

    # -- the vector index (cache)

    @property
    def ann_path(self) -> Path:
        """The vector index file (its sidecar is ``<ann_path>.json``)."""
        return self.index_dir / ANN_FILES[self._ann_kind]

    @property
    def ann(self) -> VectorIndex:
        """The in-memory vector index over the index-exit vectors (read it; do not modify)."""
        self._check_open()
        assert self._ann is not None
        return self._ann

    def _new_ann(self, capacity: int) -> VectorIndex:
        dim = self.dims[self.index_exit]
        if self._ann_kind == HnswIndex.KIND:
            return HnswIndex.create(dim, capacity, self._hnsw_params)
        return BruteForceIndex.create(dim, capacity)

    def _load_ann(self) -> VectorIndex:
        dim = self.dims[self.index_exit]
        if self._ann_kind == HnswIndex.KIND:
            return HnswIndex.load(self.ann_path, dim, self._hnsw_params)
        return BruteForceIndex.load(self.ann_path, dim)

    def _ann_meta(self) -> dict[str, Any]:
        return {"generation": self._generation, "model_id": self.model_id,
                "index_exit": self.index_exit}

    def _load_or_rebuild_ann(self) -> None:
        reason: str | None = None
        ann: VectorIndex | None = None
        try:
            ann = self._load_ann()
        except IndexFileError as err:
            reason = str(err)
        if ann is not None:
            meta = ann.meta
            expected = self._ann_meta()
            if meta != expected:
                diff = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
                reason = "it is out of date (saved, current): " + ", ".join(
                    f"{k} {a!r}, {b!r}" for k, (a, b) in diff.items())
            else:
                truth = self._shallow_ids(self._writer())
                if not np.array_equal(ann.ids(), truth):
                    reason = (f"it holds {ann.count()} vectors, the database "
                              f"{len(truth)} (or other ids)")
            if reason:
                ann.close()
                ann = None
        if ann is None:
            log.info("%s: rebuilding the vector index from the database: %s",
                     self.index_dir, reason)
            self.rebuild_reason = reason
            self._ann = self._build_ann()
            self._save_ann()
        else:
            self._ann = ann
            self._saved_generation = self._generation
            self._last_save = time.monotonic()

    def _shallow_ids(self, conn: sqlite3.Connection) -> np.ndarray:
        rows = conn.execute("SELECT chunk_id FROM vectors WHERE exit_layer = ? ORDER BY chunk_id",
                            (self.index_exit,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def _build_ann(self) -> VectorIndex:
        conn = self._writer()
        dim = self.dims[self.index_exit]
        count = conn.execute("SELECT COUNT(*) FROM vectors WHERE exit_layer = ?",
                             (self.index_exit,)).fetchone()[0]
        ann = self._new_ann(max(1024, int(count * 1.25)))
        cursor = conn.execute("SELECT chunk_id, vector FROM vectors WHERE exit_layer = ? "
                              "ORDER BY chunk_id", (self.index_exit,))
        bad = 0
        while rows := cursor.fetchmany(4096):
            good = [(cid, blob) for cid, blob in rows if len(blob) == 4 * dim]
            bad += len(rows) - len(good)
            if good:
                ids = np.array([cid for cid, _ in good], dtype=np.int64)
                vecs = np.frombuffer(b"".join(blob for _, blob in good), dtype="<f4")
                ann.add(ids, vecs.reshape(len(good), dim))
        if bad:
            log.warning("%s: %d stored vectors have the wrong size and were left out",
                        self.index_dir, bad)
        return ann

    def _save_ann(self) -> None:
        assert self._ann is not None
        try:
            self._ann.save(self.ann_path, self._ann_meta())
        except OSError as err:
            log.warning("%s: could not save the vector index (%s); it will be rebuilt on the "
                        "next open", self.index_dir, err)
            return
        self._saved_generation = self._generation
        self._last_save = time.monotonic()

    def _apply_to_ann(self, removed: Iterable[int], ids: Sequence[int], vectors: np.ndarray) -> None:
        """Mirror a committed change into the vector index (writer lock held)."""
        assert self._ann is not None
        try:
            removed = list(removed)
            if removed:
                self._ann.delete(removed)
            if len(ids):
                self._ann.add(np.asarray(ids, dtype=np.int64), vectors)
        except (RuntimeError, MemoryError, ValueError) as err:
            log.warning("%s: updating the vector index failed (%s); rebuilding it",
                        self.index_dir, err)
            self._ann.close()
            self._ann = self._build_ann()

    def flush(self) -> bool:
        """Save the vector index if it changed since the last save; returns whether it saved.

        Call on idle and before exit (``close`` does). If another process wrote to the database
        meanwhile, the in-memory index is not what the database holds and is not saved (the
        next open rebuilds it).
        """
        with self._errors(), self._write_lock:
            self._check_open()
            if self._saved_generation == self._generation and self.ann_path.exists():
                return False
            current = self._read_generation(self._writer())
            if current != self._generation:
                log.warning("%s: another process changed the index (generation %d, expected "
                            "%d); not saving the vector index", self.index_dir, current,
                            self._generation)
                return False
            self._save_ann()
            return self._saved_generation == self._generation

    def maybe_flush(self, min_interval_s: float = 60.0) -> bool:
        """:meth:`flush` if there are unsaved changes and the last save is older than
        ``min_interval_s`` seconds (for periodic saves from an idle loop)."""
        if not self.dirty or time.monotonic() - self._last_save < min_interval_s:
            return False
        return self.flush()

    @property
    def dirty(self) -> bool:
        """Whether the vector index changed since it was last saved."""
        return self._saved_generation != self._generation

    @property
    def generation(self) -> int:
        """Bumped by every committed change to the set of index-exit vectors."""
        return self._generation

    # -- writes

    def replace_file(
        self,
        path: str | PurePath,
        meta: FileMetaLike,
        chunks: Sequence[ChunkLike],
        shallow_vectors: np.ndarray | None,
    ) -> ReplaceResult:
        """Replace a file's chunks in one transaction and then update the vector index.

        ``shallow_vectors`` has one row per chunk (index-exit vectors, shape (N, dim)). A chunk
        whose content hash the file already had keeps its id and all its stored vectors
        (shallow and deep), and its row is ignored: the indexer may pass a zero row for it
        (see :meth:`chunk_hashes`) instead of embedding it again. Rows of new chunks must be
        finite and non-zero. Also clears any earlier skip of the file.
        """
        rel = _rel_path(path)
        dim = self.dims[self.index_exit]
        n = len(chunks)
        if shallow_vectors is None:
            if n:
                raise ValueError("shallow_vectors is required when there are chunks")
            vectors = np.zeros((0, dim), dtype=np.float32)
        else:
            vectors = np.asarray(shallow_vectors, dtype=np.float32)
            if vectors.shape != (n, dim):
                raise ValueError(f"shallow_vectors has shape {vectors.shape}, expected ({n}, {dim})")
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                file_id = self._upsert_file(conn, rel, meta, None, None)
                old: dict[str, list[int]] = defaultdict(list)
                for cid, chash in conn.execute(
                    "SELECT id, content_hash FROM chunks WHERE file_id = ? ORDER BY id",
                    (file_id,),
                ):
                    old[chash].append(cid)
                have_shallow = set()
                if old:
                    have_shallow = {r[0] for r in conn.execute(
                        "SELECT v.chunk_id FROM vectors v JOIN chunks c ON c.id = v.chunk_id "
                        "WHERE c.file_id = ? AND v.exit_layer = ?", (file_id, self.index_exit))}
                chunk_ids: list[int] = []
                added: list[int] = []
                reused: list[int] = []
                embed_ids: list[int] = []
                embed_rows: list[int] = []
                for i, chunk in enumerate(chunks):
                    fields = (chunk.symbol, chunk.kind, chunk.language, int(chunk.start_line),
                              int(chunk.end_line), int(chunk.start_byte), int(chunk.end_byte))
                    pool = old.get(chunk.content_hash)
                    if pool:
                        cid = pool.pop(0)
                        conn.execute(
                            "UPDATE chunks SET symbol = ?, kind = ?, language = ?, start_line = ?,"
                            " end_line = ?, start_byte = ?, end_byte = ? WHERE id = ?",
                            (*fields, cid))
                        reused.append(cid)
                        if cid not in have_shallow and _usable(vectors[i]):
                            embed_ids.append(cid)
                            embed_rows.append(i)
                    else:
                        if not _usable(vectors[i]):
                            raise ValueError(f"chunk {i} of {rel} is new but its shallow vector "
                                             "is zero or not finite")
                        cur = conn.execute(
                            "INSERT INTO chunks (file_id, symbol, kind, language, start_line, "
                            "end_line, start_byte, end_byte, content_hash, text) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (file_id, *fields, chunk.content_hash, chunk.text))
                        cid = int(cur.lastrowid)
                        added.append(cid)
                        embed_ids.append(cid)
                        embed_rows.append(i)
                    chunk_ids.append(cid)
                conn.executemany(
                    "INSERT OR REPLACE INTO vectors (chunk_id, exit_layer, vector) VALUES (?, ?, ?)",
                    [(cid, self.index_exit, _blob(vectors[row]))
                     for cid, row in zip(embed_ids, embed_rows)])
                removed = sorted(cid for ids in old.values() for cid in ids)
                self._delete_chunks(conn, removed)
                if embed_ids or removed:
                    txn.bump()
            self._apply_to_ann(removed, embed_ids, vectors[embed_rows])
        return ReplaceResult(chunk_ids, added, reused, removed)

    def record_skip(self, path: str | PurePath, meta: FileMetaLike, code: str, message: str) -> None:
        """Record that a file is not indexed (``code`` such as "too-large", "binary") and drop
        any chunks it had."""
        rel = _rel_path(path)
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                file_id = self._upsert_file(conn, rel, meta, code, message)
                removed = [r[0] for r in conn.execute(
                    "SELECT id FROM chunks WHERE file_id = ?", (file_id,))]
                self._delete_chunks(conn, removed)
                if removed:
                    txn.bump()
            self._apply_to_ann(removed, [], np.zeros((0, 1), np.float32))

    def delete_file(self, path: str | PurePath) -> bool:
        """Forget a file, its chunks and their vectors; returns whether it was known."""
        rel = _rel_path(path)
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                row = conn.execute("SELECT id FROM files WHERE path = ?", (rel,)).fetchone()
                if row is None:
                    return False
                removed = [r[0] for r in conn.execute(
                    "SELECT id FROM chunks WHERE file_id = ?", (row[0],))]
                conn.execute("DELETE FROM files WHERE id = ?", (row[0],))
                if removed:
                    txn.bump()
            self._apply_to_ann(removed, [], np.zeros((0, 1), np.float32))
            return True

    def rename_file(self, old: str | PurePath, new: str | PurePath) -> bool:
        """Move a file's record to a new path, keeping its chunks (ids) and vectors. A file
        already stored at ``new`` is replaced. Returns False when ``old`` is unknown."""
        src, dst = _rel_path(old), _rel_path(new)
        if src == dst:
            return self.file_state(src) is not None
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                row = conn.execute("SELECT id FROM files WHERE path = ?", (src,)).fetchone()
                if row is None:
                    return False
                removed: list[int] = []
                target = conn.execute("SELECT id FROM files WHERE path = ?", (dst,)).fetchone()
                if target is not None:
                    removed = [r[0] for r in conn.execute(
                        "SELECT id FROM chunks WHERE file_id = ?", (target[0],))]
                    conn.execute("DELETE FROM files WHERE id = ?", (target[0],))
                conn.execute("UPDATE files SET path = ? WHERE id = ?", (dst, row[0]))
                if removed:
                    txn.bump()
            self._apply_to_ann(removed, [], np.zeros((0, 1), np.float32))
            return True

    def put_vectors(self, exit_layer: int, chunk_ids: Sequence[int], vectors: np.ndarray) -> int:
        """Store vectors of ``exit_layer`` for ``chunk_ids`` (replacing any). Ids of chunks
        deleted meanwhile are skipped; returns how many were stored. Vectors at the index exit
        also go into the vector index."""
        if exit_layer not in self.dims:
            raise ValueError(f"exit {exit_layer} is not one of the store's exits {sorted(self.dims)}")
        dim = self.dims[exit_layer]
        ids = [int(i) for i in chunk_ids]
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.shape != (len(ids), dim):
            raise ValueError(f"vectors have shape {vecs.shape}, expected ({len(ids)}, {dim})")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors contain NaN or infinity")
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                stored: list[int] = []
                rows: list[int] = []
                for row, cid in enumerate(ids):
                    cur = conn.execute(
                        "INSERT OR REPLACE INTO vectors (chunk_id, exit_layer, vector) "
                        "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM chunks WHERE id = ?)",
                        (cid, exit_layer, _blob(vecs[row]), cid))
                    if cur.rowcount > 0:
                        stored.append(cid)
                        rows.append(row)
                shallow = exit_layer == self.index_exit and bool(stored)
                if shallow:
                    txn.bump()
            if shallow:
                self._apply_to_ann([], stored, vecs[rows])
                if self.needs_reembed and not self._missing_count(self.index_exit):
                    self.needs_reembed = False
            return len(stored)

    # -- reads

    def file_state(self, path: str | PurePath) -> FileState | None:
        """What the store knows about ``path``, or None."""
        with self._errors():
            row = self._reader().execute(
                "SELECT path, size, mtime_ns, content_hash, language, skip_code, skip_message, "
                "indexed_at FROM files WHERE path = ?", (_rel_path(path),)).fetchone()
        return FileState(*row) if row else None

    def all_files(self) -> list[FileState]:
        """Every file the store knows, indexed or skipped, sorted by path."""
        with self._errors():
            rows = self._reader().execute(
                "SELECT path, size, mtime_ns, content_hash, language, skip_code, skip_message, "
                "indexed_at FROM files ORDER BY path").fetchall()
        return [FileState(*r) for r in rows]

    def chunk_hashes(self, path: str | PurePath) -> set[str]:
        """Content hashes of the chunks stored for ``path`` (chunks with one of these hashes
        are reused by :meth:`replace_file`, so the indexer need not embed them)."""
        with self._errors():
            rows = self._reader().execute(
                "SELECT DISTINCT c.content_hash FROM chunks c JOIN files f ON f.id = c.file_id "
                "WHERE f.path = ?", (_rel_path(path),)).fetchall()
        return {r[0] for r in rows}

    def get_chunks(self, ids: Iterable[int]) -> list[ChunkRecord]:
        """The chunks with these ids, in the given order; ids no longer stored are left out."""
        wanted = [int(i) for i in ids]
        found: dict[int, ChunkRecord] = {}
        with self._errors():
            conn = self._reader()
            for part in _batches(list(dict.fromkeys(wanted))):
                for row in conn.execute(
                    "SELECT c.id, f.path, c.symbol, c.kind, c.language, c.start_line, c.end_line,"
                    " c.start_byte, c.end_byte, c.content_hash, c.text FROM chunks c "
                    f"JOIN files f ON f.id = c.file_id WHERE c.id IN ({_marks(len(part))})",
                    tuple(part),
                ):
                    found[row[0]] = ChunkRecord(*row)
        return [found[i] for i in wanted if i in found]

    def file_chunks(self, path: str | PurePath) -> list[ChunkRecord]:
        """The chunks of one file, by position."""
        with self._errors():
            ids = [r[0] for r in self._reader().execute(
                "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path = ? "
                "ORDER BY c.start_byte, c.id", (_rel_path(path),))]
        return self.get_chunks(ids)

    def chunk_ids(
        self, path_glob: str | None = None, languages: Iterable[str] | None = None
    ) -> set[int]:
        """Ids of chunks whose path matches ``path_glob`` (SQLite GLOB: ``*``, ``?``, ``[...]``)
        and whose language is one of ``languages``; for building search filters."""
        where, params = [], []
        if path_glob is not None:
            where.append("f.path GLOB ?")
            params.append(path_glob)
        langs = list(languages) if languages is not None else None
        if langs is not None:
            where.append(f"c.language IN ({_marks(len(langs))})" if langs else "0")
            params.extend(langs)
        sql = "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._errors():
            return {r[0] for r in self._reader().execute(sql, params)}

    def chunks_missing_vectors(self, exit_layer: int, limit: int) -> list[PendingChunk]:
        """Up to ``limit`` chunks (oldest first) that have no vector at ``exit_layer``."""
        with self._errors():
            rows = self._reader().execute(
                "SELECT c.id, c.text, c.language FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM "
                "vectors v WHERE v.chunk_id = c.id AND v.exit_layer = ?) ORDER BY c.id LIMIT ?",
                (int(exit_layer), int(limit))).fetchall()
        return [PendingChunk(*r) for r in rows]

    def get_vectors(self, exit_layer: int, chunk_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Stored vectors of ``exit_layer`` by chunk id; ids without one are absent."""
        dim = self.dims.get(exit_layer)
        wanted = list(dict.fromkeys(int(i) for i in chunk_ids))
        out: dict[int, np.ndarray] = {}
        with self._errors():
            conn = self._reader()
            for part in _batches(wanted):
                for cid, blob in conn.execute(
                    f"SELECT chunk_id, vector FROM vectors WHERE exit_layer = ? AND chunk_id IN "
                    f"({_marks(len(part))})", (int(exit_layer), *part)):
                    vec = np.frombuffer(blob, dtype="<f4").astype(np.float32)
                    if dim is None or len(vec) == dim:
                        out[cid] = vec
        return out

    def search_shallow(
        self, vector: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest chunk ids to an index-exit query vector (cosine), best first, as
        ``(ids int64, scores float32)``. ``filter(chunk_id) -> bool`` restricts candidates
        (build one from :meth:`chunk_ids`). Ids may refer to chunks deleted a moment ago:
        :meth:`get_chunks` leaves those out."""
        return self.ann.search(np.asarray(vector, dtype=np.float32), k, filter)

    def stats(self) -> StoreStats:
        """Counts of files, chunks, skips, vectors per exit, coverage and disk use."""
        with self._errors():
            conn = self._reader()
            conn.execute("BEGIN")  # one snapshot for all counts
            try:
                files = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
                skipped = dict(conn.execute(
                    "SELECT skip_code, COUNT(*) FROM files WHERE skip_code IS NOT NULL "
                    "GROUP BY skip_code").fetchall())
                chunks = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
                vectors = dict(conn.execute(
                    "SELECT exit_layer, COUNT(*) FROM vectors GROUP BY exit_layer").fetchall())
                generation = self._read_generation(conn)
            finally:
                conn.execute("COMMIT")
        size = 0
        for entry in self.index_dir.iterdir():
            try:
                size += entry.stat().st_size if entry.is_file() else 0
            except OSError:
                pass

        def coverage(layer: int) -> float:
            return vectors.get(layer, 0) / chunks if chunks else 1.0

        return StoreStats(
            files=files,
            indexed_files=files - sum(skipped.values()),
            chunks=chunks,
            skipped=skipped,
            vectors=vectors,
            index_exit=self.index_exit,
            rerank_exit=self.rerank_exit,
            shallow_coverage=coverage(self.index_exit),
            deep_coverage=None if self.rerank_exit is None else coverage(self.rerank_exit),
            index_count=self.ann.count(),
            generation=generation,
            bytes_on_disk=size,
        )

    # -- closing

    def close(self) -> None:
        """Save the vector index if it changed, then release everything. Idempotent."""
        if self._closed:
            return
        try:
            if self._ann is not None and self._wconn is not None:
                try:
                    self.flush()
                except StoreError as err:
                    log.warning("%s: %s", self.index_dir, err)
        finally:
            with self._write_lock:
                self._closed = True
                if self._ann is not None:
                    self._ann.close()
                self._close_connections()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the index store {self.index_dir} is closed")

    def _writer(self) -> sqlite3.Connection:
        self._check_open()
        assert self._wconn is not None
        return self._wconn

    def _close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._wconn = None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite failures into :class:`StoreError` with what to do about them."""
        try:
            yield
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # bugs in mose, not states of the user's index
        except sqlite3.DatabaseError as err:
            text = str(err)
            if "locked" in text or "busy" in text:
                raise StoreError(
                    f"the index database {self.db_path} is locked by another process ({text}); "
                    "stop the other mose process using this workspace, or wait and retry"
                ) from err
            raise StoreError(
                f"the index database {self.db_path} is unusable ({text}). Delete the index "
                f"folder {self.index_dir} or run `mose index --rebuild` to index the "
                "workspace again"
            ) from err

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[_Txn]:
        """BEGIN IMMEDIATE ... COMMIT; ``txn.bump()`` bumps the generation in the same
        transaction, and the in-memory generation follows only once it has committed."""
        txn = _Txn(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield txn
            generation = self._bump_generation(conn) if txn.bumped else None
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if generation is not None:
            self._generation = generation

    @staticmethod
    def _bump_generation(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        return Store._read_generation(conn)

    @staticmethod
    def _read_generation(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, values: Mapping[str, str]) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         list(values.items()))

    @staticmethod
    def _upsert_file(
        conn: sqlite3.Connection, rel: str, meta: FileMetaLike, code: str | None,
        message: str | None,
    ) -> int:
        conn.execute(
            "INSERT INTO files (path, size, mtime_ns, content_hash, language, skip_code, "
            "skip_message, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO "
            "UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, content_hash = "
            "excluded.content_hash, language = excluded.language, skip_code = "
            "excluded.skip_code, skip_message = excluded.skip_message, indexed_at = "
            "excluded.indexed_at",
            (rel, int(meta.size), int(meta.mtime_ns), str(meta.content_hash), meta.language,
             code, message, time.time()))
        return int(conn.execute("SELECT id FROM files WHERE path = ?", (rel,)).fetchone()[0])

    @staticmethod
    def _delete_chunks(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        for part in _batches(list(ids)):
            conn.execute(f"DELETE FROM chunks WHERE id IN ({_marks(len(part))})", tuple(part))

    def _missing_count(self, exit_layer: int) -> int:
        return self._writer().execute(
            "SELECT COUNT(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM vectors v "
            "WHERE v.chunk_id = c.id AND v.exit_layer = ?)", (exit_layer,)).fetchone()[0]


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the base class cannot)."""


class _Txn:
    """Handle given to a transaction body: call :meth:`bump` when the shallow set changed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.bumped = False

    def bump(self) -> None:
        self.bumped = True
