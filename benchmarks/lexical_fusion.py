"""Does a lexical signal help? Fuse BM25 with the deep exit on the retrieval suites.

    python benchmarks/lexical_fusion.py SUITE... [--model DIR] [--weights 0,0.05,0.1,0.2,0.4]

Fused score = deep cosine + w * BM25 / max BM25 of the query (w = 0 is the deep exit alone),
and reciprocal-rank fusion (k = 60) for comparison. Prints MRR x 100 per suite and weight.
The runtime keeps the lexical signal only if this shows a gain on every suite.
"""

from __future__ import annotations

import argparse

import numpy as np

from mose_lsp.encoder import ModelEncoder
from mose_lsp.evaluate import load_suites, mrr
from mose_lsp.lexical import BM25Index


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="+")
    p.add_argument("--model", default=None)
    p.add_argument("--weights", default="0,0.05,0.1,0.2,0.4")
    args = p.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    model = ModelEncoder.open(args.model)
    deep = model.rerank_exit
    print("| suite | " + " | ".join(f"w={w}" for w in weights) + " | RRF |")
    print("|---|" + "---:|" * (len(weights) + 1))
    for path in args.suites:
        for suite in load_suites(path):
            docs = model.encode([d.text for d in suite.documents], "code", deep,
                                [d.lang for d in suite.documents])
            queries = np.stack([model.encode([q.text], q.kind, deep, [q.lang] if q.kind == "code"
                                             else None)[0] for q in suite.queries])
            dense = queries @ docs.T
            bm25 = BM25Index()
            ids = [d.id for d in suite.documents]
            for d in suite.documents:
                bm25.add(d.id, d.text)
            lex = bm25.score_matrix([q.text for q in suite.queries], ids)
            lex = lex / np.maximum(lex.max(axis=1, keepdims=True), 1e-9)
            relevant = suite.relevant_indices()
            row = []
            for w in weights:
                row.append(100 * mrr(dense_ranks_matrix(dense + w * lex, relevant)))
            rrf = 1 / (60 + rank_matrix(dense)) + 1 / (60 + rank_matrix(lex))
            row.append(100 * mrr(dense_ranks_matrix(rrf, relevant)))
            print(f"| {suite.name} | " + " | ".join(f"{v:.1f}" for v in row) + " |")


def rank_matrix(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, scores.shape[1] + 1)
    return ranks


def dense_ranks_matrix(scores: np.ndarray, relevant):
    ranks = rank_matrix(scores)
    return [ranks[i, rel].astype(np.float64) for i, rel in enumerate(relevant)]


if __name__ == "__main__":
    main()
