"""Latency of the language server, measured over stdio against the real `mose serve`.

One run, one server, one fresh index:

1. **search while the first index is built**: the server starts on a large workspace (by
   default a copy of pure-Python packages from this environment's site-packages); as soon as
   the indexing progress reports, a `mose.search` goes out every `--search-gap` seconds until
   the progress ends.
2. **search while the background deep pass runs** (unless it finished already): a query every
   1.3 s, so that each lands while a deep step runs (the pass waits for 1 s without requests).
3. **search on an idle server**: the background deep pass is switched off through
   `workspace/didChangeConfiguration`, then more queries.
4. **edit to searchable**: an open buffer gets a uniquely named function (full-text
   `didChange`, nothing saved); measured until the `mose/documentIndexed` notification and
   until `mose.search` (restricted to that file) returns the new function. The debounce delay
   (`--debounce-ms`) is part of it.

Prints a markdown table; `--json FILE` writes every sample and the summary.

    python benchmarks/server_latency.py --model MODEL_DIR [--workspace PATH] [--json out.json]

`--startup N` measures instead what a user waits for when an editor starts the server, N times,
each on a fresh workspace (a few standard-library modules) with a fresh index: the
`initialize` round trip (request sent -> answer; and process start -> answer), and the time from
process start to the first `workspace/symbol` answer (sent right after `initialized`) and to the
first answer that holds the expected function (`shlex.split` for "Split the string using
shell-like syntax").

    python benchmarks/server_latency.py --model MODEL_DIR --startup 5 [--json out.json]

Queries are the first lines of function docstrings of the workspace (shuffled, each used once
while there are enough), so that the deep vectors the server computes on the fly for a
query's candidates (and caches) are not simply reused by repeating a query; each search also
records whether the documented function came back in its top 10 (a sanity check that results
are real while the index grows).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.uris import from_fs_path
from pytest_lsp import ClientServerConfig, LanguageClient, make_test_lsp_client

DEFAULT_PACKAGES = ("rich", "click", "typer", "pygls", "cattrs", "attr", "pathspec", "watchdog",
                    "_pytest", "jinja2")
TIMEOUT = 600.0


def docstring_queries(folder: Path, seed: int = 0) -> list[tuple[str, str, str]]:
    """(query, relative path, function name) from the first docstring line of functions."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        rel = path.relative_to(folder).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                line = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
                if 4 <= len(line.split()) <= 16 and ">>>" not in line and ":" not in line[:3]:
                    out.append((line, rel, node.name))
    random.Random(seed).shuffle(out)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(samples: list[float], found: list[bool] | None = None) -> dict[str, Any]:
    return {"n": len(samples), "p50_ms": percentile(samples, 0.5) * 1000,
            "p95_ms": percentile(samples, 0.95) * 1000,
            "mean_ms": (statistics.fmean(samples) * 1000) if samples else float("nan"),
            "max_ms": (max(samples) * 1000) if samples else float("nan"),
            "target_in_top10": (sum(found) / len(found)) if found else None}


