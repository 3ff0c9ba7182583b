"""Where a server's memory goes: glibc malloc arenas, with and without mose's cap.

    python benchmarks/arena_probe.py [--threads 8] [--rounds 150] [--json out.json]

Runs the same workload twice, each in a fresh process: one with the cap the servers apply at
start (``mose_lsp.service.memory.limit_allocator_arenas``: two arenas), one without (glibc's
default: up to eight per core). The workload is what a server's worker threads do: searches
from a pool of threads (as the language server's readers and the MCP server's tool calls), while
another thread rewrites files and updates the index. Reports resident memory after the index
is built and at the end, and the number of malloc arena heaps (64 MiB-aligned anonymous
mappings of the process: each thread that allocates while the others hold their arenas gets
one, and keeps what it reached).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "string.py", "bisect.py",
           "heapq.py", "glob.py", "base64.py", "calendar.py", "difflib.py", "csv.py")
QUERIES = ("split a shell command line into words", "wrap text to a given width",
           "convert a colour from rgb to hsv", "match a file name against a pattern",
           "insert into a sorted list", "difference between two sequences of lines")
HEAP_ALIGN = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: each non-main arena heap is aligned


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def arena_heaps() -> int:
    starts = set()
    with open("/proc/self/maps", encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            start = int(parts[0].split("-")[0], 16)
            if len(parts) < 6 and start % HEAP_ALIGN == 0:  # anonymous, heap-aligned
                starts.add(start)
    return len(starts)


def workload(cap: bool, threads: int, rounds: int) -> dict:
    from mose_lsp.service.memory import limit_allocator_arenas

    applied = limit_allocator_arenas() if cap else False
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.searcher import Query, Searcher

    tmp = Path(tempfile.mkdtemp(prefix="mose-arena-"))
    try:
        ws = tmp / "ws"
        ws.mkdir()
        for name in MODULES:
            shutil.copyfile(STDLIB / name, ws / name)
        index = WorkspaceIndex.open(ws, Settings(index_dir=str(tmp / "index"), threads=2))
        index.scan()
        searcher = Searcher(index)
        built = rss_mb()
        stop = threading.Event()

        def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                target = ws / MODULES[n % len(MODULES)]
                text = (STDLIB / target.name).read_text()
                target.write_text(text + f"\n\ndef probe_{n}(x):\n    return x * {n}\n")
                index.update_paths([target.name])

        def reader(i: int) -> None:
            searcher.search(Query(QUERIES[i % len(QUERIES)], k=10))

        started = time.perf_counter()
        thread = threading.Thread(target=writer)
        thread.start()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(reader, range(rounds * threads)))
        stop.set()
        thread.join()
        index.close()
        return {"cap": cap, "cap_applied": applied, "threads": threads,
                "searches": rounds * threads, "seconds": round(time.perf_counter() - started, 1),
                "rss_mb_after_index": round(built, 1), "rss_mb_end": round(rss_mb(), 1),
                "arena_heaps": arena_heaps()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--rounds", type=int, default=150, help="searches per thread")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", choices=("cap", "nocap"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(workload(args.child == "cap", args.threads, args.rounds)))
        return
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    runs = []
    for mode in ("nocap", "cap"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--threads",
                              str(args.threads), "--rounds", str(args.rounds)],
                             capture_output=True, text=True, env=env, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    result = {"cores": os.cpu_count(), "load_average": list(os.getloadavg()), "runs": runs}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
