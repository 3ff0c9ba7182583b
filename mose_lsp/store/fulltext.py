"""Full-text (BM25) search over the chunks: FTS5's ``chunks_fts`` and ``term_df``, kept in
the same transactions as the chunk rows (see ``schema``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..ann import IdFilter
from ..lexical import (
    FTS_TABLE,
    TERM_DF_TABLE,
    TOKENS_VERSION,
    fts_delete,
    fts_insert,
    fts_search,
    fts_terms,
)
from .database import Database
from .sql import batches, marks

# Id span from which lexical_search(workers > 1) splits a query (below it one query is fast).
LEXICAL_SPLIT_MIN = 20_000


def fts_delete_chunks(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Remove chunks from ``chunks_fts``; call while their rows (and text) still exist."""
    for part in batches(list(ids)):
        fts_delete(conn, conn.execute(
            f"SELECT id, text FROM chunks WHERE id IN ({marks(len(part))})",
            tuple(part)).fetchall())


def fts_fill(conn: sqlite3.Connection) -> None:
    """(Re)build ``chunks_fts`` and ``term_df`` from every chunk and record the tokenizer
    version."""
    conn.execute(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}) VALUES ('delete-all')")
    conn.execute(f"DELETE FROM {TERM_DF_TABLE}")
    cursor = conn.execute("SELECT id, text FROM chunks ORDER BY id")
    while rows := cursor.fetchmany(1024):
        fts_insert(conn, rows)
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('lexical_tokens', ?)",
                 (TOKENS_VERSION,))


class FullTextMixin(Database):
    """BM25 search over the chunks' identifier tokens."""

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
