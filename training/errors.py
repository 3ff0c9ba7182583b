"""Errors of the training package that several of its modules raise."""

from __future__ import annotations

from mose_lsp.errors import MoseError


class CheckpointError(MoseError):
    """A checkpoint folder is missing, malformed or of an unknown kind."""
