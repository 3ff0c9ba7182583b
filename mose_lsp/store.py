"""The workspace store: SQLite is the source of truth, the vector indexes rebuildable caches.

Layout of an index folder (created 0700; every file in it 0600)::

    store.sqlite3 (+ -wal, -shm)   files, chunks, vectors of every exit, meta   (truth)
    deep.hnsw  + deep.hnsw.json    HNSW over the deep (rerank-exit) vectors     (cache)
    fresh.hnsw + fresh.hnsw.json   HNSW over the shallow vectors of the chunks  (cache)
                                   that have no deep vector yet

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`):

- ``meta(key, value)``: ``model_id`` (model name + checksum of the exits used), ``dims`` (JSON
  ``{layer: dim}``), ``index_exit``, ``rerank_exit``, ``store_id`` (random, made once),
  ``generation``, ``generation_deep``, ``generation_fresh``.
- ``files``: one row per workspace file seen, indexed or skipped (``skip_code`` set).
- ``chunks``: ``id INTEGER PRIMARY KEY AUTOINCREMENT`` (never reused, so a stale id in the
  cache can never alias a newer chunk), ``file_id`` -> files ON DELETE CASCADE.
- ``vectors(chunk_id, exit_layer, vector)``: one row per chunk and exit (float32 little-endian
  BLOB), primary key ``(chunk_id, exit_layer)``, ON DELETE CASCADE. A row per exit (rather than
  a column per exit) makes "which chunks still lack the deep vector" an index probe
  (``NOT EXISTS`` on the primary key), coverage a ``COUNT(*)`` on ``(exit_layer, chunk_id)``,
  and lets a model with other exits use the same schema.
- ``chunks_fts``: FTS5 full-text index over each chunk's identifier-split tokens
  (``lexical.identifier_tokens`` joined by spaces, tokenizer ``unicode61``), rowid = chunk id.
  Contentless (``content=''``): it holds the inverted index only, not a second copy of the
  text. It is written in the same transaction as the chunk rows: a new chunk is inserted, and
  a chunk is removed (FTS5's ``'delete'`` command, which needs the tokens the insert saw)
  from its stored text, just before its row goes. Reused and renamed chunks keep their rows,
  and a model change leaves it alone (it holds no vectors). ``meta.lexical_tokens`` records
  ``lexical.TOKENS_VERSION``; when the tokenizer changes, open rebuilds the table from the
  chunks. Read with :meth:`Store.lexical_search` (BM25).
- ``term_df(term, df)``: the number of chunks holding each token of ``chunks_fts``, written
  with it (``lexical.fts_insert`` / ``fts_delete``) and rebuilt with it; a long query scores
  only its rarest tokens (``lexical.SCORED_QUERY_TERMS``).

Two vector indexes partition the chunks. Candidates should come from the best vector a chunk
has: once the background pass has given a chunk its deep vector, the chunk is found through
the **deep** index (query with the rerank exit, :meth:`Store.search_deep`); a new or edited
chunk waiting for that pass is found through the **fresh** index over its shallow vector (query
with the index exit, :meth:`Store.search_fresh`). Each chunk is in at most one of them (in none
only while it lacks the vector it needs, e.g. after a model change), so the two together cost
the memory of one index over all chunks. The rule, which a rebuild applies to SQLite:

- deep  = chunks with a rerank-exit vector;
- fresh = chunks with an index-exit vector and no rerank-exit vector.

``put_vectors`` at the rerank exit moves chunks from fresh to deep; ``replace_file`` puts new
chunks into fresh (reused chunks keep their place); deleting chunks removes them from both.
Without a distinct rerank exit (``rerank_exit`` None or equal to ``index_exit``), or when
opened with ``deep_index=False``, there is no deep index and fresh holds every index-exit
vector: the single shallow index of earlier versions (:meth:`Store.search_shallow`).

Memory. An HNSW index keeps the slot of a deleted vector (new ids reuse it), so after a first
scan has put every chunk into fresh and the background pass has moved them to deep, fresh
would still hold a full graph. When deletes leave an index with more deleted slots than live
ones, a background thread compacts it (``HnswIndex.compact``: a new graph of the live vectors,
built while searches and writes go on) and the next flush saves the smaller file. The peak is
therefore about one and a half full graphs, during the first deep pass, and one afterwards.

Consistency of the caches. Every write transaction that changes a partition bumps that
partition's ``generation_<name>`` (and the overall ``generation``) in the same transaction. The
indexes are updated after the commit, under the same writer lock, and saved only by
:meth:`Store.flush` (on close, or from the indexer's idle loop via :meth:`Store.maybe_flush`):
saving a large graph on every edit would cost too much. Each index is saved alone, when its
own generation moved, with a sidecar recording its partition, the exits and model it reflects,
the store's ``store_id`` and its generation. On open, per index:

- sidecar or checksum damaged, or another partition rule, model, exit, store or HNSW graph
  parameters: **rebuilt** from SQLite (logged; :attr:`Store.recovery` says why);
- same generation as the database: **loaded**, after checking that its ids equal the ids the
  rule selects in SQLite (repaired if not);
- older generation (a crash, or a kill, since the last save): **repaired**: the saved graph is
  kept, ids no longer selected are deleted, missing ones added, and the vector of every id
  present in both is compared with SQLite and re-added where it differs. That is a linear read
  of the partition's vectors plus graph work for the changes only, so a background pass that
  saves every minute or so never makes a restart rebuild the large deep index.

After any crash each index is therefore exactly its partition of the database. A save is
atomic per file (``ann.py``); a crash between saving the two indexes leaves each file
consistent with its own generation.

Concurrency: one writer at a time (a lock serialises write methods on one connection), any
number of readers, each thread with its own read-only connection; WAL lets them read while the
writer writes. One process should own an index folder: a second process's writes are seen by
SQLite readers but not by this process's in-memory vector indexes (a later open repairs them).
A chunk moving from fresh to deep is added to deep before it leaves fresh, so a search running
meanwhile may see it in both (callers merge by id) but never in neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    normalize,
)
from .errors import StoreError
from .lexical import (
    FTS_SCHEMA,
    FTS_TABLE,
    TERM_DF_SCHEMA,
    TERM_DF_TABLE,
    TOKENS_VERSION,
    fts_delete,
    fts_insert,
    fts_search,
    fts_terms,
)

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

# Id span from which lexical_search(workers > 1) splits a query (below it one query is fast).
LEXICAL_SPLIT_MIN = 20_000
SCHEMA_VERSION = 3  # 2: chunks_fts (lexical search); 3: term_df (its document frequencies)
DB_NAME = "store.sqlite3"
DEEP, FRESH = "deep", "fresh"
PARTITIONS = (DEEP, FRESH)
"""The two vector indexes (partitions of the chunks); see the module docstring."""
ANN_FILES = {
    HnswIndex.KIND: {DEEP: "deep.hnsw", FRESH: "fresh.hnsw"},
    BruteForceIndex.KIND: {DEEP: "deep.npz", FRESH: "fresh.npz"},
}
_LEGACY_ANN_FILES = ("shallow.hnsw", "shallow.npz")  # the single index of schema 1's first release
_MIN_CAPACITY = 256  # slots a new index starts with; it grows geometrically
_GEN_KEYS = {DEEP: "generation_deep", FRESH: "generation_fresh"}  # meta keys
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
""" + FTS_SCHEMA + ";\n" + TERM_DF_SCHEMA + "\n"


