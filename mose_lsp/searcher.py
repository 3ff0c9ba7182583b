"""Two-stage search: shallow exit -> HNSW top-K -> deep-exit re-rank -> hits.

Every chunk has a shallow vector (cheap, written on every edit); the candidates it finds are
re-scored with the deep exit, using cached deep vectors where the background pass has made
them and computing the few missing ones on the fly (and caching them). Scores are cosine
similarities of the exit that produced them (``Hit.exit`` says which).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .indexer import WorkspaceIndex
from .store import ChunkRecord

ON_THE_FLY_LIMIT = 64  # deep vectors computed per query at most; others keep shallow order


@dataclass(frozen=True)
class Hit:
    path: str  # workspace-relative
    start_line: int  # 0-based
    end_line: int  # 0-based, inclusive
    symbol: str | None
    kind: str | None
    language: str | None
    score: float
    exit: int  # the exit layer whose cosine is ``score``
    chunk_id: int
    text: str

    def to_json(self, root: str | None = None, snippet_lines: int | None = None) -> dict:
        data = asdict(self)
        if snippet_lines is not None:
            data["text"] = "\n".join(self.text.splitlines()[:snippet_lines])
        if root is not None:
            data["root"] = root
        return data


@dataclass(frozen=True)
class Query:
    text: str
    kind: str = "text"  # "text" (natural language) or "code"
    lang: str = ""  # language of a code query (input template)
    k: int = 10
    languages: tuple[str, ...] = ()  # keep only chunks in these languages
    path_glob: str | None = None  # keep only chunks whose path matches (fnmatch, '**' ok)
    exclude_ids: frozenset[int] = frozenset()  # e.g. the query chunk itself for "similar"
    rerank: bool = True


def _glob_to_sqlite(glob: str) -> str:
    # SQLite GLOB has no '**'; '*' there already crosses '/'.
    return glob.replace("**/", "*").replace("**", "*")


class Searcher:
    def __init__(self, index: WorkspaceIndex):
        self.index = index
        self.store = index.store
        self.model = index.model

    def _filter(self, query: Query):
        if not query.languages and not query.path_glob and not query.exclude_ids:
            return None
        allowed: set[int] | None = None
        if query.languages or query.path_glob:
            allowed = self.store.chunk_ids(
                _glob_to_sqlite(query.path_glob) if query.path_glob else None,
                query.languages or None)
        if allowed is not None:
            excluded = query.exclude_ids
            return lambda cid: cid in allowed and cid not in excluded
        return lambda cid: cid not in query.exclude_ids

    def search(self, query: Query) -> list[Hit]:
        if not query.text.strip():
            return []
        idx = self.index
        settings = idx.settings
        k = max(1, query.k)
        candidates = max(k, settings.rerank_candidates)
        qs = self.model.encode([query.text], query.kind, idx.index_exit,
                               [query.lang] if query.lang else None)[0]
        ids, scores = self.store.search_shallow(qs, candidates, self._filter(query))
        ids = [int(i) for i in ids]
        if not ids:
            return []
        shallow = dict(zip(ids, (float(s) for s in scores)))
        rerank = query.rerank and settings.rerank and idx.rerank_exit != idx.index_exit
        if not rerank:
            top = ids[:k]
            return self._hits(top, {i: shallow[i] for i in top}, idx.index_exit)
        deep = self.store.get_vectors(idx.rerank_exit, ids)
        missing = [i for i in ids if i not in deep][:ON_THE_FLY_LIMIT]
        if missing:
            records = {r.id: r for r in self.store.get_chunks(missing)}
            todo = [i for i in missing if i in records]
            if todo:
                vecs = self.model.encode([records[i].text for i in todo], "code", idx.rerank_exit,
                                         [records[i].language or "" for i in todo])
                deep.update(zip(todo, vecs))
                self.store.put_vectors(idx.rerank_exit, todo, vecs)
        qd = self.model.encode([query.text], query.kind, idx.rerank_exit,
                               [query.lang] if query.lang else None)[0]
        scored = [i for i in ids if i in deep]
        matrix = np.stack([deep[i] for i in scored]) if scored else np.zeros((0, qd.shape[0]))
        deep_scores = dict(zip(scored, (matrix @ qd).tolist()))
        # Candidates without a deep vector (beyond the on-the-fly budget) rank after the others.
        order = sorted(scored, key=lambda i: -deep_scores[i])
        rest = [i for i in ids if i not in deep_scores]
        top = (order + rest)[:k]
        final = {i: deep_scores.get(i, shallow[i]) for i in top}
        hits = self._hits([i for i in top if i in deep_scores],
                          {i: final[i] for i in top if i in deep_scores}, idx.rerank_exit)
        hits += self._hits([i for i in top if i not in deep_scores],
                           {i: final[i] for i in top if i not in deep_scores}, idx.index_exit)
        return hits

    def _hits(self, ids: list[int], scores: dict[int, float], exit_layer: int) -> list[Hit]:
        records = {r.id: r for r in self.store.get_chunks(ids)}
        return [_hit(records[i], scores[i], exit_layer) for i in ids if i in records]

    def chunks_at(self, path: str, start_line: int, end_line: int) -> list[ChunkRecord]:
        """Stored chunks of ``path`` overlapping the 0-based inclusive line range."""
        return [c for c in self.store.file_chunks(path)
                if c.start_line <= end_line and c.end_line >= start_line]

    def similar(self, path: str, start_line: int, end_line: int | None = None, k: int = 10,
                text: str | None = None, languages: Iterable[str] = (),
                path_glob: str | None = None) -> list[Hit]:
        """Code similar to the chunk around ``start_line`` (or to the given line range / text)."""
        own: frozenset[int] = frozenset()
        lang = ""
        if text is None:
            end = start_line if end_line is None else end_line
            chunks = self.chunks_at(path, start_line, end)
            if not chunks:
                return []
            if end_line is None:  # the innermost chunk around the position
                chunk = min(chunks, key=lambda c: c.end_line - c.start_line)
                text, lang, own = chunk.text, chunk.language or "", frozenset({chunk.id})
            else:
                text = _slice_lines(chunks, start_line, end)
                lang = chunks[0].language or ""
                own = frozenset(c.id for c in chunks
                                if c.start_line >= start_line and c.end_line <= end)
        query = Query(text=text, kind="code", lang=lang, k=k, languages=tuple(languages),
                      path_glob=path_glob, exclude_ids=own)
        return self.search(query)


def _slice_lines(chunks: list[ChunkRecord], start: int, end: int) -> str:
    lines: dict[int, str] = {}
    for c in chunks:
        for n, line in enumerate(c.text.splitlines(), c.start_line):
            if start <= n <= end:
                lines.setdefault(n, line)
    return "\n".join(lines[n] for n in sorted(lines))


def _hit(record: ChunkRecord, score: float, exit_layer: int) -> Hit:
    return Hit(record.path, record.start_line, record.end_line, record.symbol, record.kind,
               record.language, float(score), exit_layer, record.id, record.text)

