"""Domain errors. Each carries a message that says what went wrong and what to do.

The CLI turns them into a message and exit code 1; the language server into a JSON-RPC
error. Nothing in the runtime raises bare ``Exception``.
"""

from __future__ import annotations


class MoseError(Exception):
    """Base class for errors shown to users: ``str(err)`` is the whole actionable message."""


class ModelDirError(MoseError):
    """A model directory is missing, malformed, or fails its checksums."""


class MissingExtraError(MoseError):
    """An optional part (training, export) is needed but its extra is not installed."""

    def __init__(self, feature: str, extra: str, missing: str):
        self.feature, self.extra, self.missing = feature, extra, missing
        super().__init__(
            f"{feature} needs the optional '{extra}' dependencies ({missing} is not installed). "
            f"Install them from a clone of the mose repository (in its folder, into the same "
            f"environment): pip install torch==2.13.0 && pip install '.[{extra}]'"
        )


class ConfigError(MoseError):
    """A configuration value is invalid."""


class StoreError(MoseError):
    """The workspace index cannot be used (corrupt, locked, wrong model)."""
