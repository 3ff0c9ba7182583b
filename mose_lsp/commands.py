"""Runtime CLI commands: index, search, similar, status, eval (and serve, when present).

Each command is thin: it parses options, calls the engine, prints a human table or JSON,
and lets ``MoseError`` reach ``cli.main`` which prints it and exits with code 1.
"""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from .cli import app
from .config import Settings
from .errors import MoseError
from .eval_cli import register as _register_eval
from .serve_cli import register as _register_serve
from .walker import iter_files

_register_eval(app)
_register_serve(app)

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: the enclosing git "
                 "repository, or the current folder)."),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="Model directory from 'mose export' (default: the embedded "
                 "model)."),
]
IndexDirOpt = Annotated[
    Path | None,
    typer.Option("--index-dir", help="Where the index lives (default: a per-workspace folder "
                 "in the user cache)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="Inference threads (0 = auto).")]


def find_workspace(start: Path) -> Path:
    """The nearest enclosing folder with a .git (or .moseignore), else ``start``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists() or (folder / ".moseignore").exists():
            return folder
    return start


def _settings(model: Path | None, index_dir: Path | None, threads: int = 0) -> Settings:
    settings, warnings = Settings.from_dict({
        "model": str(model) if model else None,
        "index_dir": str(index_dir) if index_dir else None,
        "threads": threads,
    })
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    return settings


@contextmanager
def _progress(enabled: bool, label: str):
    """A progress bar on stderr (only on a terminal, never with --json)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(p) -> None:
            bar.update(task, completed=p.done, total=p.total or None,
                       description=f"{label} ({p.phase})")

        yield update


def _open(workspace: Path | None, model: Path | None, index_dir: Path | None, threads: int = 0):
    from .indexer import WorkspaceIndex

    root = find_workspace(workspace or Path.cwd())
    if not root.is_dir():
        raise MoseError(f"workspace {root} is not a folder")
    return WorkspaceIndex.open(root, _settings(model, index_dir, threads))


def _update(index, show_progress: bool, deep: bool) -> dict:
    with _progress(show_progress, "indexing") as progress:
        report = index.scan(progress=progress)
    filled = 0
    if deep:
        with _progress(show_progress, "deep vectors") as progress:
            while True:
                n = index.fill_deep(max_chunks=512, progress=progress)
                filled += n
                if n == 0:
                    break
        index.store.flush()
    out = report.__dict__.copy()
    out["deep_filled"] = filled
    return out


def _short(text: str, lines: int = 3, width: int = 100) -> str:
    rows = [r.rstrip() for r in text.splitlines() if r.strip()][:lines]
    return "\n".join("    " + (r[: width - 3] + "..." if len(r) > width else r) for r in rows)


def _print_hits(hits, root: Path, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        payload = {"workspace": str(root), **(extra or {}),
                   "hits": [h.to_json(snippet_lines=None) for h in hits]}
        typer.echo(json.dumps(payload, indent=2))
        return
    if not hits:
        typer.echo("no results")
        return
    for h in hits:
        symbol = f"  {h.symbol}" if h.symbol else ""
        typer.echo(f"{h.path}:{h.start_line + 1}-{h.end_line + 1}{symbol}  "
                   f"score {h.score:.3f} (exit {h.exit})")
        typer.echo(_short(h.text))


@app.command("index")
def index_command(
    path: Annotated[Path | None, typer.Argument(help="Workspace folder (default: current).")] = None,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    deep: Annotated[bool, typer.Option("--deep/--no-deep",
                                       help="Also fill deep-exit vectors now.")] = True,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Delete the index and start over.")] = False,
    threads: ThreadsOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Index a workspace (incremental: only changed files are read again)."""
    from .store import default_index_dir, remove_index

    root = (path or Path.cwd()).resolve()
    if not root.is_dir():
        raise MoseError(f"{root} is not a folder")
    if rebuild:
        remove_index(index_dir or default_index_dir(root))
    from .indexer import WorkspaceIndex

    index = WorkspaceIndex.open(root, _settings(model, index_dir, threads))
    try:
        report = _update(index, not as_json, deep)
        stats = index.store.stats()
    finally:
        index.close()
    if as_json:
        typer.echo(json.dumps({"workspace": str(root), "report": report,
                               "chunks": stats.chunks, "files": stats.files}, indent=2))
        return
    typer.echo(f"{root}: {report['files_seen']} files seen, {report['files_indexed']} indexed, "
               f"{report['files_unchanged']} unchanged, {report['files_skipped']} skipped, "
               f"{report['files_deleted']} deleted, {report['files_renamed']} renamed; "
               f"{report['chunks_embedded']} chunks embedded in {report['seconds']:.1f}s; "
               f"{stats.chunks} chunks in the index")


@app.command("search")
def search_command(
    query: Annotated[str, typer.Argument(help="What to look for, in words (or code with --code).")],
    k: Annotated[int, typer.Option("-k", "--limit", help="Number of results.")] = 10,
    code: Annotated[bool, typer.Option("--code", help="The query is code, not words.")] = False,
    lang: Annotated[list[str] | None, typer.Option("--lang", help="Only these languages (repeatable).")] = None,
    path_glob: Annotated[str | None, typer.Option("--path", help="Only paths matching this glob.")] = None,
    update: Annotated[bool, typer.Option("--update/--no-update",
                                         help="Bring the index up to date first.")] = True,
    workspace: WorkspaceOpt = None,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    threads: ThreadsOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Search the workspace in natural language (or with a code snippet)."""
    from .searcher import Query, Searcher

    if k < 1:
        raise MoseError("-k must be at least 1")
    index = _open(workspace, model, index_dir, threads)
    try:
        if update:
            _update(index, not as_json, deep=False)
        hits = Searcher(index).search(Query(query, "code" if code else "text", k=k,
                                            languages=tuple(lang or ()), path_glob=path_glob))
    finally:
        index.close()
    _print_hits(hits, index.root, as_json, {"query": query})


_TARGET = re.compile(r"^(?P<file>.+?)(?::(?P<start>\d+)(?:-(?P<end>\d+))?)?$")


@app.command("similar")
def similar_command(
    target: Annotated[str, typer.Argument(help="FILE, FILE:LINE or FILE:START-END (1-based).")],
    k: Annotated[int, typer.Option("-k", "--limit", help="Number of results.")] = 10,
    lang: Annotated[list[str] | None, typer.Option("--lang", help="Only these languages (repeatable).")] = None,
    path_glob: Annotated[str | None, typer.Option("--path", help="Only paths matching this glob.")] = None,
    workspace: WorkspaceOpt = None,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    threads: ThreadsOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Find code similar to a function (the chunk around LINE), a line range, or a file."""
    from .searcher import Searcher
    from .walker import relative_path

    match = _TARGET.match(target)
    assert match is not None
    file = Path(match["file"]).expanduser()
    if not file.is_file():
        raise MoseError(f"{file} is not a file")
    start = int(match["start"]) - 1 if match["start"] else None
    end = int(match["end"]) - 1 if match["end"] else None
    if start is not None and (start < 0 or (end is not None and end < start)):
        raise MoseError(f"bad line range in {target!r}: lines are 1-based and START <= END")
    index = _open(workspace or file.resolve().parent, model, index_dir, threads)
    try:
        rel = relative_path(index.root, file)
        _update(index, not as_json, deep=False)
        searcher = Searcher(index)
        if rel is None or start is None:
            text = file.read_text(encoding="utf-8", errors="replace")
            hits = searcher.similar(rel or file.name, 0, None, k=k, text=text,
                                    languages=tuple(lang or ()), path_glob=path_glob)
            if rel is not None:  # the file itself is not "similar to itself"
                hits = [h for h in hits if h.path != rel][:k]
        else:
            if not searcher.chunks_at(rel, start, start if end is None else end):
                raise MoseError(f"{rel}:{start + 1} has no indexed code (the file is skipped "
                                f"or the line is past its end); see 'mose status'")
            hits = searcher.similar(rel, start, end, k=k, languages=tuple(lang or ()),
                                    path_glob=path_glob)
    finally:
        index.close()
    _print_hits(hits, index.root, as_json, {"target": target})


@app.command("status")
def status_command(
    workspace: WorkspaceOpt = None,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    skipped: Annotated[bool, typer.Option("--skipped", help="List every skipped file and why.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the index of a workspace: files, chunks, deep coverage, model, skipped files."""
    index = _open(workspace, model, index_dir)
    try:
        stats = index.store.stats()
        skips = [(s.path, s.skip_code, s.skip_message) for s in index.store.all_files() if s.skipped]
        manifest = index.model.manifest
        pending = sum(1 for e in iter_files(index.root, index.settings)
            if (st := index.store.file_state(e.rel)) is None or st.size != e.size
            or st.mtime_ns != e.mtime_ns)
    finally:
        index.close()
    data = {
        "workspace": str(index.root), "index_dir": str(index.store.index_dir),
        "model": {"name": manifest.name, "version": manifest.version,
                  "path": str(index.model.model_dir.path),
                  "index_exit": index.index_exit, "rerank_exit": index.rerank_exit},
        "files": stats.files, "indexed_files": stats.indexed_files, "chunks": stats.chunks,
        "pending_files": pending, "deep_coverage": stats.deep_coverage,
        "skipped": stats.skipped, "bytes_on_disk": stats.bytes_on_disk,
        "skipped_files": [{"path": p, "code": c, "message": m} for p, c, m in skips],
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"workspace    {data['workspace']}")
    typer.echo(f"index        {data['index_dir']} ({stats.bytes_on_disk / 1e6:.1f} MB)")
    typer.echo(f"model        {manifest.name} {manifest.version} (index exit {index.index_exit}, "
               f"rerank exit {index.rerank_exit})")
    typer.echo(f"files        {stats.indexed_files} indexed, {sum(stats.skipped.values())} skipped, "
               f"{pending} changed since the last index")
    typer.echo(f"chunks       {stats.chunks} ({(stats.deep_coverage or 0):.0%} with deep vectors)")
    if stats.skipped:
        typer.echo("skipped      " + ", ".join(f"{c}: {n}" for c, n in sorted(stats.skipped.items())))
    shown = skips if skipped else skips[:10]
    for p, c, m in shown:
        typer.echo(f"  {p}: {c} ({m})")
    if len(skips) > len(shown):
        typer.echo(f"  ... {len(skips) - len(shown)} more (--skipped lists all)")

