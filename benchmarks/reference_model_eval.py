"""Score any local sentence-transformers-style model folder on retrieval suites (reference points).

The question it answers for the default model (issue #8): how far do other encoders that can be
obtained offline get on the same dev suites? A model at least as strong as a target is a
candidate teacher; one below it says the target asks more than distilling it could give.

Encoding: the folder's transformers model and tokenizer (``AutoModel`` / ``AutoTokenizer``),
mean pooling over the last hidden states, L2 normalisation, at most --max-tokens tokens (256,
as the suites' reference numbers), texts batched by length. Scoring: ``mose_lsp.evaluate``
(the code behind ``mose eval``). Needs the ``[train]`` extra (torch, transformers).

Usage::

    python benchmarks/reference_model_eval.py MODEL_FOLDER ../shared/eval/cosqa-dev [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def load_model(folder: Path, threads: int):
    """(tokenizer, model in eval mode) of a transformers folder, PyTorch on ``threads`` threads."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def encode(model, tokenizer, texts: list[str], max_tokens: int, batch: int) -> np.ndarray:
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        inputs = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                           max_length=max_tokens, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**inputs).last_hidden_state  # (B, T, H)
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        if out is None:
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        out[rows] = pooled.numpy()
    assert out is not None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a local model folder (config, weights, tokenizer)")
    parser.add_argument("suites", type=Path, help="a suite folder or a folder of suites")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from mose_lsp.evaluate import Metrics, dense_ranks, load_suites

    tokenizer, model = load_model(args.model, args.threads)
    results = []
    for suite in load_suites(args.suites):
        start = time.perf_counter()
        queries = encode(model, tokenizer, [q.text for q in suite.queries], args.max_tokens,
                         args.batch)
        docs = encode(model, tokenizer, [d.text for d in suite.documents], args.max_tokens,
                      args.batch)
        metrics = Metrics.from_ranks(dense_ranks(queries, docs, suite.relevant_indices()))
        seconds = time.perf_counter() - start
        results.append({"suite": suite.name, "model": args.model.name, **metrics.to_json(),
                        "seconds": round(seconds, 1)})
        print(f"{suite.name}: {args.model.name} MRR {100 * metrics.mrr:.1f} "
              f"R@1 {100 * metrics.recall[1]:.1f} R@10 {100 * metrics.recall[10]:.1f} "
              f"({len(suite.documents)} documents, {len(suite.queries)} queries, "
              f"{seconds:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
