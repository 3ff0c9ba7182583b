"""The store's SQLite schema, its migrations, and the model it was built with.

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
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable

from ..errors import StoreError
from ..lexical import FTS_SCHEMA, TERM_DF_SCHEMA, TOKENS_VERSION
from .database import GEN_KEYS, PARTITIONS, Database, log
from .fulltext import fts_fill

SCHEMA_VERSION = 3  # 2: chunks_fts (lexical search); 3: term_df (its document frequencies)

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


def _migrate_1_lexical(conn: sqlite3.Connection) -> None:
    conn.execute(FTS_SCHEMA)  # filled by the next step


def _migrate_2_term_df(conn: sqlite3.Connection) -> None:
    log.info("adding token document frequencies to the full-text index (once; about 10 s "
             "per 100,000 chunks)")
    conn.execute(TERM_DF_SCHEMA)
    fts_fill(conn)


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1_lexical, 2: _migrate_2_term_df}
"""Schema upgrades: ``_MIGRATIONS[v]`` turns version ``v`` into ``v + 1`` in place. A version
with no path to :data:`SCHEMA_VERSION` is dropped and recreated (the store is a cache of the
workspace; the indexer fills it again)."""


class SchemaMixin(Database):
    """Creating, migrating and checking the database on open."""

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
                *((GEN_KEYS[part], "0") for part in PARTITIONS),
            ])
            tokens = conn.execute(
                "SELECT value FROM meta WHERE key = 'lexical_tokens'").fetchone()
            if tokens is None or tokens[0] != TOKENS_VERSION:
                log.info("%s: the identifier tokenizer changed; rebuilding the full-text index",
                         self.index_dir)
                fts_fill(conn)
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
