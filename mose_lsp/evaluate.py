"""Retrieval evaluation: the one code path behind ``mose eval``.

An ``Encoder`` (the ONNX ``ModelEncoder``, or a torch-backed encoder from ``mose_training``)
embeds a suite's corpus and queries with each exit; every query ranks the whole corpus by dot
product (exact, brute force), and the ranks of the relevant documents give MRR, Recall@K and
NDCG@10. The two-stage pipeline of the search engine is measured end to end: the shallow exit's
top-K candidates are re-ranked by the deep exit.

Suites follow shared/eval/README.md: a folder with ``corpus.jsonl`` and ``queries.jsonl``.

Ranking convention: scores sort descending and ties go to the lower corpus index (a stable
sort), so results are deterministic. Metrics are fractions in [0, 1]; tables show them x 100.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .encoder import EncodeCost, timed_encode
from .errors import MoseError
from .lexical import (
    BM25Index,
    fts_create,
    fts_insert,
    fts_search,
    identifier_tokens,
    lexical_signal,
)

KINDS = ("text", "code")
CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
DEFAULT_RECALL_KS = (1, 5, 10)
DEFAULT_CANDIDATE_KS = (20, 50, 100, 200)
NDCG_K = 10
SCORE_BLOCK = 256  # queries scored at once (bounds memory at SCORE_BLOCK x N floats)


class SuiteError(MoseError):
    """An evaluation suite is missing or malformed."""


@runtime_checkable
class Encoder(Protocol):
    """What evaluation needs from a multi-exit encoder (ONNX or torch)."""

    @property
    def name(self) -> str: ...

    @property
    def exits(self) -> tuple[int, ...]:
        """Available exit layers, shallow to deep."""
        ...

    def encode(self, texts: Sequence[str], kind: str, exit: int,
               langs: Sequence[str] | None = None) -> np.ndarray:
        """(N, D) float32 embeddings; dot product is the similarity (normalised vectors)."""
        ...


# -- suites ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    lang: str


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    kind: str  # "text" (natural language) | "code"
    lang: str
    relevant: tuple[str, ...]  # corpus ids


@dataclass(frozen=True)
class Suite:
    name: str
    documents: tuple[Document, ...]
    queries: tuple[Query, ...]
    path: Path | None = None

    def limit(self, n_queries: int | None) -> Suite:
        """The first ``n_queries`` queries against the whole corpus."""
        if n_queries is None or n_queries >= len(self.queries):
            return self
        return replace(self, queries=self.queries[:max(0, n_queries)])

    def relevant_indices(self) -> list[np.ndarray]:
        """Per query, the corpus positions of its relevant documents."""
        position = {d.id: i for i, d in enumerate(self.documents)}
        return [np.array([position[r] for r in q.relevant], dtype=np.int64)
                for q in self.queries]


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{path} does not exist: a suite folder holds {CORPUS_FILE} and "
                         f"{QUERIES_FILE} (see shared/eval/README.md)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"cannot read {path}: {err}") from err
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SuiteError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise SuiteError(f"{path}, line {lineno}: expected a JSON object")
        yield lineno, record


def _field(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise SuiteError(f"{where}: field {key!r} is {what}")
    return value


def load_suite(path: str | Path, name: str | None = None) -> Suite:
    """Read one suite folder (``corpus.jsonl`` + ``queries.jsonl``)."""
    root = Path(path)
    if not (root / CORPUS_FILE).is_file() and root.is_dir() and any(root.rglob(CORPUS_FILE)):
        raise SuiteError(f"{root} holds several suites in subfolders; use load_suites")
    documents: list[Document] = []
    seen: set[str] = set()
    corpus = root / CORPUS_FILE
    for lineno, rec in _read_jsonl(corpus):
        where = f"{corpus}, line {lineno}"
        doc = Document(_field(rec, "id", where), _field(rec, "text", where),
                       _field(rec, "lang", where))
        if doc.id in seen:
            raise SuiteError(f"{where}: document id {doc.id!r} appears twice")
        seen.add(doc.id)
        documents.append(doc)
    if not documents:
        raise SuiteError(f"{corpus} holds no documents")
    queries: list[Query] = []
    query_file = root / QUERIES_FILE
    query_ids: set[str] = set()
    for lineno, rec in _read_jsonl(query_file):
        where = f"{query_file}, line {lineno}"
        kind = _field(rec, "kind", where)
        if kind not in KINDS:
            raise SuiteError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        relevant = rec.get("relevant")
        if (not isinstance(relevant, list) or not relevant
                or not all(isinstance(r, str) for r in relevant)):
            raise SuiteError(f"{where}: 'relevant' must be a non-empty list of corpus ids")
        unknown = [r for r in relevant if r not in seen]
        if unknown:
            raise SuiteError(f"{where}: relevant id(s) {unknown} are not in {corpus.name}")
        query = Query(_field(rec, "id", where), _field(rec, "text", where), kind,
                      _field(rec, "lang", where), tuple(dict.fromkeys(relevant)))
        if query.id in query_ids:
            raise SuiteError(f"{where}: query id {query.id!r} appears twice")
        query_ids.add(query.id)
        queries.append(query)
    if not queries:
        raise SuiteError(f"{query_file} holds no queries")
    return Suite(name or root.name, tuple(documents), tuple(queries), root)


def load_suites(path: str | Path) -> list[Suite]:
    """A suite folder, or a folder of suite folders at any depth (named by relative path,
    e.g. ``transcoder-dev/python-java``), sorted by name."""
    root = Path(path)
    if (root / CORPUS_FILE).is_file():
        return [load_suite(root)]
    if not root.is_dir():
        raise SuiteError(f"suite folder {root} does not exist")
    found = sorted(p.parent for p in root.rglob(CORPUS_FILE))
    if not found:
        raise SuiteError(f"{root} holds no suite (no {CORPUS_FILE} in it or its subfolders)")
    return [load_suite(p, name=(Path(root.name) / p.relative_to(root)).as_posix())
            for p in found]


# -- metrics (pure numpy) ----------------------------------------------------------------------


def relevant_ranks(scores: np.ndarray, relevant: Sequence[np.ndarray]) -> list[np.ndarray]:
    """1-based ranks of each query's relevant documents in a (Q, N) score matrix.

    Descending scores; a tie goes to the lower corpus index. rank(r) = 1 + #{j: s_j > s_r}
    + #{j < r: s_j == s_r}.
    """
    assert scores.ndim == 2 and scores.shape[0] == len(relevant), (
        f"scores {scores.shape} need one row per query ({len(relevant)})")
    out = []
    for row, rel in zip(scores, relevant):
        rel = np.asarray(rel, dtype=np.int64)
        s_rel = row[rel]  # (R,)
        higher = (row[None, :] > s_rel[:, None]).sum(axis=1)  # (R,)
        ties_before = np.array([np.count_nonzero(row[:r] == row[r]) for r in rel],
                               dtype=np.int64)
        out.append(1 + higher + ties_before)
    return out


def ranks_from_order(order: np.ndarray, relevant: Sequence[np.ndarray]) -> list[np.ndarray]:
    """1-based ranks of the relevant documents given (Q, M) ranked corpus indices (M <= N);
    a relevant document missing from the ranking gets rank ``inf``."""
    out = []
    for ranked, rel in zip(order, relevant):
        position = {int(doc): i + 1 for i, doc in enumerate(ranked)}
        out.append(np.array([position.get(int(r), math.inf) for r in rel], dtype=np.float64))
    return out


def ranks_from_lists(ranked_ids: Sequence[Sequence[str]],
                     relevant_ids: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Same as ``ranks_from_order`` for ranked lists of ids."""
    out = []
    for ranked, rel in zip(ranked_ids, relevant_ids):
        position: dict[str, int] = {}
        for i, doc in enumerate(ranked):
            position.setdefault(doc, i + 1)
        out.append(np.array([position.get(r, math.inf) for r in rel], dtype=np.float64))
    return out


