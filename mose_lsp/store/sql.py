"""Small helpers the store's SQL shares: id batches, placeholders, paths, vector blobs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import PurePath

import numpy as np

BATCH = 500  # ids per IN (...) query: below SQLite's oldest variable limit (999)


def rel_path(path: str | PurePath) -> str:
    """Normalise a workspace-relative path to its posix string; refuse absolute or escaping."""
    text = path.as_posix() if isinstance(path, PurePath) else str(path)
    parts = text.split("/")
    if not text or text.startswith("/") or ".." in parts or "\\" in text:
        raise ValueError(f"expected a workspace-relative posix path, got {text!r}")
    return "/".join(p for p in parts if p not in ("", "."))


def blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def usable(row: np.ndarray) -> bool:
    return bool(np.isfinite(row).all() and np.any(row != 0))


def batches(items: Sequence[int], size: int = BATCH) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(n: int) -> str:
    return ",".join("?" * n)
