"""Scale and soak runs of the real `mose serve`, driven over stdio (the figures of RELIABILITY.md).

Two modes, each standalone:

``scale``: a generated workspace of ``--files`` files (default 100,000, about ten lines each:
functions of the standard library, renamed and varied per copy, so about a million lines) is
opened in a fresh server. For ``--minutes`` (or until the first index ends) the script samples
the server's resident memory every second and sends ``mose.search`` every ``--search-gap``
seconds, recording each latency and any error. Reports: chunks indexed, RSS over time (peak,
bytes per indexed chunk, slope), search p50/p95 during the index, errors.

``soak``: a workspace of ``--files`` files (default 300) served with the file watcher on; for
``--minutes`` (default 30) random edits on disk (rewrite, create, delete), unsaved buffer edits
(didChange) and queries. After a warm-up (a tenth of the run, at least a minute) the median
RSS of the first and the last windows are compared (growth must stay under 10 %); every request
must answer without error; at the end a freshly created file must become searchable (the index
converged).

``soak-mcp``: the same workspace and checks against a fresh ``mose mcp`` (MCP over stdio,
through the MCP SDK's client): random edits on disk (rewrite, create, delete) and ``search``,
``similar`` and ``status`` tool calls, each of which brings the index up to date first.

    python benchmarks/scale_soak.py scale --model MODEL_DIR --files 100000 --minutes 10
    python benchmarks/scale_soak.py soak --model MODEL_DIR --minutes 30 --json soak.json
    python benchmarks/scale_soak.py soak-mcp --minutes 30 --json soak-mcp.json

Exit status 1 when a check fails (soak: memory growth, errors, no convergence; scale: errors).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
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
from pygls.exceptions import JsonRpcException
from pygls.uris import from_fs_path
from pytest_lsp import ClientServerConfig, LanguageClient, make_test_lsp_client

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "string.py", "bisect.py",
           "heapq.py", "glob.py", "base64.py", "calendar.py", "difflib.py", "ntpath.py",
           "posixpath.py", "statistics.py", "fractions.py", "csv.py", "tokenize.py")
QUERIES = ("split a shell command line into words", "wrap text to a given width",
           "convert a colour from rgb to hsv", "match a file name against a pattern",
           "insert into a sorted list", "merge several sorted inputs", "encode bytes as base64",
           "compute the median of some numbers", "difference between two sequences of lines",
           "normalise a file system path", "is this year a leap year", "read rows of a csv file")
REQUEST_TIMEOUT = 120.0


# ----------------------------------------------------------------------------- workspace


def stdlib_functions(min_lines: int = 4, max_lines: int = 30) -> list[tuple[str, str]]:
    """(name, source) of top-level functions of a few standard-library modules."""
    out = []
    for module in MODULES:
        path = STDLIB / module
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                text = ast.get_source_segment(source, node)
                if text and min_lines <= text.count("\n") + 1 <= max_lines:
                    out.append((node.name, text))
    if not out:
        raise SystemExit("no standard-library functions found to build a workspace from")
    return out


def variant(functions: list[tuple[str, str]], i: int, tag: str = "") -> str:
    """File ``i``: a function renamed and varied so that no two files are equal."""
    name, text = functions[i % len(functions)]
    new = f"{name}_{tag}{i}"
    body = text.replace(f"def {name}(", f"def {new}(", 1)
    return f"# copy {i} of {name}\n{body}\n\nLIMIT_{i} = {i % 97}\n"


def make_workspace(root: Path, files: int, per_dir: int = 500, seed: int = 0) -> int:
    """Write ``files`` Python files under ``root``; returns the number of lines written."""
    functions = stdlib_functions()
    random.Random(seed).shuffle(functions)
    lines = 0
    for i in range(files):
        folder = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        text = variant(functions, i)
        (folder / f"m{i}.py").write_text(text)
        lines += text.count("\n")
    return lines


# ----------------------------------------------------------------------------- measuring


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency(samples: list[float]) -> dict[str, Any]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {"n": len(samples), "p50_ms": ms(percentile(samples, 0.5)),
            "p95_ms": ms(percentile(samples, 0.95)),
            "max_ms": ms(max(samples) if samples else None)}


def slope_mb_per_min(points: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of RSS (MB) over time (minutes)."""
    if len(points) < 3:
        return None
    xs = [t / 60 for t, _ in points]
    ys = [r / 2**20 for _, r in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


class Session:
    """One server over stdio, with helpers that record latencies and errors."""

    def __init__(self, client: LanguageClient):
        self.client = client
        self.errors: list[str] = []
        self.pid: int = client._server.pid  # type: ignore[attr-defined]  # pygls's subprocess

    @classmethod
    async def start(cls, folder: Path, options: dict[str, Any]) -> Session:
        command = [sys.executable, "-m", "mose_lsp", "serve", "--log-level", "warning"]
        client = await ClientServerConfig(server_command=command,
                                          client_factory=make_test_lsp_client).start()
        await asyncio.wait_for(client.initialize_session(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(
                window=lsp.WindowClientCapabilities(work_done_progress=True),
                workspace=lsp.WorkspaceClientCapabilities(configuration=False)),
            workspace_folders=[lsp.WorkspaceFolder(uri=from_fs_path(str(folder)),
                                                   name=folder.name)],
            initialization_options={"mose": options})), REQUEST_TIMEOUT)
        return cls(client)

    async def command(self, name: str, *args: Any) -> Any:
        return await asyncio.wait_for(self.client.workspace_execute_command_async(
            lsp.ExecuteCommandParams(command=name, arguments=list(args))), REQUEST_TIMEOUT)

    async def timed_search(self, query: str, **extra: Any) -> tuple[float, list[dict] | None]:
        started = time.perf_counter()
        try:
            result = await self.command("mose.search", {"query": query, **extra})
        except (JsonRpcException, asyncio.TimeoutError) as err:
            self.errors.append(f"mose.search: {type(err).__name__}: {err}")
            return time.perf_counter() - started, None
        return time.perf_counter() - started, result["results"]

    def finished(self, title: str) -> bool:
        for reports in self.client.progress_reports.values():
            if reports and isinstance(reports[0], lsp.WorkDoneProgressBegin) \
                    and reports[0].title == title \
                    and isinstance(reports[-1], lsp.WorkDoneProgressEnd):
                return True
        return False

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.client.shutdown_session(), REQUEST_TIMEOUT)
        finally:
            await self.client.stop()