def mrr(ranks: Sequence[np.ndarray]) -> float:
    """Mean over queries of 1 / (rank of the first relevant document)."""
    if not ranks:
        return 0.0
    return float(np.mean([1.0 / np.min(r) for r in ranks]))


def recall_at(ranks: Sequence[np.ndarray], k: int) -> float:
    """Mean over queries of the fraction of relevant documents ranked within the top ``k``."""
    if not ranks:
        return 0.0
    return float(np.mean([np.count_nonzero(r <= k) / len(r) for r in ranks]))


def ndcg_at(ranks: Sequence[np.ndarray], k: int = NDCG_K) -> float:
    """Mean binary-relevance NDCG@k: sum of 1/log2(1 + rank) over relevant documents in the top
    k, divided by the same sum for an ideal ranking (relevant documents first)."""
    if not ranks:
        return 0.0
    values = []
    for r in ranks:
        r = np.asarray(r, dtype=np.float64)
        hits = r[r <= k]
        dcg = float(np.sum(1.0 / np.log2(1.0 + hits)))
        ideal = float(np.sum(1.0 / np.log2(2.0 + np.arange(min(len(r), k)))))
        values.append(dcg / ideal)
    return float(np.mean(values))


@dataclass(frozen=True)
class Metrics:
    mrr: float
    recall: dict[int, float]  # K -> Recall@K
    ndcg: float  # NDCG@ndcg_k
    n_queries: int
    ndcg_k: int = NDCG_K

    @classmethod
    def from_ranks(cls, ranks: Sequence[np.ndarray],
                   recall_ks: Sequence[int] = DEFAULT_RECALL_KS) -> Metrics:
        return cls(mrr=mrr(ranks), recall={k: recall_at(ranks, k) for k in recall_ks},
                   ndcg=ndcg_at(ranks, NDCG_K), n_queries=len(ranks))

    def to_json(self) -> dict[str, Any]:
        return {"mrr": self.mrr, "recall": {str(k): v for k, v in self.recall.items()},
                f"ndcg@{self.ndcg_k}": self.ndcg, "queries": self.n_queries}


