"""The workspace store: SQLite is the source of truth, the vector indexes rebuildable caches.

Layout of an index folder (created 0700; every file in it 0600)::

    store.sqlite3 (+ -wal, -shm)   files, chunks, vectors of every exit, meta   (truth)
    deep.hnsw  + deep.hnsw.json    HNSW over the deep (rerank-exit) vectors     (cache)
    fresh.hnsw + fresh.hnsw.json   HNSW over the shallow vectors of the chunks  (cache)
                                   that have no deep vector yet

The package holds one job per module:

- ``schema``: tables, migrations, and the model a store was built with;
- ``records``: the values that cross the boundary (chunks in, records and counts out);
- ``database``: connections, transactions, generations, error mapping;
- ``writes`` and ``reads``: files, chunks and vectors;
- ``vector_cache``: the deep and fresh vector indexes (partitions, load, repair, compaction);
- ``fulltext``: BM25 search over FTS5;
- ``paths``: where an index lives;
- ``store``: :class:`Store`, which puts them together (build one with :meth:`Store.open`).
"""

from .database import DB_NAME, DEEP, FRESH, PARTITIONS
from .fulltext import LEXICAL_SPLIT_MIN
from .paths import default_index_dir, remove_index
from .records import (
    ChunkLike,
    ChunkRecord,
    ChunkRow,
    FileMeta,
    FileMetaLike,
    FileState,
    PendingChunk,
    ReplaceResult,
    StoreStats,
)
from .schema import SCHEMA_VERSION
from .store import Store
from .vector_cache import ANN_FILES

__all__ = [
    "ANN_FILES", "DB_NAME", "DEEP", "FRESH", "LEXICAL_SPLIT_MIN", "PARTITIONS", "SCHEMA_VERSION",
    "ChunkLike", "ChunkRecord", "ChunkRow", "FileMeta", "FileMetaLike", "FileState",
    "PendingChunk", "ReplaceResult", "Store", "StoreStats", "default_index_dir", "remove_index",
]
