"""``HnswIndex``: hnswlib's graph (space ``"ip"`` on L2-normalised vectors, so ``1 - distance``
is the cosine), grown geometrically and compacted when deletes dominate."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .base import (
    KNN_SHORT,
    IdFilter,
    IndexFileError,
    RWLock,
    add_batch,
    as_ids,
    normalize,
    pad_rows,
    topk,
)
from .files import check_file, make_sidecar, read_sidecar, save_atomically, sidecar_path

_GET_BATCH = 256  # hnswlib's get_items builds nested lists: ~10x the array's size, transiently
_COMPACT_BATCH = 1024  # vectors a compaction copies per hold of the read lock


def _get_items(index: Any, ids: np.ndarray, dim: int) -> np.ndarray:
    """``index.get_items(ids)`` as one float32 (N, dim) array, fetched in small batches."""
    out = np.empty((len(ids), dim), dtype=np.float32)
    for start in range(0, len(ids), _GET_BATCH):
        part = ids[start : start + _GET_BATCH]
        out[start : start + len(part)] = index.get_items(part, return_type="numpy")
    return out


@dataclass(frozen=True)
class HnswParams:
    """Build and search parameters for :class:`HnswIndex`.

    Defaults measured on real embeddings: all-MiniLM-L6-v2 exits (layers 2 and 6, 384 dims) of
    13k code chunks, 1.5k queries (CoSQA questions and held-out chunks), recall@10 against
    exact search, single-thread build CPU time:

    ===================  =========  =========  =========  =========
    M / ef_construction  build 13k  ef 64      ef 100     ef 200
    ===================  =========  =========  =========  =========
    16 / 64              1.0 s      .968-.981  .983-.991  .993-.996
    16 / 100 (default)   1.5 s      .984-.985  .993       .998
    16 / 200             2.8 s      .988       .995-.996  .998-.999
    ===================  =========  =========  =========  =========

    At 91k vectors (seven random rotations of that set) 16 / 100 still gives .992-.993 at
    ef 100, building in 9-13 s of CPU (16 / 200: 17-22 s). Hence ef_construction 100 (half the
    build time of 200, which matters for rebuilds and compactions) and a query floor of
    ef 100. Normalised random vectors are far harder (recall@10 ~.35 at ef 64) and are not
    what the index holds: do not tune on them.
    """

    M: int = 16  # graph degree: higher = better recall, more memory (~8*M bytes per vector)
    ef_construction: int = 100  # candidate list while inserting: higher = better graph, slower add
    ef_search: int = 100  # floor for the query candidate list; a query uses max(2k, ef_search)
    seed: int = 100  # random seed for level assignment (reproducible graphs)
    growth: float = 1.5  # capacity multiplier when the index is full
    num_threads: int = -1  # threads for add_items (-1: all cores); queries use one thread
    compact_min_deleted: int = 1024  # maybe_compact rebuilds once deleted slots exceed this and
    #                                  the live count

    def __post_init__(self) -> None:
        if self.M < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise ValueError(f"invalid HNSW parameters: {self}")
        if self.growth <= 1.0:
            raise ValueError(f"growth must be > 1, got {self.growth}")


class HnswIndex:
    """An hnswlib index of L2-normalised float32 vectors scored by cosine similarity.

    Re-adding an id replaces its vector (hnswlib updates the element in place; a deleted id is
    un-deleted first). New ids reuse the slots of deleted ones (``allow_replace_deleted``), so
    a long editing session does not grow the graph without bound. The set of live ids is kept
    in Python: hnswlib has no call that says whether a label is deleted.

    A query searches with ``ef = max(2k, params.ef_search)``. hnswlib's ``ef`` is one value for
    the whole index, so it is changed under the write lock and only ever raised: a later query
    with a smaller ``k`` searches a little wider than needed, never narrower.
    """

    KIND = "hnsw"

    def __init__(self, index: Any, dim: int, live: set[int], params: HnswParams) -> None:
        """Use :meth:`create` or :meth:`load`."""
        self.dim = dim
        self.params = params
        self._index: Any = index
        self._live = live
        self._ef = params.ef_search
        self._index.set_ef(self._ef)
        self._lock = RWLock()
        self._compacting = threading.Lock()  # one compaction at a time
        self._touched: set[int] | None = None  # ids added while a compaction builds its graph
        self.meta: dict[str, Any] = {}  # caller metadata read back by load() or written by save()

    @staticmethod
    def _hnswlib() -> Any:
        try:
            import hnswlib
        except ImportError as err:  # pragma: no cover - hnswlib is a runtime dependency
            raise StoreError("hnswlib is not installed: pip install hnswlib") from err
        return hnswlib

    @classmethod
    def create(cls, dim: int, capacity: int = 1024, params: HnswParams | None = None) -> HnswIndex:
        """An empty index for ``dim``-dimensional vectors with room for ``capacity`` of them."""
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        params = params or HnswParams()
        return cls(cls._new_graph(dim, capacity, params), dim, set(), params)

    @classmethod
    def _new_graph(cls, dim: int, capacity: int, params: HnswParams) -> Any:
        index = cls._hnswlib().Index(space="ip", dim=dim)
        index.init_index(
            max_elements=max(16, int(capacity)),
            M=params.M,
            ef_construction=params.ef_construction,
            random_seed=params.seed,
            allow_replace_deleted=True,
        )
        return index

    @classmethod
    def load(cls, path: Path | str, dim: int, params: HnswParams | None = None) -> HnswIndex:
        """Load an index written by :meth:`save`; raises :class:`IndexFileError` if unusable.

        The graph keeps the ``M`` and ``ef_construction`` it was built with (hnswlib stores
        them in the file); ``params.M`` and ``params.ef_construction`` of the loaded index say
        so, the other fields come from ``params``.
        """
        path = Path(path)
        info = read_sidecar(path)
        check_file(path, info, cls.KIND, dim)
        deleted = info.get("deleted")
        if not isinstance(deleted, list) or not all(isinstance(x, int) for x in deleted):
            raise IndexFileError(f"{sidecar_path(path)} lacks the list of deleted labels")
        params = params or HnswParams()
        built = {k: info[k] for k in ("M", "ef_construction") if isinstance(info.get(k), int)}
        params = replace(params, **built)
        index = cls._hnswlib().Index(space="ip", dim=dim)
        try:
            index.load_index(str(path), allow_replace_deleted=True)
        except (RuntimeError, MemoryError, ValueError) as err:
            raise IndexFileError(f"hnswlib could not load {path}: {err}") from err
        labels = {int(x) for x in index.get_ids_list()}
        live = labels - set(deleted)
        if len(live) != info["count"] or not set(deleted) <= labels:
            raise IndexFileError(
                f"{path} holds {len(live)} live vectors, its sidecar says {info['count']}"
            )
        out = cls(index, dim, live, params)
        out.meta = dict(info.get("meta", {}))
        return out

    # -- writes

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace the vectors of ``ids`` (int64, shape (N,)); vectors (N, dim)."""
        ids, vecs = add_batch(ids, vectors, self.dim)
        if not len(ids):
            return
        with self._lock.write():
            index = self._require()
            self._add_to(index, self._live, ids, vecs)
            if self._touched is not None:
                self._touched.update(int(i) for i in ids)

    def _add_to(self, index: Any, live: set[int], ids: np.ndarray, vecs: np.ndarray) -> None:
        """Insert or replace (unique) ``ids`` in the hnswlib ``index`` whose live labels are
        ``live`` (updated); write lock held or ``index`` private."""
        existing = np.array([int(i) in live for i in ids], dtype=bool)
        for pos in np.flatnonzero(~existing):
            # A label may still own a deleted slot: un-delete it so add_items updates it in
            # place. Adding it with replace_deleted=True instead could move it into another
            # vacant slot and leave the old slot carrying the same label.
            try:
                index.unmark_deleted(int(ids[pos]))
                existing[pos] = True
            except RuntimeError as err:
                if "not deleted" in str(err):
                    existing[pos] = True  # live in hnswlib already: update it
                # "Label not found": a genuinely new label
        threads = self.params.num_threads
        if existing.any():
            index.add_items(vecs[existing], ids[existing], num_threads=threads)
            live.update(int(i) for i in ids[existing])
        new = ~existing
        n_new = int(new.sum())
        if n_new:
            vacant = index.element_count - len(live)
            needed = index.element_count + max(0, n_new - vacant)
            if needed > index.max_elements:
                grown = int(index.max_elements * self.params.growth) + 1
                index.resize_index(max(needed, grown))
            index.add_items(vecs[new], ids[new], num_threads=threads, replace_deleted=True)
            live.update(int(i) for i in ids[new])

    def delete(self, ids: Iterable[int]) -> int:
        """Mark ``ids`` deleted; ids not in the index are ignored. Returns how many were live."""
        ids = as_ids(ids)
        removed = 0
        with self._lock.write():
            index = self._require()
            for label in {int(i) for i in ids}:
                if label in self._live:
                    index.mark_deleted(label)
                    self._live.discard(label)
                    removed += 1
        return removed

    # -- reads

    def count(self) -> int:
        """Number of live (not deleted) vectors."""
        return len(self._live)

    def ids(self) -> np.ndarray:
        """The live ids, sorted."""
        with self._lock.read():
            return np.array(sorted(self._live), dtype=np.int64)

    def __contains__(self, label: object) -> bool:
        return label in self._live

    def get(self, ids: Iterable[int]) -> np.ndarray:
        """The stored (normalised) vectors of live ``ids``, shape (N, dim); KeyError if absent."""
        ids = as_ids(ids)
        with self._lock.read():
            index = self._require()
            missing = [int(i) for i in ids if int(i) not in self._live]
            if missing:
                raise KeyError(f"ids not in the index: {missing[:10]}")
            if not len(ids):
                return np.zeros((0, self.dim), dtype=np.float32)
            return _get_items(index, ids, self.dim)

    def search(
        self, vectors: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live ids by cosine similarity, best first.

        ``vectors`` of shape (dim,) gives 1-D ``ids`` (int64) and ``scores`` (float32); shape
        (Q, dim) gives (Q, min(k, count)) arrays, padded with id -1 and score -inf where a row
        found fewer (only possible with a ``filter``). ``k`` is clamped to the live count, so an empty
        index returns empty arrays. ``filter(id) -> bool`` keeps candidates during the graph
        walk; when the walk cannot find ``k`` matches the row falls back to an exact scan of
        the matching ids.
        """
        single = np.asarray(vectors).ndim == 1
        queries = normalize(vectors, self.dim)
        rows = self._search_rows(queries, k, filter)
        if single:
            return rows[0]
        return pad_rows(rows, min(max(int(k), 0), len(self._live)))

    def _search_rows(
        self, queries: np.ndarray, k: int, filter: IdFilter | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        self._require()
        k = min(int(k), len(self._live))
        if k <= 0:
            return [empty for _ in queries]
        self._ensure_ef(max(2 * k, self.params.ef_search))
        out: list[tuple[np.ndarray, np.ndarray]] = []
        with self._lock.read():
            index = self._require()
            k = min(k, len(self._live))
            if k <= 0:
                return [empty for _ in queries]
            try:
                labels, dist = index.knn_query(queries, k=k, num_threads=1, filter=filter)
                for row_labels, row_dist in zip(labels, dist):
                    out.append((row_labels.astype(np.int64), (1.0 - row_dist).astype(np.float32)))
                return out
            except RuntimeError as err:
                if KNN_SHORT not in str(err):
                    raise
            # Fewer than k reachable matches: answer each row exactly from the matching ids.
            allowed = [i for i in sorted(self._live) if filter is None or filter(i)]
            if not allowed:
                return [empty for _ in queries]
            allowed_ids = np.array(allowed, dtype=np.int64)
            matrix = _get_items(index, allowed_ids, self.dim)
        scores = queries @ matrix.T
        return [topk(row, allowed_ids, k) for row in scores]

    def _ensure_ef(self, ef: int) -> None:
        # ef is global to the hnswlib index, so it changes under the write lock, and only grows
        # (a smaller k then searches a little wider than it must, never narrower).
        if ef <= self._ef:
            return
        with self._lock.write():
            if ef > self._ef:
                self._require().set_ef(ef)
                self._ef = ef

    # -- persistence

    def save(self, path: Path | str, meta: Mapping[str, Any] | None = None) -> None:
        """Write the index and its sidecar atomically (temp files, then ``os.replace``).

        ``meta`` (JSON-serialisable) is stored in the sidecar and read back as ``.meta``.
        """
        path = Path(path)
        with self._lock.read():
            index = self._require()
            deleted = sorted({int(x) for x in index.get_ids_list()} - self._live)
            sidecar = make_sidecar(self.KIND, self.dim, len(self._live), meta, deleted=deleted,
                               M=self.params.M, ef_construction=self.params.ef_construction)
            save_atomically(path, lambda tmp: index.save_index(str(tmp)), sidecar)
        self.meta = dict(meta or {})

    def capacity(self) -> int:
        """Slots allocated (live + deleted + free)."""
        with self._lock.read():
            return int(self._require().max_elements)

    def deleted_count(self) -> int:
        """Slots held by deleted vectors (reused by later adds, freed by :meth:`compact`)."""
        with self._lock.read():
            return int(self._require().element_count) - len(self._live)

    def wants_compaction(self) -> bool:
        """Whether deleted slots outnumber both the live vectors and
        ``params.compact_min_deleted`` (then :meth:`compact` gives memory back)."""
        return self.deleted_count() > max(len(self._live), self.params.compact_min_deleted)

    def maybe_compact(self, cancel: Callable[[], bool] | None = None) -> bool:
        """:meth:`compact` if :meth:`wants_compaction`; returns whether it compacted."""
        return self.wants_compaction() and self.compact(cancel)

    def compact(self, cancel: Callable[[], bool] | None = None) -> bool:
        """Rebuild the graph from the live vectors only, freeing the deleted slots.

        Ids and vectors stay the same. Runs alongside queries *and* writes: the new graph is
        built from a snapshot of the live ids, batch by batch under the read side of the lock,
        while adds and deletes go on against the old graph; ids added or replaced meanwhile
        are recorded, and under the write side the new graph catches up with them (and with
        deletes) before it replaces the old one. Costs one insert per live vector. Returns
        False, changing nothing, when another compaction is running, when ``cancel()``
        returns True between batches, or when the index was closed meanwhile.
        """
        if not self._compacting.acquire(blocking=False):
            return False
        try:
            with self._lock.write():
                snapshot = np.array(sorted(self._live), dtype=np.int64)
                self._touched = set()
            graph_live: set[int] = set()
            graph = self._new_graph(self.dim, int(len(snapshot) * self.params.growth) + 1,
                                    self.params)
            for start in range(0, len(snapshot), _COMPACT_BATCH):
                if cancel is not None and cancel():
                    return False
                with self._lock.read():
                    if self._index is None:
                        return False
                    part = np.array([i for i in snapshot[start : start + _COMPACT_BATCH]
                                     if int(i) in self._live], dtype=np.int64)
                    vecs = _get_items(self._index, part, self.dim)
                # The new graph is private to this thread: fill it outside the lock.
                graph.add_items(vecs, part, num_threads=self.params.num_threads)
                graph_live.update(int(i) for i in part)
            with self._lock.write():
                if self._index is None:
                    return False
                # Catch up: ids added or replaced during the build get their current vector,
                # ids deleted during it are deleted.
                redo = np.array(sorted(i for i in self._live
                                       if i in self._touched or i not in graph_live),
                                dtype=np.int64)
                if len(redo):
                    self._add_to(graph, graph_live, redo, _get_items(self._index, redo, self.dim))
                for label in graph_live - self._live:
                    graph.mark_deleted(label)
                graph.set_ef(self._ef)
                self._index = graph
            return True
        finally:
            with self._lock.write():
                self._touched = None
            self._compacting.release()

    def close(self) -> None:
        """Release the index; later calls raise :class:`StoreError`. Idempotent."""
        with self._lock.write():
            self._index = None
            self._live = set()

    def _require(self) -> Any:
        if self._index is None:
            raise StoreError("the vector index is closed")
        return self._index