# -- scoring ---------------------------------------------------------------------------------


def _score_blocks(queries: np.ndarray, docs: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(start, (B, N) dot products) for blocks of queries."""
    for start in range(0, len(queries), SCORE_BLOCK):
        yield start, queries[start:start + SCORE_BLOCK] @ docs.T


def dense_ranks(queries: np.ndarray, docs: np.ndarray,
                relevant: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Ranks of the relevant documents when (Q, D) queries rank (N, D) documents."""
    out: list[np.ndarray] = []
    for start, scores in _score_blocks(queries, docs):
        out.extend(relevant_ranks(scores, relevant[start:start + len(scores)]))
    return out


def _stable_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores of a 1-D array, best first, ties by lower index."""
    n = len(scores)
    k = min(k, n)
    if k < n:
        kth = np.partition(-scores, k - 1)[k - 1]  # the k-th best score (negated)
        pool = np.flatnonzero(-scores <= kth)  # every index that could be in the top k
    else:
        pool = np.arange(n)
    return pool[np.lexsort((pool, -scores[pool]))][:k]


def pipeline_order(shallow_scores: np.ndarray, deep_scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, N) corpus order of the two-stage pipeline: the shallow exit's top ``k`` re-ranked by
    the deep exit, then the rest in shallow order (ties: lower corpus index first). With
    ``k >= N`` this is exactly the deep exit's ranking."""
    assert shallow_scores.shape == deep_scores.shape, "one score matrix per exit, same shape"
    q, n = shallow_scores.shape
    order = np.empty((q, n), dtype=np.int64)
    for i in range(q):
        shallow_rank = _stable_top(shallow_scores[i], n)
        top = shallow_rank[:k]
        reranked = top[np.lexsort((top, -deep_scores[i, top]))]
        order[i, :len(top)] = reranked
        order[i, len(top):] = shallow_rank[k:]
    return order


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineSpec:
    shallow: int  # exit whose vectors give the candidates (the index exit)
    deep: int  # exit that re-ranks them
    k: int = 100  # candidates per query
    candidate_ks: tuple[int, ...] = DEFAULT_CANDIDATE_KS  # shallow Recall@K reported


@dataclass(frozen=True)
class ExitResult:
    exit: int
    metrics: Metrics
    cost: EncodeCost  # encoding the corpus
    relative_cost: float | None  # cost / cost of the deepest exit encoded

    def to_json(self) -> dict[str, Any]:
        return {"exit": self.exit, **self.metrics.to_json(),
                "encode_s_per_1k": self.cost.seconds_per_1k,
                "relative_cost": self.relative_cost}


@dataclass(frozen=True)
class PipelineResult:
    shallow: int
    deep: int
    k: int
    metrics: Metrics
    shallow_recall: dict[int, float]  # K -> Recall@K of the shallow exit (candidate quality)

    def to_json(self) -> dict[str, Any]:
        return {"shallow": self.shallow, "deep": self.deep, "k": self.k,
                **self.metrics.to_json(),
                "shallow_recall": {str(k): v for k, v in self.shallow_recall.items()}}


@dataclass(frozen=True)
class ProductResult:
    """The search as the runtime runs it once the background deep pass has finished: the
    deep exit's query vector against an HNSW index of the deep vectors (``mose_lsp.ann``, the
    store's parameters), top ``k`` scored by the deep exit. With ``lexical_weight`` w > 0, as
    the searcher fuses: the candidates also include the best BM25 documents (the store's FTS5
    index and scoring), and each scores ``cosine + w * BM25 / the query's best BM25``."""

    deep: int
    k: int
    metrics: Metrics
    lexical_weight: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"deep": self.deep, "k": self.k, "lexical_weight": self.lexical_weight,
                **self.metrics.to_json()}