def copy_packages(dest: Path, packages: tuple[str, ...]) -> list[str]:
    site = Path(sysconfig.get_paths()["purelib"])
    copied = []
    for name in packages:
        src = site / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "*.pyd", "*.dylib"))
            copied.append(name)
    return copied


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class Bench:
    def __init__(self, client: LanguageClient, folder: Path):
        self.client = client
        self.folder = folder
        self.indexed: list[tuple[float, Any]] = []  # (time, mose/documentIndexed params)
        self.queries = docstring_queries(folder)
        self.used = 0

    def next_query(self) -> tuple[str, str, str]:
        query = self.queries[self.used % len(self.queries)]
        self.used += 1
        return query

    async def command(self, name: str, *args: Any) -> Any:
        return await asyncio.wait_for(self.client.workspace_execute_command_async(
            lsp.ExecuteCommandParams(command=name, arguments=list(args))), TIMEOUT)

    async def timed_search(self, query: str, **extra: Any) -> tuple[float, list[dict]]:
        t0 = time.perf_counter()
        result = await self.command("mose.search", {"query": query, **extra})
        return time.perf_counter() - t0, result["results"]

    def progress(self, title: str) -> list[Any] | None:
        for reports in self.client.progress_reports.values():
            if reports and isinstance(reports[0], lsp.WorkDoneProgressBegin) \
                    and reports[0].title == title:
                return reports
        return None

    def finished(self, title: str) -> bool:
        reports = self.progress(title)
        return bool(reports) and isinstance(reports[-1], lsp.WorkDoneProgressEnd)

    async def one_search(self) -> tuple[float, bool]:
        query, rel, name = self.next_query()
        seconds, hits = await self.timed_search(query)
        return seconds, any(h["path"] == rel and (h["symbol"] or "").split(".")[-1] == name
                            for h in hits)

    async def searches_until(self, done, limit_s: float, gap_s: float = 0.0,
                             count: int | None = None) -> tuple[list[float], list[bool]]:
        samples: list[float] = []
        found: list[bool] = []
        deadline = time.monotonic() + limit_s
        while not done() and time.monotonic() < deadline and (count is None
                                                               or len(samples) < count):
            seconds, hit = await self.one_search()
            if not done():  # a request that ended after the phase does not count
                samples.append(seconds)
                found.append(hit)
            await asyncio.sleep(gap_s)
        return samples, found

    async def status(self) -> dict[str, Any]:
        return (await self.command("mose.status"))["folders"][0]

    async def edits(self, rounds: int) -> tuple[list[float], list[float]]:
        """(edit -> documentIndexed, edit -> found by mose.search) in seconds."""
        target = max((p for p in self.folder.rglob("*.py") if "__pycache__" not in p.parts),
                     key=lambda p: (p.stat().st_size < 40_000, p.stat().st_size))
        rel = target.relative_to(self.folder).as_posix()
        uri = from_fs_path(str(target))
        base = target.read_text(encoding="utf-8")
        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(uri=uri, language_id="python", version=1,
                                               text=base)))
        await asyncio.sleep(1.0)
        to_notification, to_search = [], []
        for i in range(rounds):
            name = f"zq_bench_{i}_{os.getpid()}"
            doc = f"Checksum number {i} of a sequence of packets for the benchmark run {name}."
            text = base + f'\n\ndef {name}(packets):\n    """{doc}"""\n' \
                          f"    total = {i}\n    for p in packets:\n" \
                          f"        total = (total * 31 + len(p)) % 65521\n    return total\n"
            version = i + 2
            before = len(self.indexed)
            t0 = time.perf_counter()
            self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))
            found_at = None
            while time.perf_counter() - t0 < 60:
                _, hits = await self.timed_search(doc, k=5, pathGlob=rel)
                if any(h["symbol"] == name for h in hits):
                    found_at = time.perf_counter()
                    break
                await asyncio.sleep(0.01)
            note = next((t for t, p in self.indexed[before:] if p.version == version), None)
            if found_at is not None:
                to_search.append(found_at - t0)
            if note is not None:
                to_notification.append(note - t0)
            await asyncio.sleep(0.3)
        self.client.text_document_did_close(lsp.DidCloseTextDocumentParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri)))
        return to_notification, to_search


