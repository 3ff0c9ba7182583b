"""Two-stage search: shallow exit -> HNSW top-K -> deep-exit re-rank -> hits.

With ``settings.lexical_weight`` w > 0 the candidates also include the chunks with the best
BM25 scores (the store's full-text index over identifier-split tokens), and every candidate is
scored ``deep cosine + w * BM25 / (the query's best BM25 in the workspace)``, BM25 taken
from the workspace's top :data:`LEXICAL_DEPTH` (0 below it; with a language or path filter,
the lexical candidates are the filtered chunks within that top list).

Every chunk has a shallow vector (cheap, written on every edit); the candidates it finds are
re-scored with the deep exit, using cached deep vectors where the background pass has made
them and computing the few missing ones on the fly (and caching them when the index's writer
lock is free: a search never waits for a writer). Scores are cosine
similarities of the exit that produced them (``Hit.exit`` says which).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from .indexer import WorkspaceIndex, encode_log, model_id
from .lexical import identifier_tokens, lexical_signal
from .service.lock import LockBusy
from .store import ChunkRecord

# Deep vectors computed per query at most (fresh candidates, best shallow first); the others
# keep shallow order. Each costs a deep-exit encode (~25 ms on 2 cores), so this bounds a
# query's latency before the background pass has reached the whole workspace.
ON_THE_FLY_LIMIT = 16
LEXICAL_CANDIDATES = 50  # best BM25 chunks added to the candidates when fusing
# How deep the one BM25 ranking per query goes: candidates below it count 0 (their BM25 is a
# small fraction of the best). Scoring the candidates exactly took a second full-text query
# that cost more than all the rest of a search at 100k chunks.
LEXICAL_DEPTH = 1000
LEXICAL_WORKERS = 2  # threads that rank a large workspace's chunks by BM25 at once
DEEP_CANDIDATES_FUSED = 50  # deep-index candidates (at least) when fusing


@dataclass(frozen=True)
class Hit:
    path: str  # workspace-relative
    start_line: int  # 0-based
    end_line: int  # 0-based, inclusive
    symbol: str | None
    kind: str | None
    language: str | None
    score: float  # cosine of ``exit``, plus the lexical part when fused
    exit: int  # the exit layer whose cosine ``score`` holds
    chunk_id: int
    text: str
    lexical: float = 0.0  # BM25 / the query's best BM25 (0..1; 0 when not fused)

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
    # The query's vectors by exit when it is the text of a stored chunk ("find similar" on an
    # indexed function): used instead of encoding it again by a searcher whose model made
    # them (``vectors_model``: ``indexer.model_id``); an exit without one is encoded.
    vectors: Mapping[int, np.ndarray] | None = field(default=None, compare=False)
    vectors_model: str = ""


def _glob_to_sqlite(glob: str) -> str:
    # SQLite GLOB has no '**'; '*' there already crosses '/'.
    return glob.replace("**/", "*").replace("**", "*")


class Searcher:
    def __init__(self, index: WorkspaceIndex):
        self.index = index
        self.store = index.store
        self.model = index.model
        self.model_id = model_id(index.model)

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
        """Candidates from the deep index (chunks the background pass has reached) and the
        fresh index (shallow vectors of the others), all scored by the deep exit. Background
        encoding (indexing, the deep pass) pauses meanwhile."""
        if not query.text.strip():
            return []
        self.store.sync()  # what other processes committed (one read when nothing moved)
        with self.model.foreground():
            return self._search(query)

    def _search(self, query: Query) -> list[Hit]:
        idx = self.index
        k = max(1, query.k)
        langs = [query.lang] if query.lang else None
        flt = self._filter(query)
        rerank = query.rerank and idx.settings.rerank and idx.rerank_exit != idx.index_exit
        weight = float(idx.settings.lexical_weight) if rerank else 0.0
        lexical: dict[int, float] = {}  # chunk id -> BM25 / the query's best
        lex_top: list[int] = []
        if weight > 0:  # one BM25 ranking (cut at LEXICAL_DEPTH) gives all the lexical part
            lex_ids, lex_scores = self.store.lexical_search(
                identifier_tokens(query.text), LEXICAL_DEPTH,
                workers=min(LEXICAL_WORKERS, idx.settings.resolved_threads()))
            lexical, lex_top = lexical_signal(lex_ids, lex_scores, LEXICAL_CANDIDATES, flt)
        if not rerank:
            qs = self._query_vector(query, idx.index_exit, langs)
            if self.store.deep_ann is None:  # one index holds every shallow vector
                found, scores = self.store.search_fresh(qs, k, flt)
                ids = [int(i) for i in found]
            else:
                ids, scores = self._shallow_everywhere(qs, k, flt)
            return self._hits(ids, dict(zip(ids, map(float, scores))), idx.index_exit)
        qd = self._query_vector(query, idx.rerank_exit, langs)
        extra: list[int] = []  # candidates found by BM25 alone
        deep_scores: dict[int, float] = {}
        if self.store.deep_ann is not None:
            n_deep = max(k, DEEP_CANDIDATES_FUSED) if weight > 0 else k
            ids, scores = self.store.search_deep(qd, n_deep, flt)
            deep_scores.update(zip(map(int, ids), map(float, scores)))
        if self.store.fresh_ann.count():
            qs = self._query_vector(query, idx.index_exit, langs)
            fresh_ids, fresh_scores = self.store.search_fresh(qs, idx.settings.rerank_candidates,
                                                              flt)
        else:  # the deep pass has reached every chunk: no shallow query (nor its exit's session)
            fresh_ids, fresh_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
        if lex_top:
            seen = set(deep_scores) | set(map(int, fresh_ids))
            extra = [i for i in lex_top if i not in seen]
        fresh = [int(i) for i in fresh_ids if int(i) not in deep_scores]
        if extra:  # their deep vectors: cached, else computed on the fly like fresh ones
            fresh += extra
        shallow = dict(zip(map(int, fresh_ids), map(float, fresh_scores)))
        if fresh:
            cached = self.store.get_vectors(idx.rerank_exit, fresh)
            todo = [i for i in fresh if i not in cached][:ON_THE_FLY_LIMIT]
            if todo:
                records = {r.id: r for r in self.store.get_chunks(todo)}
                todo = [i for i in todo if i in records]
                if todo:
                    encode_log("query", idx.rerank_exit,
                               [(records[i].path, records[i].content_hash) for i in todo])
                    vecs = self.model.encode([records[i].text for i in todo], "code",
                                             idx.rerank_exit,
                                             [records[i].language or "" for i in todo])
                    cached.update(zip(todo, vecs))
                    self._keep(todo, vecs)
            for i, vec in cached.items():
                deep_scores[i] = float(vec @ qd)
        if lexical:
            deep_scores = {i: s + weight * lexical.get(i, 0.0) for i, s in deep_scores.items()}
        ranked = sorted(deep_scores, key=lambda i: -deep_scores[i])[:k]
        hits = self._hits(ranked, deep_scores, idx.rerank_exit, lexical)
        if len(hits) < k:  # fresh candidates beyond the on-the-fly budget: shallow order
            extras = set(extra)
            rest = [i for i in fresh if i not in deep_scores and i not in extras][: k - len(hits)]
            hits += self._hits(rest, shallow, idx.index_exit)
        return hits

    def _keep(self, ids: list[int], vecs: np.ndarray) -> None:
        """Store deep vectors computed for a query (this also moves the chunks to the deep
        index), if the writer lock is free right now: a search never waits for a writer.
        When it is busy they are dropped, and the deep pass makes them later."""
        try:
            with self.index.writing("cache", timeout_s=0):
                self.store.put_vectors(self.index.rerank_exit, ids, vecs)
        except LockBusy:
            pass

    def _query_vector(self, query: Query, exit_layer: int, langs: list[str] | None) -> np.ndarray:
        if query.vectors and query.vectors_model == self.model_id:
            stored = query.vectors.get(exit_layer)
            if stored is not None:
                return stored
        return self.model.encode([query.text], query.kind, exit_layer, langs)[0]

    def stored_vectors(self, chunk: ChunkRecord) -> dict[int, np.ndarray]:
        """The stored vectors of ``chunk`` at the exits a search uses (a chunk the deep pass
        has not reached yet has only its shallow one), for :attr:`Query.vectors`."""
        out: dict[int, np.ndarray] = {}
        for exit_layer in dict.fromkeys((self.index.index_exit, self.index.rerank_exit)):
            vec = self.store.get_vectors(exit_layer, [chunk.id]).get(chunk.id)
            if vec is not None:
                out[exit_layer] = vec
        return out

    def stored_chunk(self, path: str, content_hash: str, text: str) -> ChunkRecord | None:
        """The stored chunk of ``path`` with this content hash and exactly this text, if any."""
        for chunk in self.store.file_chunks(path):
            if chunk.content_hash == content_hash and chunk.text == text:
                return chunk
        return None

    def _shallow_everywhere(self, qs, k: int, flt):
        """Shallow-exit scores over every chunk (no re-rank): fresh index + stored vectors."""
        ids, scores = self.store.search_fresh(qs, k, flt)
        best = dict(zip(map(int, ids), map(float, scores)))
        allowed = self.store.chunk_ids() if flt is None else {i for i in self.store.chunk_ids()
                                                             if flt(i)}
        vecs = self.store.get_vectors(self.index.index_exit, allowed - set(best))
        for i, v in vecs.items():
            best[i] = float(v @ qs)
        top = sorted(best, key=lambda i: -best[i])[:k]
        return top, [best[i] for i in top]

    def _hits(self, ids: list[int], scores: dict[int, float], exit_layer: int,
              lexical: dict[int, float] | None = None) -> list[Hit]:
        records = {r.id: r for r in self.store.get_chunks(ids)}
        lex = lexical or {}
        return [_hit(records[i], scores[i], exit_layer, lex.get(i, 0.0))
                for i in ids if i in records]

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
        vectors: dict[int, np.ndarray] = {}
        if text is None:
            end = start_line if end_line is None else end_line
            chunks = self.chunks_at(path, start_line, end)
            if not chunks:
                return []
            if end_line is None:  # the innermost chunk around the position
                chunk = min(chunks, key=lambda c: c.end_line - c.start_line)
                text, lang, own = chunk.text, chunk.language or "", frozenset({chunk.id})
                vectors = self.stored_vectors(chunk)
            else:
                text = _slice_lines(chunks, start_line, end)
                lang = chunks[0].language or ""
                own = frozenset(c.id for c in chunks
                                if c.start_line >= start_line and c.end_line <= end)
        query = Query(text=text, kind="code", lang=lang, k=k, languages=tuple(languages),
                      path_glob=path_glob, exclude_ids=own, vectors=vectors,
                      vectors_model=self.model_id)
        return self.search(query)


def _slice_lines(chunks: list[ChunkRecord], start: int, end: int) -> str:
    lines: dict[int, str] = {}
    for c in chunks:
        for n, line in enumerate(c.text.splitlines(), c.start_line):
            if start <= n <= end:
                lines.setdefault(n, line)
    return "\n".join(lines[n] for n in sorted(lines))


def _hit(record: ChunkRecord, score: float, exit_layer: int, lexical: float = 0.0) -> Hit:
    return Hit(record.path, record.start_line, record.end_line, record.symbol, record.kind,
               record.language, float(score), exit_layer, record.id, record.text,
               float(lexical))

