"""Can the base encoder's deep exit gain on a suite without training? Pooling probes.

    python benchmarks/pooling_probe.py MODEL_FOLDER SUITE [--df-from PAIRS.jsonl] [--json OUT]

Runs a sentence-transformers BERT folder (all-MiniLM-L6-v2 for the default model) once over a
suite (fp32 PyTorch, max 256 tokens, 2 threads), keeps every layer's token states, and scores
other ways of turning them into one vector against the standard mean pooling of the last
layer: mean pooling of an earlier layer and of two layers summed, the special tokens left out,
IDF-weighted mean pooling (document frequencies from ``--df-from``, a mined pairs file, never
from the suite), and docstring (and signature) tokens weighted up. MRR x 100 by
``mose_lsp.evaluate``. Needs the training extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mose_lsp import evaluate as ev

LAYERS = (4, 5, 6)
DOCSTRING = re.compile(r'("""|\'\'\')(.*?)\1', re.DOTALL)


class States:
    """Token ids, character offsets and per-layer token states of a list of texts (ragged)."""

    def __init__(self, tokenizer, model, texts: Sequence[str], max_tokens: int = 256) -> None:
        import torch

        enc = tokenizer(list(texts), truncation=True, max_length=max_tokens,
                        return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        states: dict[int, list] = {layer: [None] * len(ids) for layer in LAYERS}
        with torch.inference_mode():
            for start in range(0, len(order), 32):
                batch = order[start:start + 32]
                width = max(len(ids[i]) for i in batch)
                x = torch.zeros(len(batch), width, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)
                for row, i in enumerate(batch):
                    x[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = 1
                hidden = model(input_ids=x, attention_mask=mask,
                               output_hidden_states=True).hidden_states
                for layer in LAYERS:
                    for row, i in enumerate(batch):
                        states[layer][i] = hidden[layer][row, :len(ids[i])].numpy()
        self.lengths = np.array([len(i) for i in ids])
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)])[:-1]
        self.ids = np.concatenate([np.asarray(i) for i in ids])
        self.offsets = np.concatenate([np.asarray(o) for o in offs])
        self.states = {layer: np.concatenate(states[layer]) for layer in LAYERS}

    def pool(self, layer: int, weights: np.ndarray | None = None) -> np.ndarray:
        """(N, D) L2-normalised weighted mean of each text's token states."""
        h = self.states[layer]
        w = np.ones(len(h), np.float32) if weights is None else weights.astype(np.float32)
        out = np.add.reduceat(h * w[:, None], self.starts, axis=0)
        out /= np.add.reduceat(w, self.starts)[:, None]
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def document_frequencies(path: Path, tokenizer) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per tokenizer id, the number of distinct queries / code texts of a pairs file holding it."""
    texts: dict[str, set[str]] = {"query": set(), "code": set()}
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts["query"].add(row["query"])
            texts["code"].add(row["code"])
    df, n = {}, {}
    for field, values in texts.items():
        counts = np.zeros(tokenizer.vocab_size, np.int64)
        values = sorted(values)
        for start in range(0, len(values), 2000):
            for ids in tokenizer(values[start:start + 2000], add_special_tokens=False)["input_ids"]:
                counts[np.unique(np.asarray(ids, dtype=np.int64))] += 1
        df[field], n[field] = counts, len(values)
    return df, n


def idf_weights(s: States, df: np.ndarray, n: int, power: float,
                special: Sequence[int]) -> np.ndarray:
    idf = np.maximum(np.log((n + 1) / (df[s.ids] + 1)), 0.0) ** power
    is_special = np.isin(s.ids, special)
    idf[is_special] = idf[~is_special].mean()
    return idf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path, help="sentence-transformers folder (BERT)")
    p.add_argument("suite", type=Path, help="suite folder (corpus.jsonl + queries.jsonl)")
    p.add_argument("--df-from", type=Path, default=None,
                   help="mined pairs JSONL ({query, code} per line) for IDF weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from reference_model_eval import load_model  # this folder (run as a script)

    tokenizer, model = load_model(args.model, args.threads)
    suite = ev.load_suite(args.suite)
    relevant = suite.relevant_indices()
    t0 = time.time()
    q = States(tokenizer, model, [x.text for x in suite.queries])
    d = States(tokenizer, model, [x.text for x in suite.documents])
    print(f"{suite.name}: {len(suite.documents)} documents, {len(suite.queries)} queries, "
          f"encoded in {time.time() - t0:.0f}s", flush=True)
    rows: list[tuple[str, float]] = []

    def score(name: str, queries: np.ndarray, docs: np.ndarray) -> None:
        mrr = 100 * ev.mrr(ev.dense_ranks(queries, docs, relevant))
        rows.append((name, round(mrr, 2)))
        print(f"| {name} | {mrr:.1f} |", flush=True)

    last = max(LAYERS)
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    score(f"mean, layer {last} (the standard)", q.pool(last), d.pool(last))
    for layer in LAYERS[:-1]:
        score(f"mean, layer {layer}", q.pool(layer), d.pool(layer))
        score(f"mean, layers {layer} + {last}", _norm(q.pool(layer) + q.pool(last)),
              _norm(d.pool(layer) + d.pool(last)))
    score("mean without [CLS] / [SEP]", q.pool(last, ~np.isin(q.ids, special)),
          d.pool(last, ~np.isin(d.ids, special)))
    if args.df_from is not None:
        df, n = document_frequencies(args.df_from, tokenizer)
        for power in (0.5, 1.0, 2.0):
            score(f"IDF^{power}-weighted mean (queries and documents)",
                  q.pool(last, idf_weights(q, df["query"], n["query"], power, special)),
                  d.pool(last, idf_weights(d, df["code"], n["code"], power, special)))
    in_docstring = np.zeros(len(d.ids), bool)
    in_signature = np.zeros(len(d.ids), bool)
    for i, doc in enumerate(suite.documents):
        span = slice(d.starts[i], d.starts[i] + d.lengths[i])
        begin = d.offsets[span, 0]
        m = DOCSTRING.search(doc.text)
        if m:
            in_docstring[span] = (begin >= m.start()) & (begin < m.end())
        colon = doc.text.find(":")
        if colon >= 0:
            in_signature[span] = begin <= colon
    for factor in (2.0, 4.0):
        score(f"docstring tokens x{factor:g}", q.pool(last),
              d.pool(last, np.where(in_docstring, factor, 1.0)))
        score(f"docstring and signature tokens x{factor:g}", q.pool(last),
              d.pool(last, np.where(in_docstring | in_signature, factor, 1.0)))
    if args.json:
        args.json.write_text(json.dumps({"suite": suite.name, "model": str(args.model.name),
                                         "mrr": dict(rows)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
