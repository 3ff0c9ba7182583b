"""Writing files, chunks and vectors: one SQLite transaction each, then the vector indexes."""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import PurePath

import numpy as np

from ..lexical import fts_insert
from .database import Txn
from .fulltext import fts_delete_chunks
from .records import ChunkLike, FileMetaLike, ReplaceResult
from .sql import batches, blob, marks, rel_path, usable
from .vector_cache import Plan, VectorCacheMixin


class WritesMixin(VectorCacheMixin):
    """replace_file, record_skip, delete_file, rename_file, put_vectors."""

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
        rel = rel_path(path)
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
                        if cid not in have_shallow and usable(vectors[i]):
                            embed_ids.append(cid)
                            embed_rows.append(i)
                    else:
                        if not usable(vectors[i]):
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
                    [(cid, self.index_exit, blob(vectors[row]))
                     for cid, row in zip(embed_ids, embed_rows)])
                fts_insert(conn, new_text)
                removed = sorted(cid for ids in old.values() for cid in ids)
                fts_delete_chunks(conn, removed)
                self._delete_chunks(conn, removed)
                after = self._members(conn, chunk_ids)
                written = {self.index_exit: {cid: vectors[row]
                                             for cid, row in zip(embed_ids, embed_rows)}}
                plan = self._plan(before, after, written, txn)
            self._apply(plan)
        return ReplaceResult(chunk_ids, added, reused, removed)

    def _remove_chunks(self, conn: sqlite3.Connection, txn: Txn, ids: Sequence[int],
                       delete: Callable[[], None]) -> Plan:
        """Run ``delete`` (which drops the chunks ``ids``) and plan their removal from the
        vector indexes."""
        before = self._members(conn, ids)
        fts_delete_chunks(conn, ids)
        delete()
        return self._plan(before, {}, {}, txn)

    def record_skip(self, path: str | PurePath, meta: FileMetaLike, code: str, message: str) -> None:
        """Record that a file is not indexed (``code`` such as "too-large", "binary") and drop
        any chunks it had."""
        rel = rel_path(path)
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
        rel = rel_path(path)
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
        src, dst = rel_path(old), rel_path(new)
        if src == dst:
            return self.file_state(src) is not None
        with self._errors(), self._write_lock:
            conn = self._writer()
            with self._transaction(conn) as txn:
                row = conn.execute("SELECT id FROM files WHERE path = ?", (src,)).fetchone()
                if row is None:
                    return False
                plan = Plan()
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
                        (cid, exit_layer, blob(vecs[row]), cid))
                    if cur.rowcount > 0:
                        stored[cid] = vecs[row]  # a repeated id: the last row wins
                plan = Plan()
                if indexed and stored:
                    after = self._members(conn, stored)
                    plan = self._plan(before, after, {exit_layer: stored}, txn)
            self._apply(plan)
            if exit_layer == self.index_exit and stored and self.needs_reembed \
                    and not self._missing_count(self.index_exit):
                self.needs_reembed = False
            return len(stored)

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
        for part in batches(list(ids)):
            conn.execute(f"DELETE FROM chunks WHERE id IN ({marks(len(part))})", tuple(part))
