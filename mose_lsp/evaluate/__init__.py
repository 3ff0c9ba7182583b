"""Retrieval evaluation: the one code path behind ``mose eval``, the recipes and the benchmarks.

An ``Encoder`` (the ONNX ``ModelEncoder``, or a torch-backed encoder from ``mose_training``)
embeds a suite's corpus and queries with each exit; every query ranks the whole corpus by dot
product (exact, brute force), and the ranks of the relevant documents give MRR, Recall@K and
NDCG@10. The two-stage pipeline is scored from the same vectors (the shallow exit's top-K
re-ranked by the deep exit), and the search as shipped runs the runtime's ``Searcher`` over a
real store built from the suite (``shipped``).

Modules: ``suites`` (loading, the encoder interface), ``metrics`` (ranks and scores),
``shipped`` (the store and searcher run, and the FTS5 BM25 baseline), ``run`` (``evaluate``),
``results`` and ``report`` (JSON and tables).
"""

from .metrics import (
    DEFAULT_RECALL_KS,
    NDCG_K,
    SCORE_BLOCK,
    Metrics,
    dense_ranks,
    mrr,
    ndcg_at,
    pipeline_order,
    ranks_from_lists,
    ranks_from_order,
    recall_at,
    relevant_ranks,
)
from .report import format_table, results_to_json
from .results import (
    DEFAULT_CANDIDATE_KS,
    ExitResult,
    LexicalResult,
    PipelineResult,
    PipelineSpec,
    ProductResult,
    SuiteResult,
)
from .run import EncodedSuite, _encode_queries, encode_suite, evaluate, evaluate_bm25
from .shipped import PRODUCT_K, ShippedSearch, bm25_rankings
from .suites import (
    CORPUS_FILE,
    KINDS,
    QUERIES_FILE,
    Document,
    Encoder,
    Query,
    Suite,
    SuiteError,
    load_suite,
    load_suites,
)

__all__ = [
    "CORPUS_FILE",
    "DEFAULT_CANDIDATE_KS",
    "DEFAULT_RECALL_KS",
    "KINDS",
    "NDCG_K",
    "PRODUCT_K",
    "QUERIES_FILE",
    "SCORE_BLOCK",
    "Document",
    "EncodedSuite",
    "Encoder",
    "ExitResult",
    "LexicalResult",
    "Metrics",
    "PipelineResult",
    "PipelineSpec",
    "ProductResult",
    "Query",
    "ShippedSearch",
    "Suite",
    "SuiteError",
    "SuiteResult",
    "_encode_queries",
    "bm25_rankings",
    "dense_ranks",
    "encode_suite",
    "evaluate",
    "evaluate_bm25",
    "format_table",
    "load_suite",
    "load_suites",
    "mrr",
    "ndcg_at",
    "pipeline_order",
    "ranks_from_lists",
    "ranks_from_order",
    "recall_at",
    "relevant_ranks",
    "results_to_json",
]
