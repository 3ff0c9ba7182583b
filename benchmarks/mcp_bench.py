"""MCP benchmark: `search` and `similar` through the MCP SDK's stdio client against `mose mcp`,
next to `mose search` one-shot in the same run, and freshness (file saved -> found).

    python benchmarks/mcp_bench.py [--queries 40] [--cli-queries 8] [--edits 10]
                                   [--scale-chunks 100000] [--json out.json]

On the workspace benchmark's corpus (benchmarks/corpus.py: ~140k lines of Python, TypeScript
and Go in .bench/workspace). The index is built first (`mose index` with deep vectors) in its
own folder, so every number below is on a complete index. Each MCP call is timed at the
client, round trip included; the server's own report of the freshness step that precedes every
`search`/`similar` (a stat of every file, embedding what changed) is given separately.

Freshness: a new function is appended to a file on disk and one `search` for it is sent at
once; the latency is that call's round trip (the server indexes the file inside the call), and
the row says how often the new function was the top hit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from workspace_bench import TEXT_QUERIES, _machine, _pct


def build_index(args) -> dict:
    """Index the corpus (shallow and deep vectors) with the service layer."""
    from mose_lsp.config import Settings
    from mose_lsp.service import Service

    settings, _ = Settings.from_dict({"model": args.model, "index_dir": args.index_dir,
                                      "threads": args.threads})
    service = Service(settings)
    service.add_folder(args.workspace)
    t0 = time.perf_counter()
    done = service.reindex(deep=True)[0]
    status = service.status(count_pending=False)[0]
    service.close()
    return {"index_s": time.perf_counter() - t0, "chunks": status.chunks,
            "files": status.indexed_files, "deep_coverage": status.deep_coverage,
            "chunks_embedded_now": done.chunks_embedded}


def _stats(values: list[float]) -> dict:
    return {"p50": round(_pct(values, .5), 1), "p95": round(_pct(values, .95), 1),
            "n": len(values)}


async def mcp_phase(args) -> dict:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    cmd = ["-m", "mose_lsp.mcp", "-w", str(args.workspace), "--index-dir", args.index_dir,
           "--threads", str(args.threads), "--max-lines", "20"]
    if args.model:
        cmd += ["--model", args.model]
    params = StdioServerParameters(command=sys.executable, args=cmd, env=dict(os.environ),
                                   cwd=str(REPO))
    out: dict = {}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        t0 = time.perf_counter()
        await client.initialize()
        out["initialize_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        t0 = time.perf_counter()
        await client.call_tool("reindex", {}, read_timeout_seconds=600)  # the first update
        out["first_call_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        status = await client.call_tool("status", {}, read_timeout_seconds=600)
        out["chunks"] = status.structured_content["folders"][0]["chunks"]

        async def timed(tool: str, arguments: dict) -> tuple[float, dict]:
            t0 = time.perf_counter()
            result = await client.call_tool(tool, arguments, read_timeout_seconds=600)
            ms = 1000 * (time.perf_counter() - t0)
            if result.is_error:
                raise RuntimeError(f"{tool} {arguments}: {result.content[0].text}")
            return ms, result.structured_content

        for q in TEXT_QUERIES[:3]:  # warm-up
            await timed("search", {"query": q})
        search_ms, update_ms = [], []
        for q in (TEXT_QUERIES * 5)[: args.queries]:
            ms, data = await timed("search", {"query": q, "limit": 10})
            search_ms.append(ms)
            update_ms.append(data["update_ms"])
        out["search_ms"] = _stats(search_ms)
        out["freshness_check_ms"] = _stats(update_ms)

        from mose_lsp.config import Settings
        from mose_lsp.indexer import WorkspaceIndex

        index = WorkspaceIndex.open(args.workspace, Settings(model=args.model,
                                                             index_dir=args.index_dir))
        try:
            rng = random.Random(0)
            records = index.store.get_chunks(rng.sample(sorted(index.store.chunk_ids()),
                                                        args.queries))
        finally:
            index.close()
        similar_ms = []
        for r in records:
            ms, _ = await timed("similar", {"path": r.path, "line": r.start_line + 1,
                                            "limit": 10})
            similar_ms.append(ms)
        out["similar_ms"] = _stats(similar_ms)

        files = sorted(Path(args.workspace).rglob("*.py"), key=lambda p: p.stat().st_size)
        target = min(files, key=lambda p: abs(len(p.read_text(errors="replace")
                                                  .splitlines()) - 500))
        original = target.read_text()
        fresh_ms, found = [], 0
        try:
            for i in range(args.edits):
                name = f"mcp_bench_fresh_{i}"
                target.write_text(original + f"\n\ndef {name}(values):\n    \"\"\"Sum the "
                                  f"cubes of values for run {i}.\"\"\"\n    return sum(v ** 3 "
                                  "for v in values)\n")
                ms, data = await timed("search", {"query": f"def {name}(values): sum of cubes",
                                                  "kind": "code", "limit": 5})
                fresh_ms.append(ms)
                found += bool(data["hits"]) and data["hits"][0]["symbol"] == name
        finally:
            target.write_text(original)
            await timed("search", {"query": "restore"})
        out["freshness_ms"] = _stats(fresh_ms)
        out["freshness_found"] = f"{found}/{args.edits}"
        out["freshness_file_lines"] = len(original.splitlines())
    return out


async def scale_mcp_phase(args) -> dict:
    """`search` (text) and `similar` (a pasted chunk) through `mose mcp --no-update` on the
    workspace benchmark's 100k-chunk store (real chunks repeated, vectors jittered: its files
    are not on disk, so the server must not update it)."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    cmd = ["-m", "mose_lsp", "mcp", "-w", str(args.workspace), "--index-dir", args.scale_dir,
           "--threads", str(args.threads), "--no-update"]
    if args.model:
        cmd += ["--model", args.model]
    params = StdioServerParameters(command=sys.executable, args=cmd, env=dict(os.environ),
                                   cwd=str(REPO))
    out: dict = {}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        status = await client.call_tool("status", {}, read_timeout_seconds=600)
        out["chunks"] = status.structured_content["folders"][0]["chunks"]

        async def timed(tool: str, arguments: dict) -> tuple[float, dict]:
            t0 = time.perf_counter()
            result = await client.call_tool(tool, arguments, read_timeout_seconds=600)
            if result.is_error:
                raise RuntimeError(f"{tool}: {result.content[0].text}")
            return 1000 * (time.perf_counter() - t0), result.structured_content

        await timed("search", {"query": "warm up"})
        search_ms, snippets = [], []
        for q in (TEXT_QUERIES * 5)[: args.queries]:
            ms, data = await timed("search", {"query": q, "limit": 10})
            search_ms.append(ms)
            snippets += [(h["code"], h["language"]) for h in data["hits"][:1]]
        similar_ms = []
        for code, language in snippets:
            ms, _ = await timed("similar", {"snippet": code, "language": language or "",
                                            "limit": 10})
            similar_ms.append(ms)
    out["search_ms"] = _stats(search_ms)
    out["similar_snippet_ms"] = _stats(similar_ms)
    return out


