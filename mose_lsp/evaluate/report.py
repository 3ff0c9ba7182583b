"""``mose eval``'s output: the results as JSON and as Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .metrics import NDCG_K, Metrics
from .results import SuiteResult


def results_to_json(results: Sequence[SuiteResult]) -> dict[str, Any]:
    return {"format": "mose-eval", "format_version": 1, "scale": "fraction",
            "suites": [r.to_json() for r in results]}


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
