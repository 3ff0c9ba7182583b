"""What an evaluation returns, per suite and per method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..encoder import EncodeCost
from .metrics import DEFAULT_RECALL_KS, Metrics

DEFAULT_CANDIDATE_KS = (20, 50, 100, 200)


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
    runtime's ``Searcher`` over a store of the suite (``shipped.ShippedSearch``), asked for
    ``k`` hits per query, with the ``lexical_weight`` setting (0: the deep exit alone)."""

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