@dataclass(frozen=True)
class LexicalResult:
    name: str  # "bm25"
    metrics: Metrics
    seconds: float  # building the index and scoring every query

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.metrics.to_json(), "seconds": self.seconds}


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    n_documents: int
    n_queries: int
    encoder: str | None
    exits: tuple[ExitResult, ...] = ()
    pipeline: PipelineResult | None = None
    bm25: LexicalResult | None = None
    recall_ks: tuple[int, ...] = DEFAULT_RECALL_KS
    product: ProductResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite, "documents": self.n_documents, "queries": self.n_queries,
                "encoder": self.encoder, "exits": [e.to_json() for e in self.exits],
                "pipeline": self.pipeline.to_json() if self.pipeline else None,
                "product": self.product.to_json() if self.product else None,
                "bm25": self.bm25.to_json() if self.bm25 else None}


def results_to_json(results: Sequence[SuiteResult]) -> dict[str, Any]:
    return {"format": "mose-eval", "format_version": 1, "scale": "fraction",
            "suites": [r.to_json() for r in results]}


# -- evaluation ------------------------------------------------------------------------------


def _encode_queries(encoder: Encoder, suite: Suite, exit: int) -> np.ndarray:
    """(Q, D) query vectors, each kind encoded with its own input format."""
    vectors: np.ndarray | None = None
    for kind in KINDS:
        idx = [i for i, q in enumerate(suite.queries) if q.kind == kind]
        if not idx:
            continue
        part = encoder.encode([suite.queries[i].text for i in idx], kind, exit,
                              [suite.queries[i].lang for i in idx])
        if vectors is None:
            vectors = np.empty((len(suite.queries), part.shape[1]), dtype=np.float32)
        vectors[idx] = part
    assert vectors is not None, "a loaded suite has queries"
    return vectors


def evaluate_bm25(suite: Suite, recall_ks: Sequence[int] = DEFAULT_RECALL_KS) -> LexicalResult:
    """The lexical baseline: BM25 over identifier-split tokens."""
    start = time.perf_counter()
    index = BM25Index()
    for doc in suite.documents:
        index.add(doc.id, doc.text)
    ids = [d.id for d in suite.documents]
    relevant = suite.relevant_indices()
    ranks: list[np.ndarray] = []
    for begin in range(0, len(suite.queries), SCORE_BLOCK):
        block = suite.queries[begin:begin + SCORE_BLOCK]
        scores = index.score_matrix([q.text for q in block], ids)
        ranks.extend(relevant_ranks(scores, relevant[begin:begin + len(block)]))
    return LexicalResult("bm25", Metrics.from_ranks(ranks, recall_ks),
                         time.perf_counter() - start)


@dataclass(frozen=True)
class _Encoded:
    """One exit's vectors for a suite."""

    docs: np.ndarray  # (N, D)
    queries: np.ndarray  # (Q, D)
    cost: EncodeCost  # of encoding the corpus


def _encode_suite(encoder: Encoder, suite: Suite, exit: int) -> _Encoded:
    docs, cost = timed_encode(encoder, [d.text for d in suite.documents], "code", exit,
                              [d.lang for d in suite.documents])
    return _Encoded(docs, _encode_queries(encoder, suite, exit), cost)


def _evaluate_pipeline(spec: PipelineSpec, shallow: _Encoded, deep: _Encoded,
                       relevant: list[np.ndarray], recall_ks: tuple[int, ...]) -> PipelineResult:
    ranks: list[np.ndarray] = []
    for start, shallow_scores in _score_blocks(shallow.queries, shallow.docs):
        deep_scores = deep.queries[start:start + len(shallow_scores)] @ deep.docs.T  # (B, N)
        order = pipeline_order(shallow_scores, deep_scores, spec.k)
        ranks.extend(ranks_from_order(order, relevant[start:start + len(shallow_scores)]))
    shallow_ranks = dense_ranks(shallow.queries, shallow.docs, relevant)
    candidate_recall = {k: recall_at(shallow_ranks, k)
                        for k in sorted({*spec.candidate_ks, spec.k})}
    return PipelineResult(spec.shallow, spec.deep, spec.k, Metrics.from_ranks(ranks, recall_ks),
                          candidate_recall)


