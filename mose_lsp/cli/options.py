"""Options shared by the runtime commands, and the settings they build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .output import warn

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: the rule below).",
                 show_default=False),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="Model directory from 'mose export' (default: the embedded "
                 "model)."),
]
IndexDirOpt = Annotated[
    Path | None,
    typer.Option("--index-dir", help="The index folder itself (default: a per-workspace folder "
                 "in the user cache)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, errors "
                                       "included (docs/cli.md).")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=0, help="Inference threads (0 = auto).")]
LimitOpt = Annotated[int, typer.Option("-k", "--limit", min=1, help="Number of results.")]
LangOpt = Annotated[list[str] | None,
                    typer.Option("--lang", help="Only these languages (repeatable).")]
PathGlobOpt = Annotated[str | None, typer.Option("--path", help="Only paths matching this glob.")]


def settings(model: Path | None, index_dir: Path | None, threads: int = 0):
    from ..config import Settings

    built, warnings = Settings.from_dict({
        "model": str(model) if model else None,
        "index_dir": str(index_dir) if index_dir else None,
        "threads": threads,
    })
    for w in warnings:
        warn(w)
    return built
