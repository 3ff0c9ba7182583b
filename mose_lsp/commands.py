"""Compatibility: ``import mose_lsp.commands`` registers the runtime commands on
``mose_lsp.cli.app`` (they live in the ``mose_lsp.cli`` package now)."""

from __future__ import annotations

from .cli import _register_runtime_commands
from .cli.workspace import find as find_workspace

_register_runtime_commands()

__all__ = ["find_workspace"]
