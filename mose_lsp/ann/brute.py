"""``BruteForceIndex``: a numpy matrix scored in full. Exact: the oracle in tests, and a fine
choice for small workspaces or the store's fresh index."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .base import IdFilter, IndexFileError, RWLock, add_batch, as_ids, normalize, pad_rows, topk
from .files import check_file, make_sidecar, read_sidecar, save_atomically


class BruteForceIndex:
    """An exact index: a (capacity, dim) float32 matrix scored with one matrix product.

    Same interface and on-disk sidecar as :class:`HnswIndex`; the data file is an ``.npz``
    (``ids``, ``vectors``) read back with ``allow_pickle=False``.

    Memory follows the live count: a delete moves the last row into the hole, and the matrix
    is grown (by 1.25) and shrunk (to 1.25 x live once under half is used) in place with
    ``ndarray.resize`` (a ``realloc``: no second copy of the matrix), so nothing needs
    compacting. A query costs one (dim x count) product: about 40 MFLOP at 100k x 384.
    """

    KIND = "brute"

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        """An empty index; same as :meth:`create`."""
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.meta: dict[str, Any] = {}
        self._matrix = np.zeros((max(16, int(capacity)), dim), dtype=np.float32)
        self._ids = np.zeros(self._matrix.shape[0], dtype=np.int64)
        self._row: dict[int, int] = {}  # id -> row in _matrix; rows [0, len(_row)) are live
        self._lock = RWLock()
        self._closed = False

    @classmethod
    def create(cls, dim: int, capacity: int = 1024) -> BruteForceIndex:
        """An empty index for ``dim``-dimensional vectors."""
        return cls(dim, capacity)

    @classmethod
    def load(cls, path: Path | str, dim: int) -> BruteForceIndex:
        """Load an index written by :meth:`save`; raises :class:`IndexFileError` if unusable."""
        path = Path(path)
        info = read_sidecar(path)
        check_file(path, info, cls.KIND, dim)
        try:
            with np.load(path, allow_pickle=False) as data:
                ids = np.asarray(data["ids"], dtype=np.int64)
                vectors = np.asarray(data["vectors"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as err:
            raise IndexFileError(f"{path} is unreadable: {err}") from err
        if vectors.shape != (len(ids), dim) or len(ids) != info["count"]:
            raise IndexFileError(f"{path} does not hold {info['count']} vectors of dim {dim}")
        if len(np.unique(ids)) != len(ids) or (ids < 0).any() or not np.isfinite(vectors).all():
            raise IndexFileError(f"{path} holds repeated or negative ids or non-finite vectors")
        out = cls(dim, capacity=16)
        if len(ids):  # adopt the loaded arrays (rows saved normalised): no second copy
            out._matrix = np.require(vectors, np.float32, ["C", "O", "W"])
            out._ids = np.require(ids, np.int64, ["C", "O", "W"])
            out._row = {int(label): row for row, label in enumerate(ids.tolist())}
        out.meta = dict(info.get("meta", {}))
        return out

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace the vectors of ``ids``."""
        ids, vecs = add_batch(ids, vectors, self.dim)
        with self._lock.write():
            self._check_open()
            new = sum(1 for i in ids if int(i) not in self._row)
            needed = len(self._row) + new
            if needed > len(self._matrix):
                self._resize(max(needed, int(len(self._matrix) * 1.25) + 1))
            for label, vec in zip(ids, vecs):
                row = self._row.setdefault(int(label), len(self._row))
                self._matrix[row] = vec
                self._ids[row] = label

    def delete(self, ids: Iterable[int]) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were present."""
        removed = 0
        with self._lock.write():
            self._check_open()
            for label in {int(i) for i in as_ids(ids)}:
                row = self._row.pop(label, None)
                if row is None:
                    continue
                last = len(self._row)  # the old last row, moved into the hole
                if row != last:
                    moved = int(self._ids[last])
                    self._matrix[row] = self._matrix[last]
                    self._ids[row] = moved
                    self._row[moved] = row
                removed += 1
            if len(self._matrix) > max(1024, 2 * len(self._row)):
                self._resize(max(16, int(len(self._row) * 1.25) + 1))
        return removed

    def _resize(self, rows: int) -> None:
        """Grow or shrink the matrix in place (write lock held; no views of it outlive a
        lock hold, which ``refcheck=False`` relies on)."""
        self._matrix.resize((rows, self.dim), refcheck=False)
        self._ids.resize(rows, refcheck=False)

    def count(self) -> int:
        """Number of vectors."""
        return len(self._row)

    def ids(self) -> np.ndarray:
        """The ids, sorted."""
        with self._lock.read():
            return np.sort(self._ids[: len(self._row)].copy())

    def __contains__(self, label: object) -> bool:
        return label in self._row

    def get(self, ids: Iterable[int]) -> np.ndarray:
        """The stored (normalised) vectors of ``ids``; KeyError if one is absent."""
        ids = as_ids(ids)
        with self._lock.read():
            self._check_open()
            rows = [self._row[int(i)] for i in ids]
            return self._matrix[rows].copy()

    def search(
        self, vectors: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by cosine similarity; same shapes and padding as HnswIndex.search."""
        single = np.asarray(vectors).ndim == 1
        queries = normalize(vectors, self.dim)
        with self._lock.read():
            self._check_open()
            n = len(self._row)
            ids = self._ids[:n]
            matrix = self._matrix[:n]
            if filter is not None and n:
                keep = np.fromiter((bool(filter(int(i))) for i in ids), dtype=bool, count=n)
                ids, matrix = ids[keep], matrix[keep]
            scores = queries @ matrix.T if len(ids) else np.zeros((len(queries), 0), np.float32)
            ids = ids.copy()
        rows = [topk(row, ids, int(k)) for row in scores]
        if single:
            return rows[0]
        return pad_rows(rows, min(max(int(k), 0), n))

    def save(self, path: Path | str, meta: Mapping[str, Any] | None = None) -> None:
        """Write an ``.npz`` (no pickle) and its sidecar atomically."""
        path = Path(path)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=self._ids[:n].copy(), vectors=self._matrix[:n].copy())

        with self._lock.read():
            self._check_open()
            n = len(self._row)
            save_atomically(path, write, make_sidecar(self.KIND, self.dim, n, meta))
        self.meta = dict(meta or {})

    def capacity(self) -> int:
        """Rows allocated."""
        return len(self._matrix)

    def wants_compaction(self) -> bool:
        """Always False: deletes leave no holes and the matrix shrinks as they happen."""
        return False

    def maybe_compact(self, cancel: Callable[[], bool] | None = None) -> bool:
        """Nothing to do (see :meth:`wants_compaction`); returns False."""
        return False

    def close(self) -> None:
        """Release memory; later calls raise :class:`StoreError`. Idempotent."""
        with self._lock.write():
            self._closed = True
            self._row = {}
            self._matrix = np.zeros((0, self.dim), dtype=np.float32)
            self._ids = np.zeros(0, dtype=np.int64)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the vector index is closed")