def _fts_delete(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Remove chunks from ``chunks_fts``; call while their rows (and text) still exist."""
    for part in _batches(list(ids)):
        fts_delete(conn, conn.execute(
            f"SELECT id, text FROM chunks WHERE id IN ({_marks(len(part))})",
            tuple(part)).fetchall())


def _fts_fill(conn: sqlite3.Connection) -> None:
    """(Re)build ``chunks_fts`` and ``term_df`` from every chunk and record the tokenizer
    version."""
    conn.execute(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}) VALUES ('delete-all')")
    conn.execute(f"DELETE FROM {TERM_DF_TABLE}")
    cursor = conn.execute("SELECT id, text FROM chunks ORDER BY id")
    while rows := cursor.fetchmany(1024):
        fts_insert(conn, rows)
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('lexical_tokens', ?)",
                 (TOKENS_VERSION,))


def _migrate_1_lexical(conn: sqlite3.Connection) -> None:
    conn.execute(FTS_SCHEMA)  # filled by the next step


def _migrate_2_term_df(conn: sqlite3.Connection) -> None:
    log.info("adding token document frequencies to the full-text index (once; about 10 s "
             "per 100,000 chunks)")
    conn.execute(TERM_DF_SCHEMA)
    _fts_fill(conn)


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1_lexical, 2: _migrate_2_term_df}
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
    index_count: int  # live vectors in the in-memory vector indexes (deep + fresh)
    generation: int
    bytes_on_disk: int  # everything in the index folder
    deep_index_count: int = 0  # chunks in the deep index (0 without one)
    fresh_index_count: int = 0  # chunks in the fresh index
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
    for name in [*(n for kind in ANN_FILES.values() for n in kind.values()), *_LEGACY_ANN_FILES]:
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
    """A workspace index: files, chunks and per-exit vectors in SQLite, plus two vector
    indexes that partition the chunks for candidate search (deep vectors where the background
    pass made them, shallow vectors for the rest; see the module docstring). Build with
    :meth:`open`."""

    def __init__(self) -> None:
        """Use :meth:`Store.open`."""
        self.index_dir = Path()
        self.db_path = Path()
        self.dims: dict[int, int] = {}
        self.index_exit = 0
        self.rerank_exit: int | None = None
        self.deep_exit: int | None = None
        """The exit whose vectors form the deep index: ``rerank_exit``, or None when the store
        keeps a single index over the index-exit vectors (no distinct rerank exit, or opened
        with ``deep_index=False``)."""
        self.model_id = ""
        self.needs_reembed = False
        """True when some chunks lack an index-exit vector (for example after a model change
        dropped them): the indexer should fill them with :meth:`chunks_missing_vectors` and
        :meth:`put_vectors` at the index exit."""
        self.reembed_reason: str | None = None
        self.recovery: dict[str, str] = {}
        """What open did with each vector index: ``"loaded"``, ``"repaired: ..."`` or
        ``"rebuilt: <why>"``, by partition name."""
        self.rebuild_reason: str | None = None
        """Why a vector index was rebuilt or repaired from SQLite at open (None when every
        index was loaded as saved)."""
        self._ann_kinds = {DEEP: HnswIndex.KIND, FRESH: HnswIndex.KIND}  # partition -> kind
        self._hnsw_params = HnswParams()
        self._anns: dict[str, VectorIndex] = {}
        self._wconn: sqlite3.Connection | None = None
        self._write_lock = threading.RLock()
        self._local = threading.local()
        # Weak: a reader thread's connection closes when the thread ends; close() closes the rest.
        self._conns: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._lexical_pool: ThreadPoolExecutor | None = None  # lexical_search(workers > 1)
        self._lexical_workers = 0
        self._store_id = ""
        self._generation = 0
        self._gens: dict[str, int] = {}  # partition -> generation in the database
        self._saved: dict[str, int | None] = {}  # partition -> generation saved to disk
        self._last_save = 0.0
        self._closed = False
        self._closing = False  # set by close(): a running compaction stops at its next batch
        self._compactor: threading.Thread | None = None
        self._compactor_lock = threading.Lock()

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
        deep_index: bool = True,
        fresh_ann: str | None = None,
    ) -> Store:
        """Open (or create) the store in ``index_dir``.

        ``dims`` maps each exit layer the model provides to its embedding dimension;
        ``index_exit`` is the layer every chunk is embedded with on write (the shallow one),
        ``rerank_exit`` the deep one. ``model_id`` identifies the model and the exits in use
        (name plus manifest checksums): when it differs from the one the store was built with,
        all stored vectors are dropped and :attr:`needs_reembed` is set. ``ann`` picks the
        vector index: ``"hnsw"`` (default) or ``"brute"`` (exact; fine for small workspaces);
        ``hnsw_params`` its parameters; ``fresh_ann`` another kind for the fresh index alone
        (``"brute"``: exact, memory that follows the live count, no graph inserts; queries
        cost O(n), a few ms at 100k). ``deep_index=False`` keeps one index over the index-exit
        vectors even when there is a rerank exit (see the module docstring).

        Raises :class:`StoreError` when the folder or database cannot be used, with what to do.
        """
        if index_exit not in dims:
            raise ValueError(f"index_exit {index_exit} is not in dims {dict(dims)}")
        if rerank_exit is not None and rerank_exit not in dims:
            raise ValueError(f"rerank_exit {rerank_exit} is not in dims {dict(dims)}")
        for kind in (ann, fresh_ann or ann):
            if kind not in ANN_FILES:
                raise ValueError(f"ann must be one of {sorted(ANN_FILES)}, got {kind!r}")
        store = cls()
        store.index_dir = Path(index_dir).expanduser().absolute()
        store.db_path = store.index_dir / DB_NAME
        store.dims = {int(k): int(v) for k, v in dims.items()}
        store.index_exit = int(index_exit)
        store.rerank_exit = None if rerank_exit is None else int(rerank_exit)
        if deep_index and store.rerank_exit is not None and store.rerank_exit != store.index_exit:
            store.deep_exit = store.rerank_exit
        store.model_id = model_id
        store._ann_kinds = {DEEP: ann, FRESH: fresh_ann or ann}
        store._hnsw_params = hnsw_params or HnswParams()
        try:
            store._open()
        except BaseException:
            for index in store._anns.values():
                index.close()
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
            self._read_generations(self._wconn)
            self._load_or_rebuild_anns()

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
                virtual = {r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND "
                    "sql LIKE 'CREATE VIRTUAL TABLE%'")}
                # A virtual table first: dropping it drops its shadow tables.
                for name in sorted(tables, key=lambda n: n not in virtual):
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
                    "lexical_tokens": TOKENS_VERSION,
                })
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _check_model(self) -> None:
        """Drop vectors made by another model (or with other dims), record the new model, and
        add the meta keys a store from an earlier version lacks."""
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
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", [
                ("store_id", secrets.token_hex(8)),
                *((_GEN_KEYS[part], "0") for part in PARTITIONS),
            ])
            tokens = conn.execute(
                "SELECT value FROM meta WHERE key = 'lexical_tokens'").fetchone()
            if tokens is None or tokens[0] != TOKENS_VERSION:
                log.info("%s: the identifier tokenizer changed; rebuilding the full-text index",
                         self.index_dir)
                _fts_fill(conn)
            if drop is None:
                conn.execute("DELETE FROM vectors")
            for layer in drop or []:
                conn.execute("DELETE FROM vectors WHERE exit_layer = ?", (layer,))
            if reason:
                self._bump_generations(conn, PARTITIONS)
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
        self._store_id = conn.execute(
            "SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
        if reason:
            log.info("%s: %s; stored vectors were dropped and will be recomputed",
                     self.index_dir, reason)
            self.reembed_reason = reason
        missing = self._missing_count(self.index_exit)
        self.needs_reembed = missing > 0
        if self.needs_reembed and self.reembed_reason is None:
            self.reembed_reason = f"{missing} chunks lack a vector at exit {self.index_exit}"

    # -- the vector indexes (caches)

    @property
    def partitions(self) -> tuple[str, ...]:
        """The vector indexes this store keeps: ``("deep", "fresh")``, or ``("fresh",)``."""
        return PARTITIONS if self.deep_exit is not None else (FRESH,)

    def index_path(self, partition: str) -> Path:
        """The file of a vector index (its sidecar is ``<path>.json``)."""
        return self.index_dir / ANN_FILES[self._ann_kinds[partition]][partition]

    @property
    def deep_ann(self) -> VectorIndex | None:
        """The in-memory deep index (rerank-exit vectors), None without one. Read it only."""
        self._check_open()
        return self._anns.get(DEEP)

    @property
    def fresh_ann(self) -> VectorIndex:
        """The in-memory fresh index (index-exit vectors of chunks without a deep vector, or
        of every chunk without a deep index). Read it only."""
        self._check_open()
        return self._anns[FRESH]

    def _exit_of(self, partition: str) -> int:
        if partition == DEEP:
            assert self.deep_exit is not None
            return self.deep_exit
        return self.index_exit

    def _partition_sql(self, partition: str, columns: str) -> tuple[str, tuple[int, ...]]:
        """SELECT ``columns`` (of ``vectors v``) for the chunks the partition's rule selects,
        by chunk id. A vector of the wrong size counts as absent everywhere."""
        layer = self._exit_of(partition)
        sql = (f"SELECT {columns} FROM vectors v WHERE v.exit_layer = ? "
               "AND length(v.vector) = ?")
        params: tuple[int, ...] = (layer, 4 * self.dims[layer])
        if partition == FRESH and self.deep_exit is not None:
            sql += (" AND NOT EXISTS (SELECT 1 FROM vectors d WHERE d.chunk_id = v.chunk_id "
                    "AND d.exit_layer = ? AND length(d.vector) = ?)")
            params += (self.deep_exit, 4 * self.dims[self.deep_exit])
        return sql + " ORDER BY v.chunk_id", params

    def _partition_ids(self, conn: sqlite3.Connection, partition: str) -> np.ndarray:
        sql, params = self._partition_sql(partition, "v.chunk_id")
        return np.fromiter((r[0] for r in conn.execute(sql, params)), dtype=np.int64)

    def _members(self, conn: sqlite3.Connection, ids: Iterable[int]) -> dict[str, set[int]]:
        """Which of ``ids`` each partition's rule selects in the database now."""
        out: dict[str, set[int]] = {part: set() for part in self.partitions}
        deep = self.deep_exit if self.deep_exit is not None else -1
        sbytes = 4 * self.dims[self.index_exit]
        dbytes = 4 * self.dims.get(deep, 0)
        for part in _batches(list(dict.fromkeys(int(i) for i in ids))):
            for cid, has_deep, has_shallow in conn.execute(
                "SELECT c.id, EXISTS (SELECT 1 FROM vectors d WHERE d.chunk_id = c.id AND "
                "d.exit_layer = ? AND length(d.vector) = ?), EXISTS (SELECT 1 FROM vectors s "
                "WHERE s.chunk_id = c.id AND s.exit_layer = ? AND length(s.vector) = ?) "
                f"FROM chunks c WHERE c.id IN ({_marks(len(part))})",
                (deep, dbytes, self.index_exit, sbytes, *part),
            ):
                if has_deep and self.deep_exit is not None:
                    out[DEEP].add(cid)
                elif has_shallow:
                    out[FRESH].add(cid)
        return out

    def _identity(self, partition: str) -> dict[str, Any]:
        """What a saved index must have been built for to be usable (its sidecar meta, less
        the generation)."""
        identity: dict[str, Any] = {
            "partition": partition,
            "store_id": self._store_id,
            "model_id": self.model_id,
            "exit": self._exit_of(partition),
            "without_exit": self.deep_exit if partition == FRESH else None,
        }
        if self._ann_kinds[partition] == HnswIndex.KIND:
            identity["M"] = self._hnsw_params.M
            identity["ef_construction"] = self._hnsw_params.ef_construction
        return identity

    def _new_ann(self, partition: str, capacity: int) -> VectorIndex:
        dim = self.dims[self._exit_of(partition)]
        capacity = max(_MIN_CAPACITY, capacity)
        if self._ann_kinds[partition] == HnswIndex.KIND:
            return HnswIndex.create(dim, capacity, self._hnsw_params)
        return BruteForceIndex.create(dim, capacity)

    def _load_ann(self, partition: str) -> VectorIndex:
        dim = self.dims[self._exit_of(partition)]
        if self._ann_kinds[partition] == HnswIndex.KIND:
            return HnswIndex.load(self.index_path(partition), dim, self._hnsw_params)
        return BruteForceIndex.load(self.index_path(partition), dim)

    def _load_or_rebuild_anns(self) -> None:
        # Files this open will not maintain (a deep index without a deep exit, an index of
        # another kind) are removed, so that a later open that wants them rebuilds them
        # rather than trusting them.
        for part in PARTITIONS:
            for kind, names in ANN_FILES.items():
                if part not in self.partitions or kind != self._ann_kinds[part]:
                    self._remove_index_files(self.index_dir / names[part])
        for name in _LEGACY_ANN_FILES:
            for legacy in (self.index_dir / name, self.index_dir / (name + ".json")):
                legacy.unlink(missing_ok=True)
        reasons = []
        for part in self.partitions:
            self.recovery[part] = self._load_or_rebuild(part)
            if self.recovery[part] != "loaded":
                reasons.append(f"{part} index {self.recovery[part]}")
        self.rebuild_reason = "; ".join(reasons) or None
        self._last_save = time.monotonic()
        self._schedule_compaction()

    def _remove_index_files(self, path: Path) -> None:
        for file in (path, path.with_name(path.name + ".json")):
            try:
                file.unlink(missing_ok=True)
            except OSError as err:
                log.warning("%s: cannot remove %s: %s", self.index_dir, file, err)

    def _load_or_rebuild(self, partition: str) -> str:
        """Load, repair or rebuild one index; returns what happened (see :attr:`recovery`)."""
        conn = self._writer()
        reason: str | None = None
        ann: VectorIndex | None = None
        try:
            ann = self._load_ann(partition)
        except IndexFileError as err:
            reason = str(err)
        if ann is not None:
            meta, expected = ann.meta, self._identity(partition)
            diff = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
            if diff or not isinstance(meta.get("generation"), int):
                reason = "it was built for something else (saved, current): " + (", ".join(
                    f"{k} {a!r}, {b!r}" for k, (a, b) in diff.items()) or "no generation")
                ann.close()
                ann = None
        if ann is not None:
            saved = int(ann.meta["generation"])
            stale = saved != self._gens[partition]
            try:
                removed, added, replaced = self._reconcile(conn, partition, ann, stale)
            except (RuntimeError, MemoryError, ValueError, KeyError) as err:
                reason = f"repairing it failed: {err}"
                ann.close()
                ann = None
        if ann is None:
            log.info("%s: rebuilding the %s vector index from the database: %s",
                     self.index_dir, partition, reason)
            self._anns[partition] = self._build_ann(partition)
            self._save_ann(partition)
            return f"rebuilt: {reason}"
        self._anns[partition] = ann
        if not stale and not (removed or added):
            self._saved[partition] = saved
            return "loaded"
        # The in-memory index now equals the database; the file does not until flush().
        self._saved[partition] = None
        what = (f"saved at generation {saved}, database at {self._gens[partition]}; "
                f"{removed} removed, {added} added, {replaced} replaced")
        log.info("%s: repaired the %s vector index: %s", self.index_dir, partition, what)
        return f"repaired: {what}"

    def _reconcile(
        self, conn: sqlite3.Connection, partition: str, ann: VectorIndex, check_vectors: bool
    ) -> tuple[int, int, int]:
        """Make ``ann`` hold exactly the partition's vectors in the database.

        Ids the rule no longer selects are deleted, missing ids added. With ``check_vectors``
        the vector of every id in both is compared (batch by batch) and re-added where it
        differs. Returns (removed, added, replaced).
        """
        layer = self._exit_of(partition)
        dim = self.dims[layer]
        truth = self._partition_ids(conn, partition)
        have = ann.ids()
        gone = np.setdiff1d(have, truth, assume_unique=True)
        missing = np.setdiff1d(truth, have, assume_unique=True)
        replaced = 0
        if check_vectors:
            common = np.intersect1d(truth, have, assume_unique=True)
            for part in _batches(common.tolist(), 4096):
                stored = self._fetch_vectors(conn, layer, part)
                ids = [cid for cid in part if cid in stored]
                if not ids:
                    continue
                want = normalize(np.stack([stored[cid] for cid in ids]), dim)
                differ = np.any(np.abs(ann.get(ids) - want) > 1e-6, axis=1)
                if differ.any():
                    fix = np.asarray(ids, dtype=np.int64)[differ]
                    ann.add(fix, want[differ])
                    replaced += len(fix)
        if len(gone):
            ann.delete(gone)
        for part in _batches(missing.tolist(), 4096):
            stored = self._fetch_vectors(conn, layer, part)
            if stored:
                ann.add(np.fromiter(stored, dtype=np.int64, count=len(stored)),
                        np.stack(list(stored.values())))
        return len(gone), len(missing), replaced

    def _fetch_vectors(
        self, conn: sqlite3.Connection, layer: int, ids: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """Vectors of ``layer`` for ``ids`` (of the right size), read with ``conn``."""
        nbytes = 4 * self.dims[layer]
        out: dict[int, np.ndarray] = {}
        for part in _batches(list(ids)):
            for cid, blob in conn.execute(
                "SELECT chunk_id, vector FROM vectors WHERE exit_layer = ? AND chunk_id IN "
                f"({_marks(len(part))})", (layer, *part)):
                if len(blob) == nbytes:
                    out[cid] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return out

    def _build_ann(self, partition: str) -> VectorIndex:
        conn = self._writer()
        dim = self.dims[self._exit_of(partition)]
        count_sql, params = self._partition_sql(partition, "COUNT(*)")
        count = conn.execute(count_sql.replace(" ORDER BY v.chunk_id", ""), params).fetchone()[0]
        ann = self._new_ann(partition, int(count * 1.25))
        sql, params = self._partition_sql(partition, "v.chunk_id, v.vector")
        cursor = conn.execute(sql, params)
        while rows := cursor.fetchmany(4096):
            ids = np.array([cid for cid, _ in rows], dtype=np.int64)
            vecs = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4")
            ann.add(ids, vecs.reshape(len(rows), dim))
        return ann

    def _save_ann(self, partition: str) -> None:
        ann = self._anns[partition]
        meta = {**self._identity(partition), "generation": self._gens[partition]}
        try:
            ann.save(self.index_path(partition), meta)
        except OSError as err:
            log.warning("%s: could not save the %s vector index (%s); it will be repaired or "
                        "rebuilt on the next open", self.index_dir, partition, err)
            return
        self._saved[partition] = self._gens[partition]
        self._last_save = time.monotonic()

    def _apply(self, plan: _Plan) -> None:
        """Mirror a committed change into the vector indexes (writer lock held). Deep goes
        first, so a chunk moving from fresh to deep is never in neither."""
        deleted = False
        for part in self.partitions:
            removed, ids, vectors = plan.deletes[part], plan.add_ids[part], plan.add_vectors[part]
            if not removed and not ids:
                continue
            ann = self._anns[part]
            try:
                if removed:
                    ann.delete(sorted(removed))
                    deleted = True
                if ids:
                    ann.add(np.asarray(ids, dtype=np.int64), np.stack(vectors))
            except (RuntimeError, MemoryError, ValueError) as err:
                log.warning("%s: updating the %s vector index failed (%s); rebuilding it",
                            self.index_dir, part, err)
                ann.close()
                self._anns[part] = self._build_ann(part)
        if deleted:
            self._schedule_compaction()

    # -- giving memory back

    def compact(self, cancel: Callable[[], bool] | None = None) -> list[str]:
        """Give back the memory of deleted vectors now: rebuild each index whose deleted slots
        outnumber its live vectors (see ``HnswIndex.compact``). Runs alongside searches and
        writes (from any thread); the smaller graph is saved by the next flush. Returns the
        partitions compacted.

        Writes start this in a background thread when needed (typically while the background
        pass moves chunks from the fresh to the deep index), so callers need not.
        """
        done = []
        for part, ann in list(self._anns.items()):
            if ann.maybe_compact(cancel):
                done.append(part)
                with self._write_lock:
                    if not self._closed and self._anns.get(part) is ann:
                        self._saved[part] = None  # save the smaller graph at the next flush
        return done

    def _schedule_compaction(self) -> None:
        """Start the background compaction if an index wants one and none is running (the
        running one re-checks before it ends, under the same lock, so no request is lost)."""
        with self._compactor_lock:
            if self._compactor is not None or self._closing or not self._wants_compaction():
                return
            self._compactor = threading.Thread(target=self._compact_worker,
                                               name="mose-store-compact", daemon=True)
            self._compactor.start()

    def _wants_compaction(self) -> bool:
        return any(ann.wants_compaction() for ann in list(self._anns.values()))

    def _compact_worker(self) -> None:
        try:
            while True:
                try:
                    self.compact(cancel=lambda: self._closing)
                except StoreError:
                    pass  # the store or an index was closed meanwhile
                except (RuntimeError, MemoryError, ValueError) as err:
                    log.warning("%s: compacting a vector index failed (%s); it keeps its old "
                                "graph", self.index_dir, err)
                    with self._compactor_lock:
                        self._compactor = None
                    return
                with self._compactor_lock:
                    try:
                        again = not self._closing and self._wants_compaction()
                    except StoreError:
                        again = False
                    if not again:
                        self._compactor = None  # in the same hold as the check
                        return
        except BaseException:
            with self._compactor_lock:
                self._compactor = None
            raise

    def _plan(
        self,
        before: Mapping[str, set[int]],
        after: Mapping[str, set[int]],
        written: Mapping[int, Mapping[int, np.ndarray]],
        txn: _Txn,
    ) -> _Plan:
        """What changes in each index, from partition membership before and after a write
        (inside its transaction) and the vectors it wrote (exit -> id -> vector). Bumps the
        generation of each partition that changes."""
        plan = _Plan()
        for part in self.partitions:
            was, now = before.get(part, set()), after.get(part, set())
            new_vectors = written.get(self._exit_of(part), {})
            plan.deletes[part] = was - now
            for cid in sorted(now):
                if cid not in was or cid in new_vectors:
                    vec = new_vectors.get(cid)
                    if vec is None:  # entered the partition without a new vector: read it
                        vec = self._fetch_vectors(self._writer(), self._exit_of(part),
                                                  [cid])[cid]
                    plan.add_ids[part].append(cid)
                    plan.add_vectors[part].append(vec)
            if plan.deletes[part] or plan.add_ids[part]:
                txn.bump(part)
        return plan

    def flush(self) -> bool:
        """Save each vector index that changed since its last save; returns whether it saved.

        Call on idle and before exit (``close`` does). If another process wrote to the database
        meanwhile, the in-memory indexes are not what the database holds and are not saved (the
        next open repairs them).
        """
        with self._errors(), self._write_lock:
            self._check_open()
            todo = [part for part in self.partitions
                    if self._saved.get(part) != self._gens[part]
                    or not self.index_path(part).exists()]
            if not todo:
                return False
            current = self._read_generation(self._writer())
            if current != self._generation:
                log.warning("%s: another process changed the index (generation %d, expected "
                            "%d); not saving the vector indexes", self.index_dir, current,
                            self._generation)
                return False
            for part in todo:
                self._save_ann(part)
            return all(self._saved.get(part) == self._gens[part] for part in todo)

    def maybe_flush(self, min_interval_s: float = 60.0) -> bool:
        """:meth:`flush` if there are unsaved changes and the last save is older than
        ``min_interval_s`` seconds (for periodic saves from an idle loop, such as during the
        background deep pass: it bounds what a repair after a crash has to redo)."""
        if not self.dirty or time.monotonic() - self._last_save < min_interval_s:
            return False
        return self.flush()

    @property
    def dirty(self) -> bool:
        """Whether a vector index changed since it was last saved."""
        return any(self._saved.get(part) != self._gens.get(part) for part in self.partitions)

    @property
    def generation(self) -> int:
        """Bumped by every committed change to either vector index's partition."""
        return self._generation

    # -- writes

    def replace_file(
        self,
        path: str | PurePath,
        meta: FileMetaLike,
        chunks: Sequence[ChunkLike],
        shallow_vectors: np.ndarray | None,
    ) -> ReplaceResult:
        """Replace a file's chunks in one transaction and then update the vector indexes.

        ``shallow_vectors`` has one row per chunk (index-exit vectors, shape (N, dim)). A chunk
        whose content hash the file already had keeps its id, all its stored vectors (shallow
        and deep) and its place in the vector indexes, and its row is ignored: the indexer may
        pass a zero row for it (see :meth:`chunk_hashes`) instead of embedding it again. New
        chunks go into the fresh index; their rows must be finite and non-zero. Removed chunks
        leave both indexes. Also clears any earlier skip of the file.
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
                old_ids = [cid for ids in old.values() for cid in ids]
                before = self._members(conn, old_ids)
                have_shallow = set()
                if old:
                    have_shallow = {r[0] for r in conn.execute(
                        "SELECT v.chunk_id FROM vectors v JOIN chunks c ON c.id = v.chunk_id "
                        "WHERE c.file_id = ? AND v.exit_layer = ?", (file_id, self.index_exit))}
                chunk_ids: list[int] = []
                added: list[int] = []
                new_text: list[tuple[int, str]] = []  # full-text rows, one insert per file
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
                        new_text.append((cid, chunk.text))
                        added.append(cid)
                        embed_ids.append(cid)
                        embed_rows.append(i)
                    chunk_ids.append(cid)
                conn.executemany(
                    "INSERT OR REPLACE INTO vectors (chunk_id, exit_layer, vector) VALUES (?, ?, ?)",
                    [(cid, self.index_exit, _blob(vectors[row]))
                     for cid, row in zip(embed_ids, embed_rows)])
                fts_insert(conn, new_text)
                removed = sorted(cid for ids in old.values() for cid in ids)
                _fts_delete(conn, removed)
                self._delete_chunks(conn, removed)
                after = self._members(conn, chunk_ids)
                written = {self.index_exit: {cid: vectors[row]
                                             for cid, row in zip(embed_ids, embed_rows)}}
                plan = self._plan(before, after, written, txn)
            self._apply(plan)
        return ReplaceResult(chunk_ids, added, reused, removed)

    def _remove_chunks(self, conn: sqlite3.Connection, txn: _Txn, ids: Sequence[int],
                       delete: Callable[[], None]) -> _Plan:
        """Run ``delete`` (which drops the chunks ``ids``) and plan their removal from the
        vector indexes."""
        before = self._members(conn, ids)
        _fts_delete(conn, ids)
        delete()
        return self._plan(before, {}, {}, txn)

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
                plan = self._remove_chunks(conn, txn, removed,
                                           lambda: self._delete_chunks(conn, removed))
            self._apply(plan)

    def delete_file(self, path: str | PurePath) -> bool:
        """Forget a file, its chunks and their vectors (in both indexes); returns whether it
        was known."""
        rel = _rel_path(path)
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                row = conn.execute("SELECT id FROM files WHERE path = ?", (rel,)).fetchone()
                if row is None:
                    return False
                removed = [r[0] for r in conn.execute(
                    "SELECT id FROM chunks WHERE file_id = ?", (row[0],))]
                plan = self._remove_chunks(
                    conn, txn, removed,
                    lambda: conn.execute("DELETE FROM files WHERE id = ?", (row[0],)))
            self._apply(plan)
            return True

    def rename_file(self, old: str | PurePath, new: str | PurePath) -> bool:
        """Move a file's record to a new path, keeping its chunks (ids), vectors and places in
        the vector indexes. A file already stored at ``new`` is replaced. Returns False when
        ``old`` is unknown."""
        src, dst = _rel_path(old), _rel_path(new)
        if src == dst:
            return self.file_state(src) is not None
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                row = conn.execute("SELECT id FROM files WHERE path = ?", (src,)).fetchone()
                if row is None:
                    return False
                plan = _Plan()
                target = conn.execute("SELECT id FROM files WHERE path = ?", (dst,)).fetchone()
                if target is not None:
                    removed = [r[0] for r in conn.execute(
                        "SELECT id FROM chunks WHERE file_id = ?", (target[0],))]
                    plan = self._remove_chunks(
                        conn, txn, removed,
                        lambda: conn.execute("DELETE FROM files WHERE id = ?", (target[0],)))
                conn.execute("UPDATE files SET path = ? WHERE id = ?", (dst, row[0]))
            self._apply(plan)
            return True

    def put_vectors(self, exit_layer: int, chunk_ids: Sequence[int], vectors: np.ndarray) -> int:
        """Store vectors of ``exit_layer`` for ``chunk_ids`` (replacing any). Ids of chunks
        deleted meanwhile are skipped; returns how many were stored.

        At the rerank exit (with a deep index) the chunks join the deep index and leave the
        fresh one. At the index exit, chunks without a deep vector join (or are updated in)
        the fresh index; without a deep index every one does."""
        if exit_layer not in self.dims:
            raise ValueError(f"exit {exit_layer} is not one of the store's exits {sorted(self.dims)}")
        dim = self.dims[exit_layer]
        ids = [int(i) for i in chunk_ids]
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.shape != (len(ids), dim):
            raise ValueError(f"vectors have shape {vecs.shape}, expected ({len(ids)}, {dim})")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors contain NaN or infinity")
        indexed = exit_layer in (self.index_exit, self.deep_exit)
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                before = self._members(conn, ids) if indexed else {}
                stored: dict[int, np.ndarray] = {}
                for row, cid in enumerate(ids):
                    cur = conn.execute(
                        "INSERT OR REPLACE INTO vectors (chunk_id, exit_layer, vector) "
                        "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM chunks WHERE id = ?)",
                        (cid, exit_layer, _blob(vecs[row]), cid))
                    if cur.rowcount > 0:
                        stored[cid] = vecs[row]  # a repeated id: the last row wins
                plan = _Plan()
                if indexed and stored:
                    after = self._members(conn, stored)
                    plan = self._plan(before, after, {exit_layer: stored}, txn)
            self._apply(plan)
            if exit_layer == self.index_exit and stored and self.needs_reembed \
                    and not self._missing_count(self.index_exit):
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

    def search_deep(
        self, vector: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest chunks to a rerank-exit ("deep") query vector among the chunks that have a
        deep vector (cosine of the deep vectors), best first, as ``(ids int64, scores
        float32)``. Empty arrays when the store has no deep index (:attr:`deep_exit` None).

        ``filter(chunk_id) -> bool`` restricts candidates (build one from :meth:`chunk_ids`).
        Ids may refer to chunks deleted a moment ago (:meth:`get_chunks` leaves those out), and
        a chunk moving to the deep index may for a moment be found by :meth:`search_fresh`
        too: merge the two lists by id.
        """
        ann = self._anns.get(DEEP) if not self._closed else None
        if ann is None:
            self._check_open()
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return ann.search(np.asarray(vector, dtype=np.float32), k, filter)

    def search_fresh(
        self, vector: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest chunks to an index-exit ("shallow") query vector among the chunks that have
        no deep vector yet (every chunk when the store has no deep index), by the cosine of
        their shallow vectors; same shapes, filter and caveats as :meth:`search_deep`.

        Together the two searches cover every chunk that has the vector its partition needs.
        Their scores come from different exits and are not comparable: re-rank the union
        (the fresh candidates with deep vectors computed on the fly) rather than merging by
        score.
        """
        return self.fresh_ann.search(np.asarray(vector, dtype=np.float32), k, filter)

    def search_shallow(
        self, vector: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same as :meth:`search_fresh`, kept for callers written before the deep index.

        With a deep index this no longer covers every chunk, only those awaiting their deep
        vector: such callers must also call :meth:`search_deep` (or open the store with
        ``deep_index=False`` to keep one shallow index over all chunks, as before).
        """
        return self.search_fresh(vector, k, filter)

    def lexical_search(
        self, query_tokens: Iterable[str], k: int,
        filter_ids: Collection[int] | IdFilter | None = None, workers: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` chunks with the best BM25 score (FTS5's ``bm25()``, negated so that
        higher is better and every score is positive) for ``query_tokens`` (identifier-split,
        as ``lexical.identifier_tokens`` makes them; a chunk matches if it has any of them),
        best first, as ``(ids int64, scores float64)``. ``filter_ids`` (a set of ids, or a
        predicate like the vector searches') restricts the chunks. The tokens scored are those
        ``lexical.fts_terms`` picks (a long query's rarest); no token gives empty arrays. Every
        token is quoted, so no query is malformed. ``workers`` > 1 (unfiltered searches of
        a large store) splits the work over that many threads by chunk id range: FTS5's
        ``bm25()`` costs about a microsecond per matching chunk, tens of milliseconds for a
        common word at 100k chunks."""
        self._check_open()
        with self._errors():
            # The tokens scored (the rarest, for a long query) are picked once, here.
            query_tokens = fts_terms(self._reader(), query_tokens)
            if workers > 1 and filter_ids is None and k >= 1:
                lo, hi = self._reader().execute(  # two subqueries: each an index seek
                    "SELECT (SELECT min(id) FROM chunks), (SELECT max(id) FROM chunks)").fetchone()
                if lo is not None and hi - lo >= LEXICAL_SPLIT_MIN:
                    return self._lexical_split(list(query_tokens), k, lo, hi, workers)
            return fts_search(self._reader(), query_tokens, k, filter_ids)

    def _lexical_split(self, tokens: list[str], k: int, lo: int, hi: int,
                       workers: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`fts_search` over ``workers`` id ranges at once (SQLite runs each on its own
        connection, outside the GIL), merged: the same list as one query."""
        with self._conns_lock:
            if self._lexical_pool is None or self._lexical_workers < workers:
                if self._lexical_pool is not None:
                    self._lexical_pool.shutdown(wait=False)
                self._lexical_pool = ThreadPoolExecutor(workers,
                                                        thread_name_prefix="mose-lexical")
                self._lexical_workers = workers
            pool = self._lexical_pool
        edges = [lo + (hi - lo + 1) * p // workers for p in range(workers + 1)]

        def part(p: int) -> tuple[np.ndarray, np.ndarray]:
            with self._errors():
                return fts_search(self._reader(), tokens, k,
                                  rowids=(edges[p], edges[p + 1] - 1))

        parts = list(pool.map(part, range(workers)))
        ids = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        order = np.lexsort((ids, -scores))[:k]
        return ids[order], scores[order]

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

        self._check_open()
        counts = {part: ann.count() for part, ann in self._anns.items()}

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
            index_count=sum(counts.values()),
            generation=generation,
            bytes_on_disk=size,
            deep_index_count=counts.get(DEEP, 0),
            fresh_index_count=counts[FRESH],
        )

    # -- closing

    def close(self) -> None:
        """Save the vector indexes that changed, then release everything. Idempotent."""
        if self._closed:
            return
        with self._compactor_lock:
            self._closing = True
            compactor = self._compactor
        if compactor is not None:
            compactor.join()  # it stops at its next batch
        try:
            if self._anns and self._wconn is not None:
                try:
                    self.flush()
                except StoreError as err:
                    log.warning("%s: %s", self.index_dir, err)
        finally:
            with self._write_lock:
                self._closed = True
                for ann in self._anns.values():
                    ann.close()
                if self._lexical_pool is not None:
                    self._lexical_pool.shutdown(wait=True)
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
        """BEGIN IMMEDIATE ... COMMIT; ``txn.bump(partition)`` bumps that partition's
        generation (and the overall one) in the same transaction, and the in-memory
        generations follow only once it has committed."""
        txn = _Txn(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield txn
            if txn.bumped:
                self._bump_generations(conn, sorted(txn.bumped))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if txn.bumped:
            self._read_generations(conn)

    @staticmethod
    def _bump_generations(conn: sqlite3.Connection, partitions: Iterable[str]) -> None:
        keys = ["generation", *(_GEN_KEYS[part] for part in partitions)]
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key IN "
                     f"({_marks(len(keys))})", keys)

    def _read_generations(self, conn: sqlite3.Connection) -> None:
        values = dict(conn.execute(
            "SELECT key, value FROM meta WHERE key IN (?, ?, ?)",
            ("generation", *(_GEN_KEYS[part] for part in PARTITIONS))).fetchall())
        self._generation = int(values.get("generation", 0))
        self._gens = {part: int(values.get(_GEN_KEYS[part], 0)) for part in PARTITIONS}

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
    """Handle given to a transaction body: call :meth:`bump` for each partition it changed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.bumped: set[str] = set()

    def bump(self, partition: str) -> None:
        self.bumped.add(partition)


class _Plan:
    """Changes to apply to the vector indexes after a commit, by partition."""

    def __init__(self) -> None:
        self.deletes: dict[str, set[int]] = {part: set() for part in PARTITIONS}
        self.add_ids: dict[str, list[int]] = {part: [] for part in PARTITIONS}
        self.add_vectors: dict[str, list[np.ndarray]] = {part: [] for part in PARTITIONS}
