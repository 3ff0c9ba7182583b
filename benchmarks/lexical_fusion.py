"""Does the lexical signal help? The search as shipped at several lexical weights.

    python benchmarks/lexical_fusion.py SUITE... [--model DIR] [--weights 0,0.05,0.1,0.2,0.4]

Each suite is encoded once; then, for every weight w (the ``lexicalWeight`` setting), the
runtime's searcher over a store of the suite (``mose_lsp.evaluate.ShippedSearch``: HNSW over
the deep vectors, the store's FTS5 BM25) ranks every query, each candidate scoring
``deep cosine + w * BM25 / the query's best BM25``; w = 0 is the deep exit alone. Prints MRR
x 100 per suite and weight, and BM25 alone. The runtime keeps the lexical signal only if this
shows a gain on every suite.
"""

from __future__ import annotations

import argparse

from mose_lsp.encoder import ModelEncoder
from mose_lsp.evaluate import (
    ShippedSearch,
    encode_suite,
    evaluate_bm25,
    load_suites,
    mrr,
    ranks_from_order,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="+")
    p.add_argument("--model", default=None, help="model directory (default: the embedded one)")
    p.add_argument("--weights", default="0,0.05,0.1,0.2,0.4")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    model = ModelEncoder.open(args.model, threads=args.threads)
    shallow, deep = model.index_exit, model.rerank_exit
    print(f"model {model.name}; search as shipped (exits {shallow}->{deep}, after the deep "
          "pass), MRR x 100")
    print("| suite | " + " | ".join(f"w={w:g}" for w in weights) + " | BM25 alone |")
    print("|---|" + "---:|" * (len(weights) + 1))
    for path in args.suites:
        for suite in load_suites(path):
            vectors = {layer: encode_suite(model, suite, layer)
                       for layer in dict.fromkeys((shallow, deep))}
            relevant = suite.relevant_indices()
            row = []
            with ShippedSearch(model, suite, shallow, deep, vectors[shallow].docs,
                               vectors[deep].docs) as shipped:
                queries = {layer: v.queries for layer, v in vectors.items()}
                for w in weights:
                    ranked = shipped.ranked(suite, queries, w)
                    row.append(100 * mrr(ranks_from_order(ranked, relevant)))
            row.append(100 * evaluate_bm25(suite).metrics.mrr)
            print(f"| {suite.name} | " + " | ".join(f"{v:.1f}" for v in row) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
