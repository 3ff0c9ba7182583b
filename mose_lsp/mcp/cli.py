"""``mose mcp``: run the MCP server over stdio for one workspace or several.

Kept apart from the other commands so that the MCP SDK is imported only when this command
runs (``mose --version``, ``mose search`` and the rest never load it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..config import Settings

LOG_LEVELS = ("debug", "info", "warning", "error")
try:
    from ..cli.workspace import RULE
except ImportError:  # the CLI without its workspace module
    RULE = "The workspace is the folder you name; without one, it is found from the current folder."


def _roots(workspaces: list[Path] | None, index_dir: Path | None) -> list[Path]:
    """The folders to serve: the ones named (each exactly), else the one the other commands
    would pick from the current folder."""
    try:
        from ..cli.workspace import resolve
    except ImportError:  # the CLI without its workspace module
        from ..commands import find_workspace

        def resolve(folder, index_dir=None):  # type: ignore[no-redef]
            root = (folder or find_workspace(Path.cwd())).expanduser().resolve()
            if not root.is_dir():
                raise typer.BadParameter(f"{folder} is not a folder", param_hint="--workspace")
            return type("W", (), {"root": root})()

    if not workspaces:
        return [resolve(None, index_dir).root]
    roots = [resolve(w, index_dir).root for w in workspaces]
    return list(dict.fromkeys(roots))


def _logging(level: str, log_file: Path | None) -> None:
    # stdout carries the protocol: logs go to stderr (and a file when asked).
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level.upper(), handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":  # the SDK logs every request at info
        for name in ("mcp", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)


def mcp_command(
    workspace: Annotated[list[Path] | None, typer.Option(
        "--workspace", "-w", help="Workspace folder to serve (repeatable). " + RULE)] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Model directory (default: the embedded model).")] = None,
    index_dir: Annotated[Path | None, typer.Option(
        "--index-dir", help="Where the index lives (with several workspaces: one sub-folder "
                            "each; default: the user cache).")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Inference threads (0 = auto).")] = 0,
    max_lines: Annotated[int, typer.Option(
        "--max-lines", min=1, help="Lines of code per hit in results (a call may ask for "
                                   "another number).")] = 30,
    update: Annotated[bool, typer.Option(
        "--update/--no-update", help="Index the files changed on disk before each search and "
                                     "similar (a stat per file); --no-update answers from the "
                                     "index as it is, for a workspace another client (the "
                                     "editor's language server, mose index) keeps current.")] = True,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="Also log to this file.")] = None,
    log_level: Annotated[str, typer.Option("--log-level",
                                           help="debug, info, warning or error.")] = "warning",
) -> None:
    """Run the MCP server (stdio) for coding agents: tools search, similar, status, reindex."""
    if log_level not in LOG_LEVELS:
        raise typer.BadParameter(f"expected one of {', '.join(LOG_LEVELS)}",
                                 param_hint="--log-level")
    _logging(log_level, log_file)
    from ..service.memory import limit_allocator_arenas

    limit_allocator_arenas()
    settings, warnings = Settings.from_dict({
        "model": str(model) if model else None,
        "index_dir": str(index_dir) if index_dir else None,
        "threads": threads,
    })
    for w in warnings:
        logging.getLogger("mose_lsp.mcp").warning("%s", w)
    roots = _roots(workspace, index_dir)
    try:
        from .server import serve
    except ImportError as err:  # the SDK is a runtime dependency; a broken install lacks it
        if not (err.name or "").split(".")[0] in ("mcp", "mcp_types", "pydantic", "anyio"):
            raise
        from ..errors import MoseError

        raise MoseError(f"'mose mcp' needs the MCP SDK ({err}); install it with: "
                        "pip install 'mcp>=2.3'") from err
    serve(roots, settings, max_lines, update)


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp_command)


def main() -> None:
    """``python -m mose_lsp.mcp``."""
    from ..errors import MoseError

    standalone = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    standalone.command()(mcp_command)
    try:
        standalone(prog_name="mose mcp")
    except MoseError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
