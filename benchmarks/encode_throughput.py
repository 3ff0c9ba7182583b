"""Encode throughput per exit: functions/s of each exported ONNX exit against PyTorch fp32.

Inputs are real Python functions from the standard library's source (``ast`` over the stdlib
folder), kept when their tokenised length is within --min-tokens..--max-tokens (default
150-250, i.e. ~200 tokens). Every engine encodes the same functions in the same batches
(--batch, padded to each batch's longest), with --threads intra-op threads:

* the int8 ONNX file of each exit (onnxruntime, through the runtime's own ``ExitEncoder``),
* the fp32 ONNX file of each exit,
* the full model in PyTorch fp32 (the baseline every ratio is relative to).

Each measurement is repeated (--repeat, interleaved across engines) and the best time is
kept, which damps the noise of a shared machine; the load average is printed with the results.

Usage::

    python benchmarks/encode_throughput.py                    # exports all-minilm-l6-v2 exits 2,4,6
    python benchmarks/encode_throughput.py --model-dir DIR --source CHECKPOINT --json out.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Row:
    engine: str  # "onnx-int8" | "onnx-fp32" | "torch-fp32"
    exit: int
    functions_per_s: float
    ms_per_function: float
    vs_torch: float = 0.0  # throughput relative to the PyTorch fp32 full model


def machine_note(threads: int) -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "threads": threads,
            "load_average_1m": round(load[0], 2), "python": platform.python_version(),
            "platform": platform.platform()}


def stdlib_functions(seed: int = 0) -> Iterator[str]:
    """Source of every function and method in the standard library (tests and site-packages
    left out), files in a seeded random order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.parts and "test" not in p.parts
                   and "tests" not in p.parts and "idle_test" not in p.parts)
    random.Random(seed).shuffle(files)
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                segment = ast.get_source_segment(source, node)
                if segment:
                    yield segment


def pick_functions(encoder, n: int, min_tokens: int, max_tokens: int) -> list[list[int]]:
    """Token ids (as the runtime makes them for code) of n functions of the wanted length."""
    exit_layer = encoder.exits[0]
    picked: list[list[int]] = []
    pending: list[str] = []

    def flush() -> None:
        rows = encoder.tokenize(pending, "code", exit_layer, langs=["python"] * len(pending))
        picked.extend(r for r in rows if min_tokens <= len(r) <= max_tokens)
        pending.clear()

    for source in stdlib_functions():
        if len(source) < 2 * min_tokens or len(source) > 8 * max_tokens:  # cheap pre-filter
            continue
        pending.append(source)
        if len(pending) == 256:
            flush()
            if len(picked) >= n:
                break
    if pending:
        flush()
    if len(picked) < n:
        sys.exit(f"only {len(picked)} standard-library functions have {min_tokens}-{max_tokens} "
                 f"tokens; lower --n")
    return picked[:n]


