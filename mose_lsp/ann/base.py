"""The vector index interface, its errors and lock, and the helpers both implementations share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import StoreError

IdFilter = Callable[[int], bool]
"""Keeps a candidate when it returns True for the candidate's id."""

KNN_SHORT = "contiguous 2D array"  # hnswlib's message when it found fewer than k results


class IndexFileError(StoreError):
    """A saved vector index is missing, truncated, corrupt or does not match what was asked."""


class RWLock:
    """A writer-preferring readers-writer lock (not reentrant).

    Any number of readers may hold it together; a writer holds it alone. Once a writer waits,
    new readers queue behind it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the shared (read) side for the duration of the ``with`` block."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the exclusive (write) side for the duration of the ``with`` block."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@runtime_checkable
class VectorIndex(Protocol):
    """What the store needs from a vector index. Ids are non-negative int64 labels.

    ``maybe_compact`` gives memory held by deleted vectors back when ``wants_compaction``
    (returns whether it did); it never changes ids or vectors, and may run alongside searches
    and writes.
    """

    dim: int
    meta: dict[str, Any]  # caller metadata written by save() and read back by load()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def delete(self, ids: Iterable[int]) -> int: ...

    def search(
        self, vectors: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def get(self, ids: Iterable[int]) -> np.ndarray: ...

    def count(self) -> int: ...

    def ids(self) -> np.ndarray: ...

    def save(self, path: Path | str, meta: Mapping[str, Any] | None = None) -> None: ...

    def wants_compaction(self) -> bool: ...

    def maybe_compact(self, cancel: Callable[[], bool] | None = None) -> bool: ...

    def close(self) -> None: ...


def normalize(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 (N, dim) array with unit rows.

    Rows of norm zero stay zero. Raises ``ValueError`` on a wrong shape or non-finite values.
    """
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (N, {dim}), got {np.shape(vectors)}")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinity")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    out = arr / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(out, dtype=np.float32)


def as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    if (arr < 0).any():
        raise ValueError("ids must be non-negative")
    return arr


def dedupe_last(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last row for each repeated id (a later add of the same id wins)."""
    if len(np.unique(ids)) == len(ids):
        return ids, vectors
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - first_in_reversed)
    return ids[keep], vectors[keep]


def topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` (id, score) pairs by descending score; ties broken by smaller id."""
    if k <= 0 or len(ids) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    k = min(k, len(ids))
    part = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
    order = np.lexsort((ids[part], -scores[part]))
    best = part[order]
    return ids[best].astype(np.int64), scores[best].astype(np.float32)


def pad_rows(
    rows: list[tuple[np.ndarray, np.ndarray]], width: int
) -> tuple[np.ndarray, np.ndarray]:
    width = max([width, *(len(r[0]) for r in rows)])
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
    for i, (row_ids, row_scores) in enumerate(rows):
        ids[i, : len(row_ids)] = row_ids
        scores[i, : len(row_scores)] = row_scores
    return ids, scores


def add_batch(ids: Iterable[int] | np.ndarray, vectors: np.ndarray,
              dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``add`` arguments of any index, checked and normalised: int64 ids (N,), unit float32
    rows (N, dim), the last row kept for a repeated id."""
    ids = as_ids(ids)
    vecs = normalize(vectors, dim) if len(ids) else np.zeros((0, dim), np.float32)
    if len(vecs) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(vecs)} vectors")
    return dedupe_last(ids, vecs)
