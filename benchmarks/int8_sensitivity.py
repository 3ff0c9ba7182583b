"""Where int8 quantisation loses accuracy: quantise an exported float exit with one group of
ops kept in float at a time and measure the cosine of its vectors to the float file's.

    python benchmarks/int8_sensitivity.py FLOAT_MODEL_DIR --pairs PAIRS.jsonl [--probes 200]

FLOAT_MODEL_DIR is an export made with ``mose export ... --no-int8``. The probe texts are a
seeded sample of queries and functions from a pairs file (plus the export's parity inputs),
each encoded alone (one text per onnxruntime run, as the runtime does); the smoothing is
calibrated on another seeded sample of the same file. Rows: plain dynamic int8; the exit head's
activations in float; activation smoothing (SmoothQuant) at several strengths; then the export's
recipe with one more group of ops kept in float: the embedding lookups, the attention products
of two activations, the Q/K/V projections, the attention output, the FFN's two MatMuls, the FFN
output of each block. Prints a table per exit: mean and minimum cosine to float, file size.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def node_groups(path: Path) -> dict[str, list[str]]:
    """Quantisable node names (MatMul, weight Gather) by role."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    groups: dict[str, list[str]] = {}

    def add(key: str, name: str) -> None:
        groups.setdefault(key, []).append(name)

    for node in model.graph.node:
        name = node.name
        if node.op_type == "Gather" and node.input[0] in inits:
            add("embeddings", name)
        elif node.op_type == "MatMul":
            if not any(i in inits for i in node.input):
                add("attention act x act", name)
            elif re.search(r"/(query|key|value)/", name):
                add("attention q/k/v", name)
            elif "/attention/output/" in name:
                add("attention output", name)
            elif "/intermediate/" in name:
                add("ffn in", name)
            elif re.search(r"layers?\.\d+/output/", name):
                add("ffn out", name)
                layer = re.search(r"layers?\.(\d+)/", name).group(1)
                add(f"ffn out, block {int(layer) + 1}", name)
            else:
                add("head", name)
    return groups


def probe_texts(pairs: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in pairs.open(encoding="utf-8") if line.strip()]
    rng = random.Random(seed)
    chosen = rng.sample(rows, min(n, len(rows)))
    return [("text", r["query"]) for r in chosen[: n // 2]] + \
           [("code", r["code"]) for r in chosen[n // 2:]]


def encode_each(path: Path, layer: int, dim: int, rows: list[tuple[np.ndarray, np.ndarray]]):
    from mose_lsp.encoder import ExitEncoder
    from mose_lsp.model_dir import ExitSpec

    spec = ExitSpec(layer=layer, file=path.name, dim=dim, pooling="mean", normalize=True,
                    max_tokens=max(int(r[0].shape[1]) for r in rows))
    enc = ExitEncoder(path, spec)
    return np.concatenate([enc.run(ids, mask) for ids, mask in rows])


def main(argv: list[str] | None = None) -> int:
    from mose_export.inputs import InputEncoder, Sample, parity_samples
    from mose_export.exporter import calibration_samples
    from mose_export.onnx_export import (
        SMOOTH_ALPHA,
        head_matmuls,
        quantize_int8,
        smooth_activations,
        split_gemms,
        half_weights,
    )
    from mose_lsp.model_dir import load_model_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="float model directory (mose export --no-int8)")
    p.add_argument("--pairs", type=Path, required=True, help="pairs JSONL for probe texts")
    p.add_argument("--probes", type=int, default=200)
    p.add_argument("--alphas", type=float, nargs="*", default=[0.5, 0.7, 0.85],
                   help="smoothing strengths to compare")
    p.add_argument("--json", type=Path, help="write the table as JSON here")
    a = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's pre-processing advice

    model_dir = load_model_dir(a.model)
    man = model_dir.manifest
    enc = InputEncoder(model_dir.tokenizer_path, man.text_format, man.code_format,
                       min(e.max_tokens for e in man.exits), man.pad_id)
    samples = [Sample(k, t) for k, t in probe_texts(a.pairs, a.probes)] + parity_samples()
    rows = [enc.batch([s]) for s in samples]  # one text per run, as the runtime encodes
    calib = [enc.batch([s]) for s in calibration_samples(a.pairs)]  # seed 1: not the probes
    report = {}
    for spec in man.exits:
        table = []
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "split.onnx"
            split_gemms(model_dir.file(spec.file), src)  # the head's Gemm -> a named MatMul
            ref = encode_each(src, spec.layer, spec.dim, rows)
            groups = node_groups(src)
            heads = head_matmuls(src)

            def measure(label: str, keep: list[str], alpha: float | None, head_wo: bool) -> None:
                base = src
                if alpha is not None:
                    base = Path(tmp) / "smoothed.onnx"
                    smooth_activations(src, base, calib, alpha=alpha)
                dst = Path(tmp) / "q.onnx"
                excluded = keep + (heads if head_wo else [])
                quantize_int8(base, dst, nodes_to_exclude=excluded)
                if head_wo:
                    half_weights(dst, [h for h in heads if h not in keep])
                got = encode_each(dst, spec.layer, spec.dim, rows)
                cos = (got * ref).sum(1)
                table.append({"variant": label, "nodes_in_float": len(keep),
                              "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                              "mb": dst.stat().st_size / 1e6})

            measure("plain dynamic int8 (every MatMul and the embeddings)", [], None, False)
            measure("+ head in float, weights stored in float16", [], None, True)
            for alpha in a.alphas:
                measure(f"+ smoothing alpha {alpha}", [], alpha, True)
            for k, v in groups.items():
                measure(f"as exported (alpha {SMOOTH_ALPHA}) + float: {k}", v, SMOOTH_ALPHA, True)
        report[str(spec.layer)] = table
        print(f"\nexit {spec.layer} ({len(samples)} probes, cosine to the float file)")
        print("| int8 variant | nodes kept in float | mean cos | min cos | MB |\n"
              "|---|---:|---:|---:|---:|")
        for r in table:
            print(f"| {r['variant']} | {r['nodes_in_float']} | {r['mean_cosine']:.5f} "
                  f"| {r['min_cosine']:.5f} | {r['mb']:.1f} |")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