def fused_order(found: np.ndarray, cosine: np.ndarray, lexical: dict[int, float],
                lexical_top: Sequence[int], weight: float) -> list[int]:
    """One query's ranking as the searcher fuses: the candidates ``found`` (dense top-k,
    ids -1 ignored) and ``lexical_top`` (BM25 top list), each scored ``cosine[id] + weight *
    lexical[id]`` (:func:`~mose_lsp.lexical.lexical_signal`'s BM25 / best, absent = 0), best
    first; ties keep candidate order (dense candidates first)."""
    candidates = list(dict.fromkeys([*(int(i) for i in found if i >= 0),
                                     *(int(i) for i in lexical_top)]))
    fused = {i: float(cosine[i]) + weight * lexical.get(i, 0.0) for i in candidates}
    return sorted(candidates, key=lambda i: -fused[i])


def _evaluate_product(deep_layer: int, deep: _Encoded, relevant: list[np.ndarray],
                      recall_ks: tuple[int, ...], k: int = 100,
                      lexical_weight: float = 0.0,
                      documents: Sequence[Document] = (),
                      queries: Sequence[Query] = ()) -> ProductResult:
    from .ann import HnswIndex  # hnswlib: only needed for this measurement
    from .searcher import LEXICAL_CANDIDATES, LEXICAL_DEPTH

    index = HnswIndex.create(deep.docs.shape[1], capacity=len(deep.docs))
    index.add(np.arange(len(deep.docs), dtype=np.int64), deep.docs)
    found, _ = index.search(deep.queries, min(k, len(deep.docs)))
    index.close()
    found = np.asarray(found)
    if lexical_weight <= 0:
        ranks = ranks_from_order(found, relevant)  # ids -1 pad short rows
        return ProductResult(deep_layer, k, Metrics.from_ranks(ranks, recall_ks))
    if len(documents) != len(deep.docs) or len(queries) != len(deep.queries):
        raise ValueError("fusing needs the suite's documents and queries")
    import sqlite3

    conn = sqlite3.connect(":memory:")  # the store's full-text index, over the corpus
    try:
        fts_create(conn)
        fts_insert(conn, enumerate(d.text for d in documents))
        orders: list[list[int]] = []
        for row, query in enumerate(queries):
            tokens = identifier_tokens(query.text)
            lexical, top = lexical_signal(*fts_search(conn, tokens, LEXICAL_DEPTH),
                                          LEXICAL_CANDIDATES)
            cosine = deep.docs @ deep.queries[row]
            orders.append(fused_order(found[row], cosine, lexical, top, lexical_weight))
    finally:
        conn.close()
    ranks = ranks_from_lists([[str(i) for i in o] for o in orders],
                             [[str(int(r)) for r in rel] for rel in relevant])
    return ProductResult(deep_layer, k, Metrics.from_ranks(ranks, recall_ks), lexical_weight)


