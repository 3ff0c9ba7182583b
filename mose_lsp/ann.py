"""Vector indexes behind one narrow interface: create/load/add/delete/search/count/ids/save/close.

Two implementations:

- :class:`HnswIndex` wraps hnswlib (space ``"ip"``). Vectors are L2-normalised on the way in, so
  ``score = 1 - distance`` is the cosine similarity.
- :class:`BruteForceIndex` keeps a numpy matrix and scores every row. It is exact, which makes it
  the oracle in tests and a fine choice for small workspaces.

Thread safety. hnswlib's own rules (its README): ``add_items`` must not run concurrently with
``knn_query``, and ``resize_index`` with nothing at all. Both classes guard every call into the
backing structure with a readers-writer lock (:class:`RWLock`): searches, ``get``, ``ids`` and
``save`` share the read side (hnswlib allows concurrent ``knn_query`` calls), while ``add``,
``delete``, resizing, changing ``ef`` and ``close`` take the write side alone. Writers are
preferred, so a steady stream of queries cannot starve the background indexer. The lock costs a
few microseconds per call, nothing next to a graph search. :meth:`HnswIndex.compact` builds its
new graph batch by batch under the read side while queries and writes go on, and swaps it in
under the write side after catching up with the writes made meanwhile.

Memory. hnswlib allocates ``max_elements`` slots up front, but only the slots it has filled are
touched (and count in RSS); the index starts small and grows by ``HnswParams.growth``. Deleted
vectors keep their slot (new ids reuse it), so an index whose ids mostly moved elsewhere (the
store's "fresh" index once the background pass has deep vectors) would hold the memory of its
peak size: :meth:`HnswIndex.maybe_compact` rebuilds the graph from its live vectors once
deleted slots outnumber live ones (and ``HnswParams.compact_min_deleted``). Each compaction
costs as many inserts as there are live vectors, fewer than the deletes since the last one, so
its cost per delete is bounded.

On disk. An index is two files: the index itself (hnswlib's binary format, or a numpy ``.npz``
read with ``allow_pickle=False``) and a JSON sidecar ``<path>.json`` holding the format, the
dimension, the live count, the labels marked deleted, the file's size and SHA-256, plus any
caller metadata (the store records the SQLite generation it reflects). Nothing is pickled.
``load`` checks the sidecar and the checksum before handing bytes to hnswlib, so a truncated or
garbage file is reported as :class:`IndexFileError` instead of crashing the process. ``save``
writes both files to temporaries and renames them into place, removing the old sidecar first:
after a crash at any point either both files agree or the sidecar is missing, and a missing
sidecar makes ``load`` fail cleanly (the caller rebuilds).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import StoreError

SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "mose-vector-index"
SIDECAR_VERSION = 1

IdFilter = Callable[[int], bool]
"""Keeps a candidate when it returns True for the candidate's id."""

_KNN_SHORT = "contiguous 2D array"  # hnswlib's message when it found fewer than k results


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


# ----------------------------------------------------------------------------- helpers


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


def _as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    if (arr < 0).any():
        raise ValueError("ids must be non-negative")
    return arr