def make_client() -> LanguageClient:
    client = make_test_lsp_client()
    bench_box: dict[str, Bench] = {}
    client.bench_box = bench_box  # type: ignore[attr-defined]

    @client.feature("mose/documentIndexed")
    def document_indexed(ls: LanguageClient, params: Any) -> None:
        if "bench" in bench_box:
            bench_box["bench"].indexed.append((time.perf_counter(), params))

    return client


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mose-bench-"))
    try:
        if args.workspace:
            folder = args.workspace.resolve()
            packages: list[str] = []
        else:
            folder = tmp / "workspace"
            folder.mkdir()
            packages = copy_packages(folder, tuple(args.packages))
        load_start = load_average()
        command = [sys.executable, "-m", "mose_lsp", "serve", "--log-level", "warning"]
        client = await ClientServerConfig(server_command=command, client_factory=make_client
                                          ).start()
        bench = Bench(client, folder)
        client.bench_box["bench"] = bench  # type: ignore[attr-defined]
        options = {"model": str(args.model), "indexDir": str(tmp / "index"),
                   "debounceMs": args.debounce_ms, "threads": args.threads,
                   "watcher": "off"}
        # mose/documentIndexed (timing edits) comes only to a client that asks for it.
        init_options = {**options, "notifications": True}
        t_start = time.perf_counter()
        await client.initialize_session(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(
                window=lsp.WindowClientCapabilities(work_done_progress=True),
                workspace=lsp.WorkspaceClientCapabilities(configuration=False)),
            workspace_folders=[lsp.WorkspaceFolder(uri=from_fs_path(str(folder)),
                                                   name=folder.name)],
            initialization_options={"mose": init_options}))
        title = f"mose: indexing {folder.name}"
        # Wait until indexing really runs (the model is loaded, the scan reports).
        while not (bench.progress(title) and len(bench.progress(title) or []) > 2):
            if bench.finished(title):
                break
            await asyncio.sleep(0.05)
        during, during_found = await bench.searches_until(lambda: bench.finished(title),
                                                          TIMEOUT * 2, args.search_gap)
        while not bench.finished(title):
            await asyncio.sleep(0.1)
        first_index_s = time.perf_counter() - t_start
        st = await bench.status()
        deep_title = f"mose: deep vectors {folder.name}"
        # The deep pass runs only after 1 s without requests: a query every 1.3 s lands
        # while one of its steps is running (back-to-back queries would just pause it).
        during_deep, deep_found = await bench.searches_until(
            lambda: bench.finished(deep_title), args.deep_seconds, gap_s=1.3) \
            if st["deepFilling"] or not bench.finished(deep_title) else ([], [])
        # Idle: no background work.
        client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(
            settings={"mose": {**options, "backgroundDeep": False}}))
        while (await bench.status())["deepFilling"]:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        idle, idle_found = await bench.searches_until(lambda: False, TIMEOUT, 0.05,
                                                      count=args.idle_searches)
        to_note, to_search = await bench.edits(args.edits)
        final = await bench.status()
        await client.shutdown_session()
        await client.stop()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_start": load_start,
                    "load_average_end": load_average()},
        "workspace": {"path": str(folder) if args.workspace else None, "packages": packages,
                      "files": final["files"], "indexed_files": final["indexedFiles"],
                      "chunks": final["chunks"], "first_index_s": round(first_index_s, 2),
                      "deep_coverage_at_idle": final["deepCoverage"]},
        "model": final["model"], "debounce_ms": args.debounce_ms, "threads": args.threads,
        "queries": {"distinct": len(bench.queries), "used": bench.used},
        "summary": {
            "search during first index": summary(during, during_found),
            "search during deep pass": summary(during_deep, deep_found),
            "search idle": summary(idle, idle_found),
            "edit -> mose/documentIndexed": summary(to_note),
            "edit -> found by mose.search": summary(to_search),
        },
        "samples_s": {"search_during_index": during, "search_during_deep": during_deep,
                      "search_idle": idle, "edit_to_notification": to_note,
                      "edit_to_search": to_search},
    }


STARTUP_MODULES = ("shlex.py", "textwrap.py", "fnmatch.py", "colorsys.py", "difflib.py",
                   "heapq.py", "bisect.py", "calendar.py")
STARTUP_QUERY, STARTUP_TARGET = "Split the string using shell-like syntax", "split"


