"""One-shot CLI latency: process start to output for `mose search`, `similar` and `status`.

    python benchmarks/cli_latency.py [--corpus .bench/workspace] [--subset python/flask-3.1.0]
                                     [--baseline CHECKOUT] [--runs 20] [--json out.json]

Copies the workspace benchmark's corpus (``benchmarks/corpus.py``) to a scratch folder outside
any git repository, indexes it once (deep pass included, not timed), then runs each command
``--runs`` times as a fresh process (``python -m mose_lsp``, as the ``mose`` script does) and
times it from spawn to exit with its output read (wall clock), and the process's CPU time
(user + system, which a busy machine disturbs less). Prints p50/p95 per command in ms, and
``mose --version`` as the floor (interpreter start). ``--subset`` takes one folder of the
corpus as the workspace (``python/flask-3.1.0``: a Flask-sized one).

``--baseline CHECKOUT`` times another checkout of the code too (its folder goes first on
PYTHONPATH; same interpreter and packages), interleaved run by run with this one, so that both
see the same machine load; the ratio of the medians is the comparison to quote. Each checkout
builds and reads its own index of the workspace, with a snapshot of its own embedded model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY = "send a file to the client with a download name"
SIMILAR_FILE = "python/flask-3.1.0/src/flask/helpers.py"  # send_file
SIMILAR_LINE = 405
REPO = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _run(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    wall = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=Path(".bench/workspace"))
    p.add_argument("--subset", default="", help="one folder of the corpus as the workspace "
                   f"(it must hold {SIMILAR_FILE})")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout to time the same way, interleaved with this one")
    p.add_argument("--workdir", type=Path, default=None,
                   help="scratch folder (default: a temporary one, removed afterwards)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.subset and not SIMILAR_FILE.startswith(args.subset.rstrip("/") + "/"):
        raise SystemExit(f"--subset must be a folder holding {SIMILAR_FILE}")
    if not (args.corpus / SIMILAR_FILE).is_file():
        raise SystemExit(f"{args.corpus} has no {SIMILAR_FILE}: fetch the corpus first with "
                         f"'python benchmarks/corpus.py --dest {args.corpus}'")
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="mose-cli-latency-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        result = _bench(args, scratch.resolve())
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _env(checkout: Path) -> dict:
    """The environment of a timed process: ``checkout`` first on the path, and bytecode
    caching on (as for an installed tool, whose .pyc files pip writes at install; with
    PYTHONDONTWRITEBYTECODE every run would compile the sources again)."""
    path = [str(checkout), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "COLUMNS": "120", "PYTHONPATH": os.pathsep.join(path)}


def _bench(args, scratch: Path) -> dict:
    ws, idx = scratch / "workspace", scratch / "index"
    similar_file, source = SIMILAR_FILE, args.corpus
    if args.subset:
        source = args.corpus / args.subset
        similar_file = SIMILAR_FILE[len(args.subset.rstrip("/")) + 1:]
    if not ws.exists():
        shutil.copytree(source, ws)
    checkouts = {"current": REPO}
    if args.baseline is not None:
        checkouts["baseline"] = args.baseline.resolve()
    variants = {name: _env(path) for name, path in checkouts.items()}
    # Each checkout runs with a snapshot of its own embedded model, so that a model rebuilt in
    # the checkout meanwhile cannot change what is timed (or invalidate the index mid-run).
    models = {}
    for name, path in checkouts.items():
        models[name] = scratch / f"model-{name}"
        if not models[name].exists():
            shutil.copytree(path / "mose_lsp" / "default_model", models[name])
    mose = [sys.executable, "-m", "mose_lsp"]
    # Each checkout indexes the workspace into its own index folder (its own code wrote it,
    # so neither pays for reconciling what the other wrote).
    index_s: dict[str, float] = {}
    for variant, env in variants.items():
        started = time.perf_counter()
        _run([*mose, "index", str(ws), "--index-dir", f"{idx}-{variant}", "--threads",
              str(args.threads), "--model", str(models[variant])], env, scratch)
        index_s[variant] = round(time.perf_counter() - started, 1)

    def commands(variant: str) -> dict[str, list[str]]:
        index = ["--index-dir", f"{idx}-{variant}", "--model", str(models[variant])]
        common = [*index, "--threads", str(args.threads)]
        return {
            "version": ["--version"],
            "search": ["search", QUERY, "-w", str(ws), *common, "-k", "10"],
            "similar": ["similar", f"{ws / similar_file}:{SIMILAR_LINE}", "-w", str(ws),
                        *common, "-k", "10"],
            "status": ["status", "-w", str(ws), *index],
        }
    out: dict = {"corpus": str(args.corpus), "subset": args.subset, "runs": args.runs,
                 "python": platform.python_version(), "cpus": os.cpu_count(),
                 "load_avg_1m_start": round(os.getloadavg()[0], 2),
                 "files": sum(1 for f in ws.rglob("*") if f.is_file()),
                 "index_seconds": index_s, "commands": {}}
    argv = {variant: commands(variant) for variant in variants}
    for name in argv["current"]:
        samples: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in variants}
        for variant, env in variants.items():
            _run([*mose, *argv[variant][name]], env, scratch)  # warm the OS file cache
        for i in range(args.runs):
            order = list(variants) if i % 2 == 0 else list(reversed(variants))
            for variant in order:
                wall, cpu = _run([*mose, *argv[variant][name]], variants[variant], scratch)
                samples[variant][0].append(wall)
                samples[variant][1].append(cpu)
        row: dict = {"argv": ["mose", *argv["current"][name]]}
        for variant, (walls, cpus) in samples.items():
            row[variant] = {"p50_ms": round(_pct(walls, 0.5), 1),
                            "p95_ms": round(_pct(walls, 0.95), 1),
                            "cpu_p50_ms": round(_pct(cpus, 0.5), 1)}
            print(f"{name:8s} {variant:8s} p50 {row[variant]['p50_ms']:7.1f} ms  p95 "
                  f"{row[variant]['p95_ms']:7.1f} ms  cpu p50 {row[variant]['cpu_p50_ms']:7.1f} ms",
                  file=sys.stderr)
        if "baseline" in row:
            row["p50_ratio"] = round(row["current"]["p50_ms"] / row["baseline"]["p50_ms"], 3)
        out["commands"][name] = row
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    main()
