"""Does a rebuilt model reproduce the shipped one? Vectors per exit and the evaluation table.

    python -m mose_training.reproduce MODEL_DIR REFERENCE_DIR --pairs PAIRS.jsonl \\
        [--eval NEW.json --eval-reference SHIPPED.json] [--min-cosine 0.999] [--max-mrr-diff 0.3]

- Vectors: a fixed probe set (a seeded sample of queries and functions from the pinned pair
  file, whose hash the data manifest records) is encoded by both model directories through the
  runtime encoder (one text per run, as an index holds them); per exit, the mean and minimum
  cosine between the two models' vectors of the same text. The check is the mean.
- Evaluation: every MRR of two ``mose eval --json`` files (each exit, the pipeline, the search
  as shipped, per suite) side by side with the difference, in MRR x 100.

Exit status 0 when every exit's mean cosine and every MRR difference are within the limits,
1 otherwise (the table says which row failed). Needs only the runtime (no torch).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROBES = 256  # texts: half queries, half functions
SEED = 0


def probe_set(pairs: str | Path, n: int = PROBES, seed: int = SEED) -> list[tuple[str, str]]:
    """(kind, text): ``n // 2`` queries and ``n - n // 2`` functions of a seeded sample."""
    with Path(pairs).open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if not rows:
        raise SystemExit(f"error: {pairs} holds no pairs")
    chosen = random.Random(seed).sample(rows, min(n, len(rows)))
    half = len(chosen) // 2
    return [("text", r["query"]) for r in chosen[:half]] + [("code", r["code"])
                                                            for r in chosen[half:]]


@dataclass
class ExitAgreement:
    exit: int
    mean_cosine: float
    min_cosine: float
    probes: int


def vector_agreement(model: str | Path, reference: str | Path,
                     probes: list[tuple[str, str]]) -> list[ExitAgreement]:
    """Per exit both models have: cosine of the two vectors of each probe text."""
    from mose_lsp.encoder import ModelEncoder
    from mose_lsp.model_dir import load_model_dir

    a = ModelEncoder(load_model_dir(model))
    b = ModelEncoder(load_model_dir(reference))
    exits_a = {e.layer for e in a.model_dir.manifest.exits}
    exits_b = {e.layer for e in b.model_dir.manifest.exits}
    if exits_a != exits_b:
        raise SystemExit(f"error: the models have different exits: {sorted(exits_a)} vs "
                         f"{sorted(exits_b)}")
    out = []
    for layer in sorted(exits_a):
        cos = []
        for kind in ("text", "code"):
            texts = [t for k, t in probes if k == kind]
            if texts:
                va = a.encode(texts, kind, layer)
                vb = b.encode(texts, kind, layer)
                num = (va * vb).sum(1)
                cos.append(num / np.maximum(np.linalg.norm(va, axis=1)
                                            * np.linalg.norm(vb, axis=1), 1e-12))
        allc = np.concatenate(cos)
        out.append(ExitAgreement(layer, float(allc.mean()), float(allc.min()), len(allc)))
    return out


def mrr_rows(report: dict[str, Any]) -> dict[tuple[str, str], float]:
    """{(suite, method): MRR x 100} of a ``mose eval --json`` file."""
    rows: dict[tuple[str, str], float] = {}
    for suite in report.get("suites", []):
        name = suite["suite"]
        for e in suite.get("exits", []):
            rows[(name, f"exit {e['exit']}")] = 100 * e["mrr"]
        if suite.get("pipeline"):
            p = suite["pipeline"]
            rows[(name, f"pipeline {p['shallow']}->{p['deep']} K={p['k']}")] = 100 * p["mrr"]
        if suite.get("product"):
            rows[(name, "search as shipped")] = 100 * suite["product"]["mrr"]
        if suite.get("bm25"):
            rows[(name, "BM25")] = 100 * suite["bm25"]["mrr"]
    return rows


def compare_evals(new: dict[str, Any], reference: dict[str, Any], max_diff: float
                  ) -> tuple[list[str], bool]:
    """Markdown rows (suite, method, reference, new, difference) and whether all are within."""
    a, b = mrr_rows(new), mrr_rows(reference)
    lines = ["| suite | method | shipped | rebuilt | difference |", "|---|---|---:|---:|---:|"]
    ok = True
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            lines.append(f"| {key[0]} | {key[1]} | {b.get(key, '-')} | {a.get(key, '-')} "
                         f"| missing |")
            ok = False
            continue
        diff = a[key] - b[key]
        flag = "" if abs(diff) <= max_diff else " **over**"
        ok = ok and not flag
        lines.append(f"| {key[0]} | {key[1]} | {b[key]:.2f} | {a[key]:.2f} | {diff:+.2f}{flag} |")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mose_training.reproduce",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the rebuilt model directory")
    p.add_argument("reference", help="the shipped model directory")
    p.add_argument("--pairs", required=True, help="pinned pair file (probe texts)")
    p.add_argument("--eval", help="mose eval --json of the rebuilt model")
    p.add_argument("--eval-reference", help="mose eval --json of the shipped model")
    p.add_argument("--min-cosine", type=float, default=0.999)
    p.add_argument("--max-mrr-diff", type=float, default=0.3, help="MRR x 100")
    p.add_argument("--json", help="write the comparison here")
    a = p.parse_args(argv)

    agreement = vector_agreement(a.model, a.reference, probe_set(a.pairs))
    ok = True
    print(f"Vectors, rebuilt vs shipped ({agreement[0].probes} probe texts, one per run):")
    print("| exit | mean cosine | min cosine | check |\n|---|---:|---:|---|")
    for e in agreement:
        good = e.mean_cosine >= a.min_cosine
        ok = ok and good
        print(f"| {e.exit} | {e.mean_cosine:.6f} | {e.min_cosine:.6f} | "
              f"{'ok' if good else 'FAILED'} (mean >= {a.min_cosine}) |")
    result: dict[str, Any] = {"vectors": [e.__dict__ for e in agreement],
                              "min_cosine": a.min_cosine}
    if a.eval and a.eval_reference:
        new = json.loads(Path(a.eval).read_text(encoding="utf-8"))
        ref = json.loads(Path(a.eval_reference).read_text(encoding="utf-8"))
        lines, eval_ok = compare_evals(new, ref, a.max_mrr_diff)
        print(f"\nMRR x 100, rebuilt vs shipped (limit +-{a.max_mrr_diff}):")
        print("\n".join(lines))
        ok = ok and eval_ok
        result["eval"] = {"max_mrr_diff": a.max_mrr_diff, "within": eval_ok}
    result["reproduced"] = ok
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\nreproduced: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