def batches(rows: list[list[int]], size: int, pad_id: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for begin in range(0, len(rows), size):
        chunk = rows[begin:begin + size]
        width = max(len(r) for r in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for i, row in enumerate(chunk):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        out.append((ids, mask))
    return out


def build_model_dirs(source: str, exits: tuple[int, ...], root: Path) -> tuple[Path, Path]:
    from mose_export.exporter import export_loaded, load_source

    loaded = load_source(source, exits)
    int8_dir, float_dir = root / "int8", root / "fp32"
    print(f"exporting {source} exits {list(exits)} (int8 and fp32) into {root} ...",
          file=sys.stderr)
    export_loaded(loaded, int8_dir, exits, int8=True)
    export_loaded(loaded, float_dir, exits, int8=False)
    return int8_dir, float_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="an exported model directory (default: "
                        "export --source into a temporary folder, int8 and fp32)")
    parser.add_argument("--float-model-dir", type=Path,
                        help="an fp32 export of the same model, for the fp32 ONNX rows")
    parser.add_argument("--source", default="all-minilm-l6-v2",
                        help="checkpoint folder or base model: the PyTorch baseline (and what "
                             "is exported when --model-dir is not given)")
    parser.add_argument("--exits", default="2,4,6", help="exits to export when building")
    parser.add_argument("--n", type=int, default=256, help="functions to encode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--min-tokens", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=250)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from mose_export.exporter import load_source

    from mose_lsp.encoder import ExitEncoder, ModelEncoder
    from mose_lsp.model_dir import load_model_dir

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mose-bench-") as tmp:
        if args.model_dir is None:
            exits = tuple(int(e) for e in args.exits.split(","))
            main_dir, float_dir = build_model_dirs(args.source, exits, Path(tmp))
        else:
            main_dir, float_dir = args.model_dir, args.float_model_dir
        dirs = [load_model_dir(main_dir)] + ([load_model_dir(float_dir)] if float_dir else [])
        runtime = ModelEncoder(dirs[0], threads=args.threads)
        manifest = dirs[0].manifest
        rows = pick_functions(runtime, args.n, args.min_tokens, args.max_tokens)
        data = batches(rows, args.batch, manifest.pad_id)

        engines: list[tuple[str, int, object]] = []
        for model_dir in dirs:
            for spec in model_dir.manifest.exits:
                kind = "onnx-fp32" if spec.quantization == "none" else "onnx-int8"
                session = ExitEncoder(model_dir.file(spec.file), spec, threads=args.threads)
                engines.append((kind, spec.layer, session.run))
        loaded = load_source(args.source, tuple(e.layer for e in manifest.exits))
        model = loaded.model.eval()
        full = max(model.exit_layers)

        def torch_run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(ids), torch.from_numpy(mask), exits=(full,))[full]

        engines.append(("torch-fp32", full, torch_run))

        best = {(kind, layer): float("inf") for kind, layer, _ in engines}
        for kind, layer, run in engines:  # warm-up
            run(*data[0])
        for _ in range(args.repeat):
            for kind, layer, run in engines:
                start = time.perf_counter()
                for ids, mask in data:
                    run(ids, mask)
                best[(kind, layer)] = min(best[(kind, layer)], time.perf_counter() - start)

    baseline = args.n / best[("torch-fp32", full)]
    results = []
    for kind, layer, _ in engines:
        rate = args.n / best[(kind, layer)]
        results.append(Row(kind, layer, round(rate, 1), round(1000 / rate, 2),
                           round(rate / baseline, 2)))
    results.sort(key=lambda r: ({"onnx-int8": 0, "onnx-fp32": 1, "torch-fp32": 2}[r.engine], r.exit))
    tokens = [len(r) for r in rows]
    note = machine_note(args.threads)
    info = model.export_info()
    print(f"\n{info.name} ({info.base_model}, {info.num_layers} layers): {args.n} standard-library "
          f"functions, {min(tokens)}-{max(tokens)} tokens (mean {np.mean(tokens):.0f}), batch "
          f"{args.batch}, {args.threads} threads, best of {args.repeat}\n")
    print("| engine | exit (layers) | functions/s | ms/function | vs PyTorch fp32 full |")
    print("|---|---|---|---|---|")
    for r in results:
        label = f"{r.exit} (full)" if r.exit == info.num_layers else str(r.exit)
        print(f"| {r.engine} | {label} | {r.functions_per_s} | {r.ms_per_function} "
              f"| {r.vs_torch:.2f}x |")
    print(f"\nmachine: {note['cpu']}, {note['cores']} cores ({note['usable_cores']} usable), "
          f"load average {note['load_average_1m']} at the end; torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}")
    if args.json:
        payload = {"model": info.name, "base_model": info.base_model, "n": args.n,
                   "batch": args.batch, "threads": args.threads, "repeat": args.repeat,
                   "tokens": {"min": min(tokens), "max": max(tokens),
                              "mean": round(float(np.mean(tokens)), 1)},
                   "machine": note, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