def _dedupe_last(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last row for each repeated id (a later add of the same id wins)."""
    if len(np.unique(ids)) == len(ids):
        return ids, vectors
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - first_in_reversed)
    return ids[keep], vectors[keep]


def _topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` (id, score) pairs by descending score; ties broken by smaller id."""
    if k <= 0 or len(ids) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    k = min(k, len(ids))
    part = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
    order = np.lexsort((ids[part], -scores[part]))
    best = part[order]
    return ids[best].astype(np.int64), scores[best].astype(np.float32)


def _pad_rows(
    rows: list[tuple[np.ndarray, np.ndarray]], width: int
) -> tuple[np.ndarray, np.ndarray]:
    width = max([width, *(len(r[0]) for r in rows)])
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
    for i, (row_ids, row_scores) in enumerate(rows):
        ids[i, : len(row_ids)] = row_ids
        scores[i, : len(row_scores)] = row_scores
    return ids, scores


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def sidecar_path(path: Path | str) -> Path:
    """The JSON sidecar that describes the index file at ``path``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path | str) -> dict[str, Any]:
    """Read and validate the sidecar of the index saved at ``path``.

    Raises :class:`IndexFileError` when it is missing, unreadable, not JSON, or not ours.
    """
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise IndexFileError(f"{side} is missing") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFileError(f"{side} is unreadable: {err}") from err
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise IndexFileError(f"{side} is not a mose vector index sidecar")
    if data.get("version") != SIDECAR_VERSION:
        raise IndexFileError(f"{side} has version {data.get('version')!r}, expected {SIDECAR_VERSION}")
    for key, kind in (("kind", str), ("dim", int), ("count", int), ("size", int), ("sha256", str)):
        if not isinstance(data.get(key), kind):
            raise IndexFileError(f"{side} lacks a valid {key!r}")
    if not isinstance(data.get("meta", {}), dict):
        raise IndexFileError(f"{side} has a malformed 'meta'")
    return data


def _check_file(path: Path, info: Mapping[str, Any], kind: str, dim: int) -> None:
    if info["kind"] != kind:
        raise IndexFileError(f"{path} holds a {info['kind']!r} index, expected {kind!r}")
    if info["dim"] != dim:
        raise IndexFileError(f"{path} holds vectors of dimension {info['dim']}, expected {dim}")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise IndexFileError(f"{path} is missing or unreadable: {err}") from err
    if size != info["size"]:
        raise IndexFileError(f"{path} has {size} bytes, its sidecar says {info['size']} (truncated?)")
    if _file_sha256(path) != info["sha256"]:
        raise IndexFileError(f"{path} does not match the checksum in its sidecar (corrupt)")


def _save_atomically(
    path: Path, write_data: Callable[[Path], None], sidecar: dict[str, Any]
) -> None:
    """Write the data file and its sidecar with temp files + os.replace; files are 0600."""
    path = Path(path)
    side = sidecar_path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp_side = side.with_name(f".{side.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write_data(tmp)
        os.chmod(tmp, 0o600)
        _fsync_path(tmp)
        sidecar = {**sidecar, "size": tmp.stat().st_size, "sha256": _file_sha256(tmp)}
        fd = os.open(tmp_side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(sidecar, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        # Remove the old sidecar first: a crash between the two renames leaves no sidecar
        # (load fails and the caller rebuilds) rather than a sidecar describing other data.
        side.unlink(missing_ok=True)
        os.replace(tmp, path)
        os.replace(tmp_side, side)
        _fsync_path(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)


def _sidecar(kind: str, dim: int, count: int, meta: Mapping[str, Any] | None, **extra: Any) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "kind": kind,
        "dim": dim,
        "count": count,
        "meta": dict(meta or {}),
        **extra,
    }


# ----------------------------------------------------------------------------- HNSW


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
        _check_file(path, info, cls.KIND, dim)
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
        ids = _as_ids(ids)
        vecs = normalize(vectors, self.dim) if len(ids) else np.zeros((0, self.dim), np.float32)
        if len(vecs) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(vecs)} vectors")
        if not len(ids):
            return
        ids, vecs = _dedupe_last(ids, vecs)
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
        ids = _as_ids(ids)
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
        ids = _as_ids(ids)
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
        return _pad_rows(rows, min(max(int(k), 0), len(self._live)))

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
                if _KNN_SHORT not in str(err):
                    raise
            # Fewer than k reachable matches: answer each row exactly from the matching ids.
            allowed = [i for i in sorted(self._live) if filter is None or filter(i)]
            if not allowed:
                return [empty for _ in queries]
            allowed_ids = np.array(allowed, dtype=np.int64)
            matrix = _get_items(index, allowed_ids, self.dim)
        scores = queries @ matrix.T
        return [_topk(row, allowed_ids, k) for row in scores]

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
            sidecar = _sidecar(self.KIND, self.dim, len(self._live), meta, deleted=deleted,
                               M=self.params.M, ef_construction=self.params.ef_construction)
            _save_atomically(path, lambda tmp: index.save_index(str(tmp)), sidecar)
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


# ----------------------------------------------------------------------------- brute force


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
        _check_file(path, info, cls.KIND, dim)
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
        ids = _as_ids(ids)
        vecs = normalize(vectors, self.dim) if len(ids) else np.zeros((0, self.dim), np.float32)
        if len(vecs) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(vecs)} vectors")
        ids, vecs = _dedupe_last(ids, vecs)
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
            for label in {int(i) for i in _as_ids(ids)}:
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
        ids = _as_ids(ids)
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
        rows = [_topk(row, ids, int(k)) for row in scores]
        if single:
            return rows[0]
        return _pad_rows(rows, min(max(int(k), 0), n))

    def save(self, path: Path | str, meta: Mapping[str, Any] | None = None) -> None:
        """Write an ``.npz`` (no pickle) and its sidecar atomically."""
        path = Path(path)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=self._ids[:n].copy(), vectors=self._matrix[:n].copy())

        with self._lock.read():
            self._check_open()
            n = len(self._row)
            _save_atomically(path, write, _sidecar(self.KIND, self.dim, n, meta))
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
