"""``evaluate``: score a suite per exit, the two-stage pipeline, the search as shipped and
the BM25 baseline."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..encoder import EncodeCost, timed_encode
from ..errors import MoseError
from .metrics import (
    DEFAULT_RECALL_KS,
    Metrics,
    _score_blocks,
    dense_ranks,
    pipeline_order,
    ranks_from_order,
    recall_at,
)
from .results import (
    ExitResult,
    LexicalResult,
    PipelineResult,
    PipelineSpec,
    ProductResult,
    SuiteResult,
)
from .shipped import PRODUCT_K, ShippedSearch, bm25_rankings
from .suites import KINDS, Encoder, Suite


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
    """The lexical baseline: BM25 as the store's full-text index ranks (FTS5 over
    identifier-split tokens)."""
    start = time.perf_counter()
    ranks = ranks_from_order(bm25_rankings(suite), suite.relevant_indices())
    return LexicalResult("bm25", Metrics.from_ranks(ranks, recall_ks),
                         time.perf_counter() - start)


@dataclass(frozen=True)
class EncodedSuite:
    """One exit's vectors for a suite."""

    docs: np.ndarray  # (N, D)
    queries: np.ndarray  # (Q, D)
    cost: EncodeCost  # of encoding the corpus


def encode_suite(encoder: Encoder, suite: Suite, exit: int) -> EncodedSuite:
    docs, cost = timed_encode(encoder, [d.text for d in suite.documents], "code", exit,
                              [d.lang for d in suite.documents])
    return EncodedSuite(docs, _encode_queries(encoder, suite, exit), cost)


def _evaluate_pipeline(spec: PipelineSpec, shallow: EncodedSuite, deep: EncodedSuite,
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
        encoded: dict[int, EncodedSuite] = {}
        for layer in sorted(wanted):
            say(f"{suite.name}: encoding {len(suite.documents)} documents and "
                f"{len(suite.queries)} queries with exit {layer}")
            encoded[layer] = encode_suite(encoder, suite, layer)
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
            say(f"{suite.name}: search as shipped (the searcher over a store of the suite, "
                f"deep exit {pipeline.deep}"
                + (f" + BM25 w={lexical_weight:g})" if lexical_weight > 0 else ")"))
            shallow, deep = encoded[pipeline.shallow], encoded[pipeline.deep]
            with ShippedSearch(encoder, suite, pipeline.shallow, pipeline.deep, shallow.docs,
                               deep.docs) as shipped:
                ranked = shipped.ranked(suite, {pipeline.shallow: shallow.queries,
                                                pipeline.deep: deep.queries}, lexical_weight)
            product_result = ProductResult(
                pipeline.deep, PRODUCT_K,
                Metrics.from_ranks(ranks_from_order(ranked, relevant), ks), lexical_weight)
    bm25_result = None
    if bm25:
        say(f"{suite.name}: BM25 baseline")
        bm25_result = evaluate_bm25(suite, ks)
    return SuiteResult(suite.name, len(suite.documents), len(suite.queries),
                       encoder.name if encoder is not None else None, tuple(exit_results),
                       pipeline_result, bm25_result, ks, product_result)
