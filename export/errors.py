"""Errors of ``mose export``: each message says what went wrong and what to do."""

from __future__ import annotations

from mose_lsp.errors import MoseError


class ExportError(MoseError):
    """The export cannot run or produced something unusable (nothing is left in --out)."""


class ParityError(ExportError):
    """An exported exit does not compute what the PyTorch model computes, within tolerance."""
