"""The CLI's output contract (docs/cli.md): what goes to stdout and stderr, in text and JSON.

- Lines are 1-based and inclusive everywhere (text and JSON).
- With ``--json`` stdout carries exactly one JSON object, errors included
  (``{"error": {"code", "message"}}``); progress and warnings go to stderr.
- Exit codes: 0 ok (with results or none), 1 the user's or the environment's error, 2 a usage
  error (bad option, missing argument), 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from ..errors import ConfigError, MissingExtraError, ModelDirError, MoseError, StoreError

SCHEMA = 1  # the "schema" field of every JSON object; raised only on an incompatible change

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(MoseError):
    """An error the CLI reports: ``code`` is its stable JSON name (docs/cli.md)."""

    def __init__(self, message: str, code: str = "error", exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code


def usage_error(message: str) -> CliError:
    return CliError(message, code="usage", exit_code=EXIT_USAGE)


def error_code(err: BaseException) -> str:
    """The stable name of an error in JSON output."""
    code = getattr(err, "code", None)
    if isinstance(code, str) and code:
        return code
    for cls, name in ((MissingExtraError, "missing-extra"), (ModelDirError, "model"),
                      (StoreError, "index"), (ConfigError, "config")):
        if isinstance(err, cls):
            return name
    # The service's errors, by name: importing the service here would load the engine.
    names = {c.__name__ for c in type(err).__mro__}
    if "LockBusy" in names:
        return "busy"
    if "ServiceError" in names:
        return "invalid-request"
    return "error"


def emit_json(data: dict[str, Any]) -> None:
    typer.echo(json.dumps({"schema": SCHEMA, **data}, indent=2, ensure_ascii=False))


def report_error(err: BaseException, as_json: bool, code: str | None = None) -> None:
    """Print an error: a JSON object on stdout with ``--json``, else ``error: ...`` on stderr."""
    code = code or error_code(err)
    message = str(err) or type(err).__name__
    if as_json:
        emit_json({"error": {"code": code, "message": message}})
    else:
        typer.echo(f"error: {message}", err=True)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def hit_json(hit) -> dict[str, Any]:
    """One search hit in the JSON contract (1-based inclusive lines)."""
    return {
        "path": hit.path,
        "start_line": hit.start_line + 1,
        "end_line": hit.end_line + 1,
        "symbol": hit.symbol,
        "kind": hit.kind,
        "language": hit.language,
        "score": round(float(hit.score), 6),
        "exit": hit.exit,
        "deep": bool(hit.deep),
        "text": hit.text,
    }


def _short(text: str, lines: int = 3, width: int = 100) -> str:
    rows = [r.rstrip() for r in text.splitlines() if r.strip()][:lines]
    return "\n".join("    " + (r[: width - 3] + "..." if len(r) > width else r) for r in rows)


def print_hits(hits, root, as_json: bool, extra: dict[str, Any]) -> None:
    if as_json:
        emit_json({**extra, "workspace": str(root), "hits": [hit_json(h) for h in hits]})
        return
    if not hits:
        typer.echo("no results")
        return
    for h in hits:
        symbol = f"  {h.symbol}" if h.symbol else ""
        typer.echo(f"{h.path}:{h.start_line + 1}-{h.end_line + 1}{symbol}  "
                   f"score {h.score:.3f} (exit {h.exit})")
        typer.echo(_short(h.text))


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
