"""``mose index``: build or bring up to date a workspace's index, with honest progress."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from .options import IndexDirOpt, JsonOpt, ModelOpt, ThreadsOpt, settings
from .output import EXIT_INTERRUPTED, emit_json
from .progress import CountingEncoder, Progress
from .workspace import RULE, resolve

DEEP_STEP = 1024  # chunks per deep-pass step (each saves the vector index; progress and
# cancel checks happen per encode batch inside it)


@contextmanager
def _interruptible(progress: Progress):
    """The first Ctrl-C asks the indexer to stop after its current batch (what is done stays
    saved); a second one stops at once."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def on_interrupt(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        progress.note("interrupted: saving what is indexed (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)


def discard_if_unusable(index_dir: Path, progress: Progress) -> None:
    """For ``--rebuild``: an index database SQLite cannot read (truncated, overwritten) is
    deleted with its vector files, so the rebuild starts from an empty index instead of
    failing on the damage it was asked to repair. A readable index is kept (other clients may
    have it open) and re-embedded in place."""
    import sqlite3

    from ..store import DB_NAME, remove_index

    db = index_dir / DB_NAME
    if not db.exists():
        return
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    except sqlite3.DatabaseError:
        ok = False
    if not ok:
        progress.note(f"the index database {db} is damaged: deleting it and indexing anew")
        remove_index(index_dir)


def _missing_vectors(stats, index) -> int:
    missing = stats.chunks - stats.vectors.get(index.index_exit, 0)
    if index.rerank_exit != index.index_exit:
        missing += stats.chunks - stats.vectors.get(index.rerank_exit, 0)
    return max(0, missing)


def run_index(service, folder, progress: Progress, deep: bool, rebuild: bool,
              cancel: threading.Event) -> dict:
    """Scan (embedding new chunks), then the deep pass; returns the run's report."""
    index = folder.index
    counter: CountingEncoder = index.model
    started = time.perf_counter()
    embed = progress.phase("embedding")
    progress.note(f"indexing {folder.root}" + (" from scratch" if rebuild else ""))

    def on_file(p) -> None:
        if p.phase == "scan":
            embed.update(chunks=counter.encoded, files=(p.done, p.total))

    counter.on_encoded = lambda n: embed.update(chunks=counter.encoded)
    (report,) = service.reindex([folder], rebuild=rebuild, progress=on_file, cancel=cancel)
    embed.chunks = counter.encoded
    embed_s = embed.finish()
    filled, deep_s = 0, 0.0
    if deep and not cancel.is_set():
        todo = _missing_vectors(index.store.stats(), index)
        if todo:
            phase = progress.phase("deep pass")
            phase.update(chunks=0, total=todo)
            base = counter.encoded
            counter.on_encoded = lambda n: phase.update(chunks=counter.encoded - base)
            while not cancel.is_set():
                n = service.fill_deep([folder], max_chunks=DEEP_STEP, cancel=cancel)
                filled += n
                if n == 0:
                    break
            phase.chunks = filled
            deep_s = phase.finish()
    counter.on_encoded = None
    return {
        "files": {"seen": report.files_seen, "read": report.files_indexed,
                  "unchanged": report.files_unchanged, "skipped": report.files_skipped,
                  "deleted": report.files_deleted, "renamed": report.files_renamed},
        "chunks_embedded": report.chunks_embedded,
        "deep_vectors_filled": filled,
        "seconds": {"embedding": round(embed_s, 3), "deep_pass": round(deep_s, 3),
                    "total": round(time.perf_counter() - started, 3)},
        "interrupted": cancel.is_set(),
    }


def index_summary(status) -> dict:
    """The index afterwards, counted as ``mose status`` counts it."""
    return {"files": status.files, "indexed_files": status.indexed_files,
            "skipped_files": sum(status.skipped.values()), "chunks": status.chunks,
            "deep_coverage": status.deep_coverage}


def index_command(
    path: Annotated[Path | None, typer.Argument(
        help="Workspace folder (default: see below).", show_default=False)] = None,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    deep: Annotated[bool, typer.Option("--deep/--no-deep",
                                       help="Also fill deep-exit vectors now.")] = True,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Read and embed every file again (the index folder stays, so other "
                          "mose processes using it carry on).")] = False,
    threads: ThreadsOpt = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index a workspace (incremental: only changed files are read again).

    Progress goes to stderr: a live line on a terminal, a plain line every 10 s otherwise.
    Ctrl-C stops after the current batch; what is indexed stays, and the next run resumes.
    """
    from ..encoder import ModelEncoder
    from ..service import Service

    ws = resolve(path, index_dir)
    conf = settings(model, ws.index_dir, threads)
    progress = Progress(enabled=not quiet)
    if rebuild:
        discard_if_unusable(ws.index_dir, progress)
    encoder = CountingEncoder(ModelEncoder.open(conf.model, threads=conf.resolved_threads()))
    service = Service(conf, model=encoder)
    try:
        folder = service.add_folder(ws.root)
        with _interruptible(progress) as cancel:
            run = run_index(service, folder, progress, deep, rebuild, cancel)
        (status,) = service.status([folder], count_pending=False)
        summary = index_summary(status)
    finally:
        service.close()
    if as_json:
        emit_json({"workspace": str(ws.root), "index_dir": str(ws.index_dir), "run": run,
                   "index": summary})
    else:
        _print_summary(ws.root, run, summary)
    if run["interrupted"]:
        if not as_json:
            again = f"mose index {ws.root}" + ("" if index_dir is None else
                                                f" --index-dir {ws.index_dir}")
            typer.echo(f"interrupted: the files and vectors done so far are saved; run "
                       f"'{again}' again to resume.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)


def _print_summary(root: Path, run: dict, summary: dict) -> None:
    f = run["files"]
    s = run["seconds"]
    typer.echo(f"{root}: {f['seen']:,} files seen: {f['read']:,} read, {f['unchanged']:,} "
               f"unchanged, {f['skipped']:,} skipped, {f['deleted']:,} deleted, "
               f"{f['renamed']:,} renamed")
    typer.echo(f"embedded {run['chunks_embedded']:,} chunks in {s['embedding']:.1f}s; deep pass "
               f"{run['deep_vectors_filled']:,} vectors in {s['deep_pass']:.1f}s; "
               f"total {s['total']:.1f}s")
    cov = summary["deep_coverage"]
    typer.echo(f"index: {summary['indexed_files']:,} files indexed, "
               f"{summary['skipped_files']:,} skipped, {summary['chunks']:,} chunks"
               + (f", {cov:.0%} with deep vectors" if cov is not None else ""))


def register(app: typer.Typer) -> None:
    app.command("index", epilog=RULE)(index_command)