async def sample_rss(session: Session, out: list[tuple[float, int]], t0: float,
                     every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        rss = rss_bytes(session.pid)
        if rss is not None:
            out.append((time.perf_counter() - t0, rss))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass


# ----------------------------------------------------------------------------- scale


async def run_scale(model: str | None, files: int, minutes: float, search_gap: float = 0.5,
                    threads: int = 2, workdir: Path | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mose-scale-", dir=workdir)).resolve()
    try:
        folder = tmp / "big"
        t = time.perf_counter()
        lines = make_workspace(folder, files)
        generate_s = time.perf_counter() - t
        options = {"indexDir": str(tmp / "index"), "threads": threads, "watcher": "off"}
        if model:
            options["model"] = model
        t0 = time.perf_counter()
        session = await Session.start(folder, options)
        rss: list[tuple[float, int]] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(session, rss, t0, 1.0, stop))
        title = f"mose: indexing {folder.name}"
        deadline = t0 + minutes * 60
        lat: list[float] = []
        rng = random.Random(1)
        while time.perf_counter() < deadline and not session.finished(title):
            took, _ = await session.timed_search(rng.choice(QUERIES), k=10)
            lat.append(took)
            await asyncio.sleep(search_gap)
        elapsed = time.perf_counter() - t0
        status = await session.command("mose.status")
        folder_status = status["folders"][0] if status.get("folders") else status
        stop.set()
        await sampler
        await session.stop()
        chunks = folder_status.get("chunks") or 0
        peak = max((r for _, r in rss), default=0)
        half = [p for p in rss if p[0] >= elapsed / 2]
        return {
            "mode": "scale", "files": files, "lines": lines, "generate_s": round(generate_s, 1),
            "minutes_run": round(elapsed / 60, 2), "first_index_finished": session.finished(title),
            "indexed_files": folder_status.get("indexedFiles"), "chunks": chunks,
            "chunks_per_s": round(chunks / elapsed, 1) if elapsed else None,
            "search_during_index": latency(lat), "errors": session.errors,
            "rss_mb": {"start": round(rss[0][1] / 2**20, 1) if rss else None,
                       "peak": round(peak / 2**20, 1),
                       "end": round(rss[-1][1] / 2**20, 1) if rss else None,
                       "slope_mb_per_min_second_half": slope_mb_per_min(half)},
            "rss_samples": [(round(t, 1), r) for t, r in rss[:: max(1, len(rss) // 200)]],
            "load_average": list(os.getloadavg()),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- soak


async def run_soak(model: str | None, minutes: float, files: int = 300, threads: int = 2,
                   seed: int = 0, workdir: Path | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mose-soak-", dir=workdir)).resolve()
    rng = random.Random(seed)
    functions = stdlib_functions()
    try:
        folder = tmp / "ws"
        make_workspace(folder, files, per_dir=50)
        options = {"indexDir": str(tmp / "index"), "threads": threads, "watcher": "watchdog",
                   "debounceMs": 200}
        if model:
            options["model"] = model
        t0 = time.perf_counter()
        session = await Session.start(folder, options)
        title = f"mose: indexing {folder.name}"
        while not session.finished(title):
            if time.perf_counter() - t0 > 1800:
                raise SystemExit("the first index of the soak workspace took over 30 minutes")
            await asyncio.sleep(0.5)
        rss: list[tuple[float, int]] = []
        stop = asyncio.Event()
        t1 = time.perf_counter()
        sampler = asyncio.create_task(sample_rss(session, rss, t1, 5.0, stop))
        paths = sorted(folder.rglob("*.py"))
        opened: dict[Path, int] = {}
        counts = {"disk_rewrite": 0, "disk_create": 0, "disk_delete": 0, "buffer_edit": 0,
                  "search": 0, "status": 0}
        lat: list[float] = []
        serial = files
        deadline = t1 + minutes * 60
        while time.perf_counter() < deadline:
            action = rng.random()
            serial += 1
            if action < 0.25 and paths:  # rewrite a file on disk
                path = rng.choice(paths)
                path.write_text(variant(functions, rng.randrange(10**6), tag="r"))
                counts["disk_rewrite"] += 1
            elif action < 0.35:  # a new file
                path = folder / f"d{rng.randrange(files // 50 + 1):04d}" / f"n{serial}.py"
                path.parent.mkdir(exist_ok=True)
                path.write_text(variant(functions, serial, tag="n"))
                paths.append(path)
                counts["disk_create"] += 1
            elif action < 0.45 and len(paths) > files // 2:  # a deletion
                path = paths.pop(rng.randrange(len(paths)))
                path.unlink(missing_ok=True)
                opened.pop(path, None)
                counts["disk_delete"] += 1
            elif action < 0.65 and paths:  # an unsaved buffer edit
                path = rng.choice(paths)
                uri = from_fs_path(str(path))
                text = variant(functions, rng.randrange(10**6), tag="b")
                if path not in opened:
                    opened[path] = 1
                    session.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
                        text_document=lsp.TextDocumentItem(uri=uri, language_id="python",
                                                           version=1, text=text)))
                else:
                    opened[path] += 1
                    session.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                        text_document=lsp.VersionedTextDocumentIdentifier(
                            uri=uri, version=opened[path]),
                        content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))
                if len(opened) > 20:  # close the oldest buffer: the disk version comes back
                    old = next(iter(opened))
                    del opened[old]
                    session.client.text_document_did_close(lsp.DidCloseTextDocumentParams(
                        text_document=lsp.TextDocumentIdentifier(uri=from_fs_path(str(old)))))
                counts["buffer_edit"] += 1
            elif action < 0.95:
                took, _ = await session.timed_search(rng.choice(QUERIES), k=10)
                lat.append(took)
                counts["search"] += 1
            else:
                try:
                    await session.command("mose.status")
                except (JsonRpcException, asyncio.TimeoutError) as err:
                    session.errors.append(f"mose.status: {err}")
                counts["status"] += 1
            await asyncio.sleep(rng.uniform(0.2, 1.0))
        # Convergence: a new file with a unique function becomes searchable.
        unique = "def soak_final_marker_quaternion_slerp(a, b, t):\n" \
                 '    """Spherical linear interpolation between two quaternions."""\n' \
                 "    return a * (1 - t) + b * t\n"
        (folder / "final_marker.py").write_text(unique)
        t = time.perf_counter()
        converged_s = None
        while time.perf_counter() - t < 300:
            _, hits = await session.timed_search("spherical linear interpolation quaternions",
                                                 k=5, pathGlob="final_marker.py")
            if hits and hits[0]["symbol"] == "soak_final_marker_quaternion_slerp":
                converged_s = time.perf_counter() - t
                break
            await asyncio.sleep(1.0)
        stop.set()
        await sampler
        status = await session.command("mose.status")
        await session.stop()
        elapsed = time.perf_counter() - t1
        return {
            "mode": "soak", "files": files, "minutes_run": round(elapsed / 60, 2),
            "actions": counts, "search": latency(lat), "errors": session.errors,
            "converged_s": None if converged_s is None else round(converged_s, 1),
            **rss_summary(rss, elapsed),
            "final_status": {k: v for k, v in (status["folders"][0] if status.get("folders")
                                               else status).items()
                             if isinstance(v, (int, float, str, type(None)))},
            "load_average": list(os.getloadavg()),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rss_summary(rss: list[tuple[float, int]], elapsed: float) -> dict[str, Any]:
    """The soak's memory check: median RSS of the first window after the warm-up (a tenth of
    the run, at least a minute) against the median of the last window (as long)."""
    warm = max(60.0, elapsed / 10)
    window = max(60.0, elapsed / 10)
    first = [r for t_, r in rss if warm <= t_ < warm + window]
    last = [r for t_, r in rss if t_ >= elapsed - window]
    growth = (statistics.median(last) / statistics.median(first) - 1) if first and last \
        else None
    return {
        "rss_mb": {"after_warmup_median": round(statistics.median(first) / 2**20, 1)
                   if first else None,
                   "last_window_median": round(statistics.median(last) / 2**20, 1)
                   if last else None,
                   "peak": round(max(r for _, r in rss) / 2**20, 1) if rss else None},
        "rss_growth": None if growth is None else round(growth, 4),
        "rss_samples": [(round(t_, 1), r) for t_, r in rss],
    }


def _child_pid(marker: str) -> int | None:
    """The pid of this process's child whose command line holds ``marker``."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and marker in cmdline:
            return int(entry.name)
    return None


async def run_soak_mcp(model: str | None, minutes: float, files: int = 300, threads: int = 2,
                       seed: int = 0, workdir: Path | None = None) -> dict[str, Any]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    tmp = Path(tempfile.mkdtemp(prefix="mose-soak-mcp-", dir=workdir)).resolve()
    rng = random.Random(seed)
    functions = stdlib_functions()
    errors: list[str] = []
    try:
        folder = tmp / "ws"
        make_workspace(folder, files, per_dir=50)
        args = ["-m", "mose_lsp.mcp", "-w", str(folder), "--index-dir", str(tmp / "index"),
                "--threads", str(threads)]
        if model:
            args += ["--model", model]
        params = StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ))
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()

            async def call(tool: str, arguments: dict) -> tuple[float, Any]:
                started = time.perf_counter()
                try:
                    result = await client.call_tool(tool, arguments,
                                                    read_timeout_seconds=REQUEST_TIMEOUT)
                except Exception as err:  # noqa: BLE001  (recorded as the soak's failure)
                    errors.append(f"{tool}: {type(err).__name__}: {err}")
                    return time.perf_counter() - started, None
                if result.is_error:
                    errors.append(f"{tool} {arguments}: {result.content[0].text[:300]}")
                    return time.perf_counter() - started, None
                return time.perf_counter() - started, result.structured_content

            t0 = time.perf_counter()
            while (await call("reindex", {}))[1] is None:  # the first index (and model load)
                if time.perf_counter() - t0 > 1800:
                    raise SystemExit("the first index of the soak workspace took over 30 min")
            pid = _child_pid("mose_lsp.mcp")
            if pid is None:
                raise SystemExit("cannot find the mose mcp process to measure")
            rss: list[tuple[float, int]] = []
            t1 = time.perf_counter()
            paths = sorted(folder.rglob("*.py"))
            counts = {"disk_rewrite": 0, "disk_create": 0, "disk_delete": 0, "search": 0,
                      "similar": 0, "status": 0}
            lat: list[float] = []
            serial = files
            deadline = t1 + minutes * 60
            next_sample = t1
            while time.perf_counter() < deadline:
                if time.perf_counter() >= next_sample:
                    value = rss_bytes(pid)
                    if value is not None:
                        rss.append((time.perf_counter() - t1, value))
                    next_sample += 5.0
                action = rng.random()
                serial += 1
                if action < 0.25 and paths:
                    rng.choice(paths).write_text(variant(functions, rng.randrange(10**6), "r"))
                    counts["disk_rewrite"] += 1
                elif action < 0.35:
                    path = folder / f"d{rng.randrange(files // 50 + 1):04d}" / f"n{serial}.py"
                    path.parent.mkdir(exist_ok=True)
                    path.write_text(variant(functions, serial, tag="n"))
                    paths.append(path)
                    counts["disk_create"] += 1
                elif action < 0.45 and len(paths) > files // 2:
                    paths.pop(rng.randrange(len(paths))).unlink(missing_ok=True)
                    counts["disk_delete"] += 1
                elif action < 0.85:
                    took, _ = await call("search", {"query": rng.choice(QUERIES), "limit": 10})
                    lat.append(took)
                    counts["search"] += 1
                elif action < 0.95 and paths:
                    path = rng.choice(paths)
                    await call("similar", {"path": path.relative_to(folder).as_posix(),
                                           "line": 1, "limit": 10})
                    counts["similar"] += 1
                else:
                    await call("status", {})
                    counts["status"] += 1
                await asyncio.sleep(rng.uniform(0.2, 1.0))
            elapsed = time.perf_counter() - t1
            (folder / "final_marker.py").write_text(
                "def soak_final_marker_quaternion_slerp(a, b, t):\n"
                '    """Spherical linear interpolation between two quaternions."""\n'
                "    return a * (1 - t) + b * t\n")
            t = time.perf_counter()
            _, found = await call("search", {"query": "spherical linear interpolation "
                                                      "quaternions", "limit": 5})
            converged_s = time.perf_counter() - t if found and found["hits"] and \
                found["hits"][0]["symbol"] == "soak_final_marker_quaternion_slerp" else None
            _, status = await call("status", {})
        return {
            "mode": "soak-mcp", "files": files, "minutes_run": round(elapsed / 60, 2),
            "actions": counts, "search": latency(lat), "errors": errors,
            "converged_s": None if converged_s is None else round(converged_s, 1),
            **rss_summary(rss, elapsed),
            "final_status": {k: v for k, v in (status["folders"][0] if status else {}).items()
                             if isinstance(v, (int, float, str, type(None)))},
            "load_average": list(os.getloadavg()),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def soak_failures(result: dict[str, Any]) -> list[str]:
    failures = []
    if result["errors"]:
        failures.append(f"{len(result['errors'])} request errors: {result['errors'][:3]}")
    if result["rss_growth"] is None:
        failures.append("too few memory samples to judge growth")
    elif result["rss_growth"] > 0.10:
        failures.append(f"memory grew {result['rss_growth']:.1%} (limit 10%)")
    if result["converged_s"] is None:
        failures.append("a new file did not become searchable within 300 s")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("scale", "soak", "soak-mcp"))
    parser.add_argument("--model", help="model directory (default: the embedded model)")
    parser.add_argument("--files", type=int, help="files in the workspace "
                        "(default: 100000 for scale, 300 for soak)")
    parser.add_argument("--minutes", type=float, help="duration (default: 10 scale, 30 soak)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="where the temporary workspace goes")
    parser.add_argument("--json", type=Path, help="write the full result here")
    args = parser.parse_args()
    if args.mode == "scale":
        result = asyncio.run(run_scale(args.model, args.files or 100_000, args.minutes or 10,
                                       threads=args.threads, workdir=args.workdir))
        failures = [f"{len(result['errors'])} search errors"] if result["errors"] else []
    else:
        run = run_soak if args.mode == "soak" else run_soak_mcp
        result = asyncio.run(run(args.model, args.minutes or 30, args.files or 300,
                                 threads=args.threads, workdir=args.workdir))
        failures = soak_failures(result)
    result["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    shown = {k: v for k, v in result.items() if k != "rss_samples"}
    print(json.dumps(shown, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