def evaluate(
    encoder: Encoder | None,
    suite: Suite,
    exits: Sequence[int] | None = None,
    pipeline: PipelineSpec | None = None,
    bm25: bool = False,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    progress: Callable[[str], None] | None = None,
    lexical_weight: float = 0.1,
) -> SuiteResult:
    """Score ``suite`` with each of ``exits`` (default: all), the optional two-stage
    ``pipeline`` and the optional BM25 baseline. ``encoder=None`` runs BM25 alone.
    ``lexical_weight`` is the fusion the search as shipped applies (the runtime's
    ``lexical_weight`` setting, default 0.1; 0: the deep exit alone).

    Encode cost is the wall-clock time of encoding the corpus with each exit (after a short
    warm-up), relative to the deepest exit encoded.
    """
    say = progress or (lambda _msg: None)
    ks = tuple(sorted(set(recall_ks)))
    relevant = suite.relevant_indices()
    exit_results: list[ExitResult] = []
    pipeline_result: PipelineResult | None = None
    product_result: ProductResult | None = None
    if encoder is not None:
        available = tuple(encoder.exits)
        chosen = tuple(sorted(set(exits))) if exits is not None else available
        wanted = set(chosen) | ({pipeline.shallow, pipeline.deep} if pipeline else set())
        missing = sorted(wanted - set(available))
        if missing:
            raise MoseError(f"{encoder.name} has no exit(s) {missing}; its exits are "
                            f"{list(available)}")
        if pipeline is not None and pipeline.k < 1:
            raise MoseError(f"the pipeline needs k >= 1 candidates, got {pipeline.k}")
        encoded: dict[int, _Encoded] = {}
        for layer in sorted(wanted):
            say(f"{suite.name}: encoding {len(suite.documents)} documents and "
                f"{len(suite.queries)} queries with exit {layer}")
            encoded[layer] = _encode_suite(encoder, suite, layer)
        deepest = encoded[max(wanted)].cost.seconds_per_item
        for layer in chosen:
            e = encoded[layer]
            ranks = dense_ranks(e.queries, e.docs, relevant)
            relative = e.cost.seconds_per_item / deepest if deepest > 0 else None
            exit_results.append(ExitResult(layer, Metrics.from_ranks(ranks, ks), e.cost,
                                           relative))
        if pipeline is not None:
            say(f"{suite.name}: two-stage pipeline {pipeline.shallow}->{pipeline.deep}, "
                f"k={pipeline.k}")
            pipeline_result = _evaluate_pipeline(pipeline, encoded[pipeline.shallow],
                                                 encoded[pipeline.deep], relevant, ks)
            say(f"{suite.name}: product search (HNSW over exit {pipeline.deep} vectors"
                + (f" + BM25 w={lexical_weight:g})" if lexical_weight > 0 else ")"))
            product_result = _evaluate_product(pipeline.deep, encoded[pipeline.deep], relevant,
                                               ks, lexical_weight=lexical_weight,
                                               documents=suite.documents,
                                               queries=suite.queries)
    bm25_result = None
    if bm25:
        say(f"{suite.name}: BM25 baseline")
        bm25_result = evaluate_bm25(suite, ks)
    return SuiteResult(suite.name, len(suite.documents), len(suite.queries),
                       encoder.name if encoder is not None else None, tuple(exit_results),
                       pipeline_result, bm25_result, ks, product_result)


# -- output ----------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f}"


def format_table(results: Sequence[SuiteResult]) -> str:
    """Markdown tables (one per suite), metrics x 100."""
    blocks: list[str] = []
    for res in results:
        ks = res.recall_ks
        head = f"## {res.suite} ({res.n_documents} documents, {res.n_queries} queries)"
        if res.encoder:
            head += f", model {res.encoder}"
        deepest = max((e.exit for e in res.exits), default=None)
        with_cost = deepest is not None
        columns = ["method", "MRR", *(f"R@{k}" for k in ks), f"NDCG@{NDCG_K}"]
        if with_cost:
            columns += ["s / 1k docs", f"cost vs exit {deepest}"]
        rows: list[list[str]] = []

        def metric_cells(m: Metrics, ks: tuple[int, ...] = ks) -> list[str]:
            return [_pct(m.mrr), *(_pct(m.recall[k]) for k in ks), _pct(m.ndcg)]

        no_cost = ["-", "-"] if with_cost else []
        for e in res.exits:
            rel = f"{e.relative_cost:.2f}" if e.relative_cost is not None else "-"
            rows.append([f"exit {e.exit}", *metric_cells(e.metrics),
                         f"{e.cost.seconds_per_1k:.2f}", rel])
        p = res.pipeline
        if p is not None:
            rows.append([f"pipeline {p.shallow}->{p.deep}, K={p.k} (before the deep pass)",
                         *metric_cells(p.metrics), *no_cost])
        if res.product is not None:
            fusion = (f" + BM25 w={res.product.lexical_weight:g}"
                      if res.product.lexical_weight > 0 else "")
            label = (f"search as shipped (HNSW over exit {res.product.deep}{fusion}, after "
                     "the deep pass)")
            rows.append([label, *metric_cells(res.product.metrics), *no_cost])
        if res.bm25 is not None:
            rows.append(["BM25", *metric_cells(res.bm25.metrics), *no_cost])
        lines = [head, "| " + " | ".join(columns) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if p is not None:
            recall = ", ".join(f"K={k} {_pct(v)}" for k, v in p.shallow_recall.items())
            lines.append(f"Shallow exit {p.shallow} Recall@K (candidates for re-ranking): "
                         f"{recall}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
