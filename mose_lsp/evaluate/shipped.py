"""The search as shipped, measured on the code that ships.

A real workspace store is built from a suite: one file and one chunk per document, holding the
shallow vector the indexer writes and the deep vector the background pass adds (the vectors
the evaluation has already encoded, so nothing is encoded twice). The real ``Searcher`` then
answers every query with the runtime's settings: HNSW over the deep vectors, and with a
lexical weight the store's FTS5 BM25 fused as the searcher fuses it. What is measured is
therefore the search after the deep pass has reached the whole workspace.

The lexical baseline is the same store code: the FTS5 full-text index and its scoring
(``lexical.fts_*``), each query ranking every document that shares a token with it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..lexical import fts_create, fts_insert, fts_search, identifier_tokens
from .suites import Suite

if TYPE_CHECKING:
    from typing_extensions import Self

PRODUCT_K = 100
"""Hits asked of the searcher per query. A user sees ten; a hundred lets MRR count a
relevant document ranked below ten."""


class ShippedSearch:
    """A store built from ``suite`` and the runtime's ``Searcher`` over it; close it after use
    (it lives in a temporary folder)."""

    def __init__(self, encoder: Any, suite: Suite, shallow: int, deep: int,
                 shallow_docs: np.ndarray, deep_docs: np.ndarray) -> None:
        from ..config import Settings
        from ..indexer import WorkspaceIndex, model_id
        from ..searcher import Searcher
        from ..store import ChunkRow, FileMeta, Store

        self.shallow, self.deep = shallow, deep
        self._tmp = tempfile.TemporaryDirectory(prefix="mose-eval-")
        folder = Path(self._tmp.name)
        dims = {shallow: int(shallow_docs.shape[1]), deep: int(deep_docs.shape[1])}
        store = Store.open(folder / "index", dims=dims, index_exit=shallow, rerank_exit=deep,
                           model_id=model_id(encoder))
        try:
            chunk_ids: list[int] = []
            for i, doc in enumerate(suite.documents):  # as the indexer writes a file
                raw = doc.text.encode("utf-8")
                digest = hashlib.sha256(raw).hexdigest()
                row = ChunkRow(None, None, doc.lang or None, 0, doc.text.count("\n"), 0,
                               len(raw), digest, doc.text)
                done = store.replace_file(f"doc{i:07d}", FileMeta(len(raw), 0, digest,
                                                                  doc.lang or None),
                                          [row], shallow_docs[i:i + 1])
                chunk_ids.append(done.chunk_ids[0])
            store.put_vectors(deep, chunk_ids, deep_docs)  # the background deep pass
        except BaseException:
            store.close()
            self._tmp.cleanup()
            raise
        self._doc_of = {cid: i for i, cid in enumerate(chunk_ids)}
        self.index = WorkspaceIndex(folder / "workspace", Settings(), encoder, store)
        self.index.index_exit, self.index.rerank_exit = shallow, deep  # the pipeline's exits
        self.searcher = Searcher(self.index)

    def ranked(self, suite: Suite, query_vectors: Mapping[int, np.ndarray],
               lexical_weight: float, k: int = PRODUCT_K) -> list[list[int]]:
        """Per query, the corpus positions of the searcher's hits, best first.
        ``query_vectors`` maps the shallow and deep exit to (Q, D) query vectors."""
        from ..searcher import Query

        self.index.settings = replace(self.index.settings, lexical_weight=lexical_weight)
        out: list[list[int]] = []
        for row, q in enumerate(suite.queries):
            vectors = {layer: vecs[row] for layer, vecs in query_vectors.items()}
            hits = self.searcher.search(Query(
                text=q.text, kind=q.kind, lang=q.lang, k=k, vectors=vectors,
                vectors_model=self.searcher.model_id))
            out.append([self._doc_of[h.chunk_id] for h in hits])
        return out

    def close(self) -> None:
        try:
            self.index.store.close(save=False)  # a throwaway index: nothing to save
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bm25_rankings(suite: Suite) -> list[list[int]]:
    """Per query, the corpus positions ranked by the store's FTS5 BM25 (documents sharing no
    token with the query are not ranked)."""
    conn = sqlite3.connect(":memory:")
    try:
        fts_create(conn)
        fts_insert(conn, enumerate(d.text for d in suite.documents))
        n = len(suite.documents)
        return [fts_search(conn, identifier_tokens(q.text), n)[0].tolist()
                for q in suite.queries]
    finally:
        conn.close()

