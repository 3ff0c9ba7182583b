"""Ranks and metrics: MRR, Recall@K, NDCG@10, and the two-stage pipeline's ranking.

Ranking convention: scores sort descending and ties go to the lower corpus index (a stable
sort), so results are deterministic. Metrics are fractions in [0, 1]; tables show them x 100.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RECALL_KS = (1, 5, 10)
NDCG_K = 10
SCORE_BLOCK = 256  # queries scored at once (bounds memory at SCORE_BLOCK x N floats)


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