async def startup_once(model: Path, threads: int) -> dict[str, float | None]:
    """One server start on a fresh workspace and index; seconds from process start."""
    tmp = Path(tempfile.mkdtemp(prefix="mose-startup-"))
    try:
        folder = tmp / "workspace"
        folder.mkdir()
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        for name in STARTUP_MODULES:
            shutil.copyfile(stdlib / name, folder / name)
        command = [sys.executable, "-m", "mose_lsp", "serve", "--log-level", "warning"]
        t0 = time.perf_counter()
        client = await ClientServerConfig(server_command=command).start()
        try:
            params = lsp.InitializeParams(
                capabilities=lsp.ClientCapabilities(
                    window=lsp.WindowClientCapabilities(work_done_progress=True)),
                process_id=os.getpid(),
                workspace_folders=[lsp.WorkspaceFolder(uri=from_fs_path(str(folder)),
                                                       name=folder.name)],
                initialization_options={"mose": {
                    "model": str(model), "indexDir": str(tmp / "index"), "threads": threads,
                    "watcher": "off"}})
            client.capabilities = params.capabilities  # what initialize_session would set
            sent = time.perf_counter()
            await asyncio.wait_for(client.initialize_async(params), TIMEOUT)
            answered = time.perf_counter()
            client.initialized(lsp.InitializedParams())
            first = found = None
            while time.perf_counter() - t0 < TIMEOUT:
                symbols = await asyncio.wait_for(client.workspace_symbol_async(
                    lsp.WorkspaceSymbolParams(query=STARTUP_QUERY)), TIMEOUT)
                now = time.perf_counter()
                first = first or now
                if any(s.name.split(".")[-1] == STARTUP_TARGET and
                       s.location.uri.endswith("/shlex.py") for s in (symbols or [])[:10]):
                    found = now
                    break
                await asyncio.sleep(0.05)
            await asyncio.wait_for(client.shutdown_session(), TIMEOUT)
        finally:
            await client.stop()
        return {"initialize_rtt_s": answered - sent, "start_to_initialize_s": answered - t0,
                "start_to_first_symbol_s": None if first is None else first - t0,
                "start_to_target_symbol_s": None if found is None else found - t0}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def startup(args: argparse.Namespace) -> dict[str, Any]:
    load_start = load_average()
    runs = [await startup_once(args.model, args.threads) for _ in range(args.startup)]
    keys = list(runs[0])
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_start": load_start,
                    "load_average_end": load_average()},
        "threads": args.threads, "modules": list(STARTUP_MODULES), "query": STARTUP_QUERY,
        "summary": {k: summary([r[k] for r in runs if r[k] is not None]) for k in keys},
        "runs": runs,
    }


def startup_table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    title = (f"server start on a fresh workspace ({len(result['modules'])} stdlib modules), "
             f"{len(result['runs'])} runs; {machine['cpus']} CPUs, load "
             f"{machine['load_average_start']} -> {machine['load_average_end']}")
    lines = [title, "", "| measurement | n | p50 ms | mean ms | max ms |",
             "|---|---:|---:|---:|---:|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['n']} | {s['p50_ms']:.0f} | {s['mean_ms']:.0f} | "
                     f"{s['max_ms']:.0f} |")
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    ws = result["workspace"]
    header = (
        f"workspace: {ws['files']} files ({ws['indexed_files']} indexed), {ws['chunks']} chunks; "
        f"first index {ws['first_index_s']} s; model {result['model']['name']} "
        f"(exits {result['model']['indexExit']}/{result['model']['rerankExit']}); "
        f"debounce {result['debounce_ms']} ms; {result['machine']['cpus']} CPUs, load "
        f"{result['machine']['load_average_start']} -> {result['machine']['load_average_end']}")
    lines = [
        header,
        "",
        "| measurement | n | p50 ms | p95 ms | mean ms | max ms | documented function in top 10 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["summary"].items():
        top = "" if s["target_in_top10"] is None else f"{s['target_in_top10']:.0%}"
        lines.append(f"| {name} | {s['n']} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
                     f"{s['mean_ms']:.0f} | {s['max_ms']:.0f} | {top} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--workspace", type=Path, help="workspace to index (read only; "
                        "default: a copy of packages from site-packages)")
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES),
                        help="site-packages folders to copy as the workspace")
    parser.add_argument("--edits", type=int, default=15, help="edit rounds")
    parser.add_argument("--idle-searches", type=int, default=60, help="searches when idle")
    parser.add_argument("--search-gap", type=float, default=0.5,
                        help="seconds between searches while the first index is built")
    parser.add_argument("--deep-seconds", type=float, default=30.0,
                        help="at most this long measuring searches during the deep pass")
    parser.add_argument("--debounce-ms", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = auto)")
    parser.add_argument("--json", type=Path, help="write samples and summary here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--startup", type=int, default=0, metavar="N",
                        help="only measure N server starts (initialize, first workspace/symbol)")
    args = parser.parse_args()
    if args.startup:
        result = asyncio.run(startup(args))
        print(startup_table(result))
    else:
        result = asyncio.run(run(args))
        print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