def scale_cli_phase(args) -> dict:
    """`mose search --no-update` one-shot on the same 100k-chunk store."""
    ms = []
    for q in TEXT_QUERIES[: args.cli_queries]:
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "mose_lsp", "search", q, "-w",
                              str(args.workspace), "--index-dir", args.scale_dir, "--no-update",
                              "--threads", str(args.threads), "--json"],
                             capture_output=True, text=True, cwd=REPO, check=False)
        ms.append(1000 * (time.perf_counter() - t0))
        if run.returncode != 0:
            raise RuntimeError(f"mose search failed: {run.stderr[-500:]}{run.stdout[-500:]}")
    return {"cli_search_ms": _stats(ms)}


def cli_phase(args) -> dict:
    """`mose search` one-shot (a new process per query), the same queries."""
    ms = []
    for q in (TEXT_QUERIES * 2)[: args.cli_queries]:
        cmd = [sys.executable, "-m", "mose_lsp", "search", q, "-w", str(args.workspace),
               "--index-dir", args.index_dir, "--threads", str(args.threads), "--json"]
        if args.model:
            cmd += ["--model", args.model]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        ms.append(1000 * (time.perf_counter() - t0))
        if run.returncode != 0:
            raise RuntimeError(f"mose search failed: {run.stderr[-500:]}{run.stdout[-500:]}")
    return {"search_ms": _stats(ms)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: embedded)")
    p.add_argument("--workspace", type=Path, default=Path(".bench/workspace"))
    p.add_argument("--index-dir", default=str(Path(".bench/index-mcp")))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--cli-queries", type=int, default=8)
    p.add_argument("--edits", type=int, default=10)
    p.add_argument("--scale-chunks", type=int, default=0,
                   help="also build the workspace benchmark's store of this many chunks (real "
                        "chunks repeated, vectors jittered) and time MCP on it (0: skip)")
    p.add_argument("--scale-dir", default=str(Path(".bench/index-mcp-scale")))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not (args.workspace / "SOURCES.json").is_file():
        from corpus import fetch

        fetch(args.workspace)
    args.workspace = args.workspace.resolve()
    args.index_dir = str(Path(args.index_dir).resolve())
    result = {"machine": _machine(), "command": " ".join(sys.argv),
              "index": build_index(args)}
    result["mcp"] = asyncio.run(mcp_phase(args))
    result["cli"] = cli_phase(args)
    if args.scale_chunks:
        import shutil

        from workspace_bench import phase_scale

        args.scale_dir = str(Path(args.scale_dir).resolve())
        shutil.rmtree(args.scale_dir, ignore_errors=True)
        built = phase_scale(args)  # also times the searcher in-process, for comparison
        result["scale"] = {"build": built, **asyncio.run(scale_mcp_phase(args)),
                           **scale_cli_phase(args)}
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
