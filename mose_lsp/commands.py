"""Runtime CLI commands (index, search, similar, status, eval, serve).

Each command is thin: it parses options, calls the engine, prints a human table or JSON,
and lets ``MoseError`` reach ``cli.main`` which prints it and exits with code 1.
"""

from __future__ import annotations

from .cli import app  # noqa: F401
