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

Modules: ``base`` (the interface, lock and shared helpers), ``files`` (sidecars and atomic
saves), ``hnsw`` and ``brute`` (the two implementations).
"""

from .base import IdFilter, IndexFileError, RWLock, VectorIndex, normalize
from .brute import BruteForceIndex
from .files import SIDECAR_FORMAT, SIDECAR_SUFFIX, SIDECAR_VERSION, read_sidecar, sidecar_path
from .hnsw import HnswIndex, HnswParams

__all__ = [
    "SIDECAR_FORMAT",
    "SIDECAR_SUFFIX",
    "SIDECAR_VERSION",
    "BruteForceIndex",
    "HnswIndex",
    "HnswParams",
    "IdFilter",
    "IndexFileError",
    "RWLock",
    "VectorIndex",
    "normalize",
    "read_sidecar",
    "sidecar_path",
]
