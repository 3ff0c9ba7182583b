"""``mose serve``: the language server over stdio (default) or TCP.

Kept apart from ``commands.py`` so that the server's imports (pygls, lsprotocol) happen only
when serving; the model and the index load in worker threads after ``initialize``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .config import Settings

LOG_LEVELS = ("debug", "info", "warning", "error")


class _ExpectedErrors(logging.Filter):
    """pygls logs a traceback for every error response; invalid params, cancelled and failed
    requests are answers, not server faults (the server logs them in one line)."""

    CODES = (-32602, -32800, -32803)

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        return getattr(err, "code", None) not in self.CODES


def _logging(level: str, log_file: Path | None, stderr_level: str) -> None:
    # stdout carries the protocol. Logs go to the client (window/logMessage, added by the serve
    # loop) and a file when asked, at `level`; stderr gets `stderr_level` and above (warnings
    # by default: some clients file every stderr line as an error).
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(stderr_level.upper())
    handlers: list[logging.Handler] = [stderr]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    lowest = min(logging.getLevelName(level.upper()), logging.getLevelName(stderr_level.upper()))
    logging.basicConfig(level=lowest, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":  # pygls logs every message at info
        logging.getLogger("pygls").setLevel(logging.WARNING)
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_ExpectedErrors())


def register(app: typer.Typer) -> None:
    @app.command("serve", epilog="Workspaces: each workspace folder the editor sends is a "
                 "workspace, exactly that folder, with the index 'mose index DIR' builds for "
                 "it when no --index-dir is given (docs/cli.md, 'The workspace rule').")
    def serve_command(
        tcp: Annotated[bool, typer.Option("--tcp", help="Serve over TCP instead of stdio.")] = False,
        host: Annotated[str, typer.Option("--host", help="TCP host.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="TCP port.")] = 2087,
        model: Annotated[Path | None, typer.Option(
            "--model", help="Model directory (default: the embedded model); client settings "
                            "override it.")] = None,
        index_dir: Annotated[Path | None, typer.Option(
            "--index-dir", help="Folder for the indexes (one sub-folder per workspace folder; "
                                "default: the user cache).")] = None,
        threads: Annotated[int, typer.Option("--threads", help="Inference threads (0 = auto).")] = 0,
        log_file: Annotated[Path | None, typer.Option("--log-file",
                                                         help="Also log to this file.")] = None,
        log_level: Annotated[str, typer.Option(
            "--log-level", help="Logs sent to the client (window/logMessage) and the log file: "
                                "debug, info, warning or error.")] = "info",
        stderr_level: Annotated[str, typer.Option(
            "--stderr-level", help="Logs written to stderr: debug, info, warning or "
                                   "error.")] = "warning",
    ) -> None:
        """Run the language server (LSP) for editors; see docs/protocol.md."""
        for value, hint in ((log_level, "--log-level"), (stderr_level, "--stderr-level")):
            if value not in LOG_LEVELS:
                raise typer.BadParameter(f"expected one of {', '.join(LOG_LEVELS)}",
                                         param_hint=hint)
        from .service.memory import limit_allocator_arenas

        limit_allocator_arenas()  # before any thread starts: see mose_lsp/service/memory.py
        early = None
        if not tcp:  # answer `initialize` while the LSP libraries import (mose_lsp/lsp/stdio.py)
            from .lsp.stdio import EarlyStdio

            early = EarlyStdio().start()
        _logging(log_level, log_file, stderr_level)
        settings, warnings = Settings.from_dict({
            "model": str(model) if model else None,
            "index_dir": str(index_dir) if index_dir else None,
            "threads": threads,
        })
        for w in warnings:
            logging.getLogger("mose_lsp.serve").warning("%s", w)
        from .lsp import create_server, serve

        # Runs until `exit`, the end of input or a signal, and closes every index before
        # returning (mose_lsp/lsp/lifecycle.py).
        code = serve(create_server(settings), (host, port) if tcp else None,
                     logging.getLevelName(log_level.upper()), early)
        raise typer.Exit(code)
