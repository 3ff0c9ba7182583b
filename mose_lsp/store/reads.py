"""Reading files, chunks, vectors and counts (each thread on its own read-only connection)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath

import numpy as np

from .database import DEEP, FRESH, Database
from .records import ChunkRecord, FileState, PendingChunk, StoreStats
from .sql import batches, marks, rel_path


class ReadsMixin(Database):
    """Lookups by path and id, search filters, missing vectors, and :meth:`stats`."""

    def file_state(self, path: str | PurePath) -> FileState | None:
        """What the store knows about ``path``, or None."""
        with self._errors():
            row = self._reader().execute(
                "SELECT path, size, mtime_ns, content_hash, language, skip_code, skip_message, "
                "indexed_at FROM files WHERE path = ?", (rel_path(path),)).fetchone()
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
                "WHERE f.path = ?", (rel_path(path),)).fetchall()
        return {r[0] for r in rows}

    def get_chunks(self, ids: Iterable[int]) -> list[ChunkRecord]:
        """The chunks with these ids, in the given order; ids no longer stored are left out."""
        wanted = [int(i) for i in ids]
        found: dict[int, ChunkRecord] = {}
        with self._errors():
            conn = self._reader()
            for part in batches(list(dict.fromkeys(wanted))):
                for row in conn.execute(
                    "SELECT c.id, f.path, c.symbol, c.kind, c.language, c.start_line, c.end_line,"
                    " c.start_byte, c.end_byte, c.content_hash, c.text FROM chunks c "
                    f"JOIN files f ON f.id = c.file_id WHERE c.id IN ({marks(len(part))})",
                    tuple(part),
                ):
                    found[row[0]] = ChunkRecord(*row)
        return [found[i] for i in wanted if i in found]

    def file_chunks(self, path: str | PurePath) -> list[ChunkRecord]:
        """The chunks of one file, by position."""
        with self._errors():
            ids = [r[0] for r in self._reader().execute(
                "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path = ? "
                "ORDER BY c.start_byte, c.id", (rel_path(path),))]
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
            where.append(f"c.language IN ({marks(len(langs))})" if langs else "0")
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
            for part in batches(wanted):
                for cid, blob in conn.execute(
                    f"SELECT chunk_id, vector FROM vectors WHERE exit_layer = ? AND chunk_id IN "
                    f"({marks(len(part))})", (int(exit_layer), *part)):
                    vec = np.frombuffer(blob, dtype="<f4").astype(np.float32)
                    if dim is None or len(vec) == dim:
                        out[cid] = vec
        return out

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
