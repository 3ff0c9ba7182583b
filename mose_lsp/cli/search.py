"""``mose search`` and ``mose similar``: read-only questions to an existing index."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    IndexDirOpt,
    JsonOpt,
    LangOpt,
    LimitOpt,
    ModelOpt,
    PathGlobOpt,
    ThreadsOpt,
    WorkspaceOpt,
    settings,
)
from .output import CliError, print_hits, usage_error, warn
from .workspace import RULE, Workspace, resolve

UpdateOpt = Annotated[bool, typer.Option(
    "--update/--no-update",
    help="First index the files changed since the last index (a walk and a stat per file; "
         "--no-update answers from the index as it is).")]


def open_service(ws: Workspace, model: Path | None, threads: int):
    """A service holding the one workspace folder (its index must exist)."""
    from ..service import Service

    service = Service(settings(model, ws.index_dir, threads))
    return service, service.add_folder(ws.root)


def _freshness_notes(result) -> None:
    for f in result.freshness:
        if f.error:
            warn(f"could not update the index first ({f.error}); answered from the index as "
                 f"it was")
        elif f.update_in_progress:
            warn(f"another process is updating the index ({f.writer or 'a writer'}); answered "
                 f"from its last saved state")


def search_command(
    query: Annotated[str, typer.Argument(help="What to look for, in words (or code with --code).")],
    k: LimitOpt = 10,
    code: Annotated[bool, typer.Option("--code", help="The query is code, not words.")] = False,
    lang: LangOpt = None,
    path_glob: PathGlobOpt = None,
    update: UpdateOpt = True,
    workspace: WorkspaceOpt = None,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    threads: ThreadsOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Search the workspace in natural language (or with a code snippet)."""
    if not query.strip():
        raise usage_error("the query is empty: describe the code you look for, in words")
    ws = resolve(workspace, index_dir)
    ws.require_index()
    service, _ = open_service(ws, model, threads)
    try:
        result = service.search(query, kind="code" if code else "text", limit=k,
                                languages=tuple(lang or ()), path_glob=path_glob,
                                fresh=update)
    finally:
        service.close()
    _freshness_notes(result)
    print_hits(result.hits, ws.root, as_json, {"command": "search", "query": query})


_RANGE = re.compile(r"^(?P<start>\d+)(?:-(?P<end>\d+))?$")


def parse_target(target: str) -> tuple[Path, int | None, int | None]:
    """``FILE``, ``FILE:LINE`` or ``FILE:START-END`` (1-based) -> (file, start, end) 0-based."""
    head, sep, tail = target.rpartition(":")
    if sep and _RANGE.match(tail) and head:
        m = _RANGE.match(tail)
        assert m is not None
        start = int(m["start"])
        end = int(m["end"]) if m["end"] else None
        if start < 1 or (end is not None and end < start):
            raise usage_error(f"bad line range in {target!r}: lines are 1-based and START <= END")
        return Path(head).expanduser(), start - 1, None if end is None else end - 1
    path = Path(target).expanduser()
    if sep and head and not path.exists():
        raise usage_error(
            f"{target!r}: after ':' comes a 1-based line (FILE:LINE) or a line range "
            f"(FILE:START-END), not {tail!r}")
    return path, None, None


def similar_command(
    target: Annotated[str, typer.Argument(help="FILE, FILE:LINE or FILE:START-END (1-based).")],
    k: LimitOpt = 10,
    keep_own: Annotated[bool, typer.Option(
        "--keep-own", help="Keep the query's own code and the other chunks of the same symbol "
                           "(left out by default).")] = False,
    lang: LangOpt = None,
    path_glob: PathGlobOpt = None,
    update: UpdateOpt = True,
    workspace: WorkspaceOpt = None,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    threads: ThreadsOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Find code similar to a function (the chunk around LINE), a line range, or a file.

    Without -w, the workspace is found from FILE's folder upwards (see below).
    """
    file, start, end = parse_target(target)
    absolute = Path(os.path.abspath(file))
    ws = resolve(workspace, index_dir, start=absolute.parent if absolute.parent.is_dir()
                 else None)
    rel = ws.relative(absolute)
    if not absolute.is_file():
        raise CliError(f"{file} is not a file" + (" (it does not exist)" if not absolute.exists()
                                                   else "") + ": give FILE, FILE:LINE or "
                       "FILE:START-END", code="not-found")
    ws.require_index()
    service, _ = open_service(ws, model, threads)
    try:
        result = service.similar(path=ws.root / rel, start_line=start, end_line=end, limit=k,
                                 languages=tuple(lang or ()), path_glob=path_glob, fresh=update,
                                 keep_own=keep_own)
    finally:
        service.close()
    _freshness_notes(result)
    print_hits(result.hits, ws.root, as_json, {"command": "similar", "target": target})


def register(app: typer.Typer) -> None:
    app.command("search", epilog=RULE)(search_command)
    app.command("similar", epilog=RULE)(similar_command)
