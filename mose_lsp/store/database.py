"""The store's SQLite connections, transactions, generations and error mapping.

Concurrency: one writer at a time (a lock serialises write methods on one connection), any
number of readers, each thread with its own read-only connection; WAL lets them read while the
writer writes. One process should own an index folder: a second process's writes are seen by
SQLite readers but not by this process's in-memory vector indexes (a later open repairs them).
A chunk moving from fresh to deep is added to deep before it leaves fresh, so a search running
meanwhile may see it in both (callers merge by id) but never in neither.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from ..ann import HnswIndex, HnswParams, VectorIndex
from ..errors import StoreError
from .sql import marks

log = logging.getLogger("mose_lsp.store")

DB_NAME = "store.sqlite3"
DEEP, FRESH = "deep", "fresh"
PARTITIONS = (DEEP, FRESH)
"""The two vector indexes (partitions of the chunks); see ``vector_cache``."""
GEN_KEYS = {DEEP: "generation_deep", FRESH: "generation_fresh"}  # meta keys
_BUSY_TIMEOUT_MS = 10_000


class Database:
    """The state every part of :class:`~mose_lsp.store.Store` shares, and its SQLite plumbing:
    one writer connection behind a lock, one read-only connection per reader thread."""

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
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[Txn]:
        """BEGIN IMMEDIATE ... COMMIT; ``txn.bump(partition)`` bumps that partition's
        generation (and the overall one) in the same transaction, and the in-memory
        generations follow only once it has committed."""
        txn = Txn(conn)
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
        keys = ["generation", *(GEN_KEYS[part] for part in partitions)]
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key IN "
                     f"({marks(len(keys))})", keys)

    def _read_generations(self, conn: sqlite3.Connection) -> None:
        values = dict(conn.execute(
            "SELECT key, value FROM meta WHERE key IN (?, ?, ?)",
            ("generation", *(GEN_KEYS[part] for part in PARTITIONS))).fetchall())
        self._generation = int(values.get("generation", 0))
        self._gens = {part: int(values.get(GEN_KEYS[part], 0)) for part in PARTITIONS}

    @staticmethod
    def _read_generation(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, values: Mapping[str, str]) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         list(values.items()))

    def _missing_count(self, exit_layer: int) -> int:
        return self._writer().execute(
            "SELECT COUNT(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM vectors v "
            "WHERE v.chunk_id = c.id AND v.exit_layer = ?)", (exit_layer,)).fetchone()[0]


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the base class cannot)."""


class Txn:
    """Handle given to a transaction body: call :meth:`bump` for each partition it changed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.bumped: set[str] = set()

    def bump(self, partition: str) -> None:
        self.bumped.add(partition)
