"""The two vector indexes over the chunks: partitions, loading, repair, compaction, saving.

Two vector indexes partition the chunks. Candidates should come from the best vector a chunk
has: once the background pass has given a chunk its deep vector, the chunk is found through
the **deep** index (query with the rerank exit, :meth:`Store.search_deep`); a new or edited
chunk waiting for that pass is found through the **fresh** index over its shallow vector (query
with the index exit, :meth:`Store.search_fresh`). Each chunk is in at most one of them (in none
only while it lacks the vector it needs, e.g. after a model change), so the two together cost
the memory of one index over all chunks. The rule, which a rebuild applies to SQLite:

- deep  = chunks with a rerank-exit vector;
- fresh = chunks with an index-exit vector and no rerank-exit vector.

``put_vectors`` at the rerank exit moves chunks from fresh to deep; ``replace_file`` puts new
chunks into fresh (reused chunks keep their place); deleting chunks removes them from both.
Without a distinct rerank exit (``rerank_exit`` None or equal to ``index_exit``), or when
opened with ``deep_index=False``, there is no deep index and fresh holds every index-exit
vector, searched with :meth:`Store.search_fresh`.

Memory. An HNSW index keeps the slot of a deleted vector (new ids reuse it), so after a first
scan has put every chunk into fresh and the background pass has moved them to deep, fresh
would still hold a full graph. When deletes leave an index with more deleted slots than live
ones, a background thread compacts it (``HnswIndex.compact``: a new graph of the live vectors,
built while searches and writes go on) and the next flush saves the smaller file. The peak is
therefore about one and a half full graphs, during the first deep pass, and one afterwards.

Consistency of the caches. Every write transaction that changes a partition bumps that
partition's ``generation_<name>`` (and the overall ``generation``) in the same transaction. The
indexes are updated after the commit, under the same writer lock, and saved only by
:meth:`Store.flush` (on close, or from the indexer's idle loop via :meth:`Store.maybe_flush`):
saving a large graph on every edit would cost too much. Each index is saved alone, when its
own generation moved, with a sidecar recording its partition, the exits and model it reflects,
the store's ``store_id`` and its generation. On open, per index:

- sidecar or checksum damaged, or another partition rule, model, exit, store or HNSW graph
  parameters: **rebuilt** from SQLite (logged; :attr:`Store.recovery` says why);
- same generation as the database: **loaded**, after checking that its ids equal the ids the
  rule selects in SQLite (repaired if not);
- older generation (a crash, or a kill, since the last save): **repaired**: the saved graph is
  kept, ids no longer selected are deleted, missing ones added, and the vector of every id
  present in both is compared with SQLite and re-added where it differs. That is a linear read
  of the partition's vectors plus graph work for the changes only, so a background pass that
  saves every minute or so never makes a restart rebuild the large deep index.

After any crash each index is therefore exactly its partition of the database. A save is
atomic per file (``ann.py``); a crash between saving the two indexes leaves each file
consistent with its own generation.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ann import BruteForceIndex, HnswIndex, IdFilter, IndexFileError, VectorIndex, normalize
from ..errors import StoreError
from .database import DEEP, FRESH, PARTITIONS, Database, Txn, log
from .sql import batches, marks

ANN_FILES = {
    HnswIndex.KIND: {DEEP: "deep.hnsw", FRESH: "fresh.hnsw"},
    BruteForceIndex.KIND: {DEEP: "deep.npz", FRESH: "fresh.npz"},
}
_MIN_CAPACITY = 256  # slots a new index starts with; it grows geometrically


class VectorCacheMixin(Database):
    """The in-memory vector indexes, kept equal to their partitions of the database."""

    @property
    def partitions(self) -> tuple[str, ...]:
        """The vector indexes this store keeps: ``("deep", "fresh")``, or ``("fresh",)``."""
        return PARTITIONS if self.deep_exit is not None else (FRESH,)

    def index_path(self, partition: str) -> Path:
        """The file of a vector index (its sidecar is ``<path>.json``)."""
        return self.index_dir / ANN_FILES[self._ann_kinds[partition]][partition]

    @property
    def deep_ann(self) -> VectorIndex | None:
        """The in-memory deep index (rerank-exit vectors), None without one. Read it only."""
        self._check_open()
        return self._anns.get(DEEP)

    @property
    def fresh_ann(self) -> VectorIndex:
        """The in-memory fresh index (index-exit vectors of chunks without a deep vector, or
        of every chunk without a deep index). Read it only."""
        self._check_open()
        return self._anns[FRESH]

    def _exit_of(self, partition: str) -> int:
        if partition == DEEP:
            assert self.deep_exit is not None
            return self.deep_exit
        return self.index_exit

    def _partition_sql(self, partition: str, columns: str) -> tuple[str, tuple[int, ...]]:
        """SELECT ``columns`` (of ``vectors v``) for the chunks the partition's rule selects,
        by chunk id. A vector of the wrong size counts as absent everywhere."""
        layer = self._exit_of(partition)
        sql = (f"SELECT {columns} FROM vectors v WHERE v.exit_layer = ? "
               "AND length(v.vector) = ?")
        params: tuple[int, ...] = (layer, 4 * self.dims[layer])
        if partition == FRESH and self.deep_exit is not None:
            sql += (" AND NOT EXISTS (SELECT 1 FROM vectors d WHERE d.chunk_id = v.chunk_id "
                    "AND d.exit_layer = ? AND length(d.vector) = ?)")
            params += (self.deep_exit, 4 * self.dims[self.deep_exit])
        return sql + " ORDER BY v.chunk_id", params

    def _partition_ids(self, conn: sqlite3.Connection, partition: str) -> np.ndarray:
        sql, params = self._partition_sql(partition, "v.chunk_id")
        return np.fromiter((r[0] for r in conn.execute(sql, params)), dtype=np.int64)

    def _members(self, conn: sqlite3.Connection, ids: Iterable[int]) -> dict[str, set[int]]:
        """Which of ``ids`` each partition's rule selects in the database now."""
        out: dict[str, set[int]] = {part: set() for part in self.partitions}
        deep = self.deep_exit if self.deep_exit is not None else -1
        sbytes = 4 * self.dims[self.index_exit]
        dbytes = 4 * self.dims.get(deep, 0)
        for part in batches(list(dict.fromkeys(int(i) for i in ids))):
            for cid, has_deep, has_shallow in conn.execute(
                "SELECT c.id, EXISTS (SELECT 1 FROM vectors d WHERE d.chunk_id = c.id AND "
                "d.exit_layer = ? AND length(d.vector) = ?), EXISTS (SELECT 1 FROM vectors s "
                "WHERE s.chunk_id = c.id AND s.exit_layer = ? AND length(s.vector) = ?) "
                f"FROM chunks c WHERE c.id IN ({marks(len(part))})",
                (deep, dbytes, self.index_exit, sbytes, *part),
            ):
                if has_deep and self.deep_exit is not None:
                    out[DEEP].add(cid)
                elif has_shallow:
                    out[FRESH].add(cid)
        return out

    def _identity(self, partition: str) -> dict[str, Any]:
        """What a saved index must have been built for to be usable (its sidecar meta, less
        the generation)."""
        identity: dict[str, Any] = {
            "partition": partition,
            "store_id": self._store_id,
            "model_id": self.model_id,
            "exit": self._exit_of(partition),
            "without_exit": self.deep_exit if partition == FRESH else None,
        }
        if self._ann_kinds[partition] == HnswIndex.KIND:
            identity["M"] = self._hnsw_params.M
            identity["ef_construction"] = self._hnsw_params.ef_construction
        return identity

    def _new_ann(self, partition: str, capacity: int) -> VectorIndex:
        dim = self.dims[self._exit_of(partition)]
        capacity = max(_MIN_CAPACITY, capacity)
        if self._ann_kinds[partition] == HnswIndex.KIND:
            return HnswIndex.create(dim, capacity, self._hnsw_params)
        return BruteForceIndex.create(dim, capacity)

    def _load_ann(self, partition: str) -> VectorIndex:
        dim = self.dims[self._exit_of(partition)]
        if self._ann_kinds[partition] == HnswIndex.KIND:
            return HnswIndex.load(self.index_path(partition), dim, self._hnsw_params)
        return BruteForceIndex.load(self.index_path(partition), dim)

    def _load_or_rebuild_anns(self) -> None:
        # Files this open will not maintain (a deep index without a deep exit, an index of
        # another kind) are removed, so that a later open that wants them rebuilds them
        # rather than trusting them.
        for part in PARTITIONS:
            for kind, names in ANN_FILES.items():
                if part not in self.partitions or kind != self._ann_kinds[part]:
                    self._remove_index_files(self.index_dir / names[part])
        reasons = []
        for part in self.partitions:
            self.recovery[part] = self._load_or_rebuild(part)
            if self.recovery[part] != "loaded":
                reasons.append(f"{part} index {self.recovery[part]}")
        self.rebuild_reason = "; ".join(reasons) or None
        self._last_save = time.monotonic()
        self._schedule_compaction()

    def _remove_index_files(self, path: Path) -> None:
        for file in (path, path.with_name(path.name + ".json")):
            try:
                file.unlink(missing_ok=True)
            except OSError as err:
                log.warning("%s: cannot remove %s: %s", self.index_dir, file, err)

    def _load_or_rebuild(self, partition: str) -> str:
        """Load, repair or rebuild one index; returns what happened (see :attr:`recovery`)."""
        conn = self._writer()
        reason: str | None = None
        ann: VectorIndex | None = None
        try:
            ann = self._load_ann(partition)
        except IndexFileError as err:
            reason = str(err)
        if ann is not None:
            meta, expected = ann.meta, self._identity(partition)
            diff = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
            if diff or not isinstance(meta.get("generation"), int):
                reason = "it was built for something else (saved, current): " + (", ".join(
                    f"{k} {a!r}, {b!r}" for k, (a, b) in diff.items()) or "no generation")
                ann.close()
                ann = None
        if ann is not None:
            saved = int(ann.meta["generation"])
            stale = saved != self._gens[partition]
            try:
                removed, added, replaced = self._reconcile(conn, partition, ann, stale)
            except (RuntimeError, MemoryError, ValueError, KeyError) as err:
                reason = f"repairing it failed: {err}"
                ann.close()
                ann = None
        if ann is None:
            log.info("%s: rebuilding the %s vector index from the database: %s",
                     self.index_dir, partition, reason)
            self._anns[partition] = self._build_ann(partition)
            self._save_ann(partition)
            return f"rebuilt: {reason}"
        self._anns[partition] = ann
        if not stale and not (removed or added):
            self._saved[partition] = saved
            return "loaded"
        # The in-memory index now equals the database; the file does not until flush().
        self._saved[partition] = None
        what = (f"saved at generation {saved}, database at {self._gens[partition]}; "
                f"{removed} removed, {added} added, {replaced} replaced")
        log.info("%s: repaired the %s vector index: %s", self.index_dir, partition, what)
        return f"repaired: {what}"

    def _reconcile(
        self, conn: sqlite3.Connection, partition: str, ann: VectorIndex, check_vectors: bool
    ) -> tuple[int, int, int]:
        """Make ``ann`` hold exactly the partition's vectors in the database.

        Ids the rule no longer selects are deleted, missing ids added. With ``check_vectors``
        the vector of every id in both is compared (batch by batch) and re-added where it
        differs. Returns (removed, added, replaced).
        """
        layer = self._exit_of(partition)
        dim = self.dims[layer]
        truth = self._partition_ids(conn, partition)
        have = ann.ids()
        gone = np.setdiff1d(have, truth, assume_unique=True)
        missing = np.setdiff1d(truth, have, assume_unique=True)
        replaced = 0
        if check_vectors:
            common = np.intersect1d(truth, have, assume_unique=True)
            for part in batches(common.tolist(), 4096):
                stored = self._fetch_vectors(conn, layer, part)
                ids = [cid for cid in part if cid in stored]
                if not ids:
                    continue
                want = normalize(np.stack([stored[cid] for cid in ids]), dim)
                differ = np.any(np.abs(ann.get(ids) - want) > 1e-6, axis=1)
                if differ.any():
                    fix = np.asarray(ids, dtype=np.int64)[differ]
                    ann.add(fix, want[differ])
                    replaced += len(fix)
        if len(gone):
            ann.delete(gone)
        for part in batches(missing.tolist(), 4096):
            stored = self._fetch_vectors(conn, layer, part)
            if stored:
                ann.add(np.fromiter(stored, dtype=np.int64, count=len(stored)),
                        np.stack(list(stored.values())))
        return len(gone), len(missing), replaced

    def _fetch_vectors(
        self, conn: sqlite3.Connection, layer: int, ids: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """Vectors of ``layer`` for ``ids`` (of the right size), read with ``conn``."""
        nbytes = 4 * self.dims[layer]
        out: dict[int, np.ndarray] = {}
        for part in batches(list(ids)):
            for cid, blob in conn.execute(
                "SELECT chunk_id, vector FROM vectors WHERE exit_layer = ? AND chunk_id IN "
                f"({marks(len(part))})", (layer, *part)):
                if len(blob) == nbytes:
                    out[cid] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return out

    def _build_ann(self, partition: str) -> VectorIndex:
        conn = self._writer()
        dim = self.dims[self._exit_of(partition)]
        count_sql, params = self._partition_sql(partition, "COUNT(*)")
        count = conn.execute(count_sql.replace(" ORDER BY v.chunk_id", ""), params).fetchone()[0]
        ann = self._new_ann(partition, int(count * 1.25))
        sql, params = self._partition_sql(partition, "v.chunk_id, v.vector")
        cursor = conn.execute(sql, params)
        while rows := cursor.fetchmany(4096):
            ids = np.array([cid for cid, _ in rows], dtype=np.int64)
            vecs = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4")
            ann.add(ids, vecs.reshape(len(rows), dim))
        return ann

    def _save_ann(self, partition: str) -> None:
        ann = self._anns[partition]
        meta = {**self._identity(partition), "generation": self._gens[partition]}
        try:
            ann.save(self.index_path(partition), meta)
        except OSError as err:
            log.warning("%s: could not save the %s vector index (%s); it will be repaired or "
                        "rebuilt on the next open", self.index_dir, partition, err)
            return
        self._saved[partition] = self._gens[partition]
        self._last_save = time.monotonic()

    def _apply(self, plan: Plan) -> None:
        """Mirror a committed change into the vector indexes (writer lock held). Deep goes
        first, so a chunk moving from fresh to deep is never in neither."""
        deleted = False
        for part in self.partitions:
            removed, ids, vectors = plan.deletes[part], plan.add_ids[part], plan.add_vectors[part]
            if not removed and not ids:
                continue
            ann = self._anns[part]
            try:
                if removed:
                    ann.delete(sorted(removed))
                    deleted = True
                if ids:
                    ann.add(np.asarray(ids, dtype=np.int64), np.stack(vectors))
            except (RuntimeError, MemoryError, ValueError) as err:
                log.warning("%s: updating the %s vector index failed (%s); rebuilding it",
                            self.index_dir, part, err)
                ann.close()
                self._anns[part] = self._build_ann(part)
        if deleted:
            self._schedule_compaction()

    def compact(self, cancel: Callable[[], bool] | None = None) -> list[str]:
        """Give back the memory of deleted vectors now: rebuild each index whose deleted slots
        outnumber its live vectors (see ``HnswIndex.compact``). Runs alongside searches and
        writes (from any thread); the smaller graph is saved by the next flush. Returns the
        partitions compacted.

        Writes start this in a background thread when needed (typically while the background
        pass moves chunks from the fresh to the deep index), so callers need not.
        """
        done = []
        for part, ann in list(self._anns.items()):
            if ann.maybe_compact(cancel):
                done.append(part)
                with self._write_lock:
                    if not self._closed and self._anns.get(part) is ann:
                        self._saved[part] = None  # save the smaller graph at the next flush
        return done

    def _schedule_compaction(self) -> None:
        """Start the background compaction if an index wants one and none is running (the
        running one re-checks before it ends, under the same lock, so no request is lost)."""
        with self._compactor_lock:
            if self._compactor is not None or self._closing or not self._wants_compaction():
                return
            self._compactor = threading.Thread(target=self._compact_worker,
                                               name="mose-store-compact", daemon=True)
            self._compactor.start()

    def _wants_compaction(self) -> bool:
        return any(ann.wants_compaction() for ann in list(self._anns.values()))

    def _compact_worker(self) -> None:
        try:
            while True:
                try:
                    self.compact(cancel=lambda: self._closing)
                except StoreError:
                    pass  # the store or an index was closed meanwhile
                except (RuntimeError, MemoryError, ValueError) as err:
                    log.warning("%s: compacting a vector index failed (%s); it keeps its old "
                                "graph", self.index_dir, err)
                    with self._compactor_lock:
                        self._compactor = None
                    return
                with self._compactor_lock:
                    try:
                        again = not self._closing and self._wants_compaction()
                    except StoreError:
                        again = False
                    if not again:
                        self._compactor = None  # in the same hold as the check
                        return
        except BaseException:
            with self._compactor_lock:
                self._compactor = None
            raise

    def _plan(
        self,
        before: Mapping[str, set[int]],
        after: Mapping[str, set[int]],
        written: Mapping[int, Mapping[int, np.ndarray]],
        txn: Txn,
    ) -> Plan:
        """What changes in each index, from partition membership before and after a write
        (inside its transaction) and the vectors it wrote (exit -> id -> vector). Bumps the
        generation of each partition that changes."""
        plan = Plan()
        for part in self.partitions:
            was, now = before.get(part, set()), after.get(part, set())
            new_vectors = written.get(self._exit_of(part), {})
            plan.deletes[part] = was - now
            for cid in sorted(now):
                if cid not in was or cid in new_vectors:
                    vec = new_vectors.get(cid)
                    if vec is None:  # entered the partition without a new vector: read it
                        vec = self._fetch_vectors(self._writer(), self._exit_of(part),
                                                  [cid])[cid]
                    plan.add_ids[part].append(cid)
                    plan.add_vectors[part].append(vec)
            if plan.deletes[part] or plan.add_ids[part]:
                txn.bump(part)
        return plan

    def flush(self) -> bool:
        """Save each vector index that changed since its last save; returns whether it saved.

        Call on idle and before exit (``close`` does). If another process wrote to the database
        meanwhile, the in-memory indexes are not what the database holds and are not saved (the
        next open repairs them).
        """
        with self._errors(), self._write_lock:
            self._check_open()
            todo = [part for part in self.partitions
                    if self._saved.get(part) != self._gens[part]
                    or not self.index_path(part).exists()]
            if not todo:
                return False
            current = self._read_generation(self._writer())
            if current != self._generation:
                log.warning("%s: another process changed the index (generation %d, expected "
                            "%d); not saving the vector indexes", self.index_dir, current,
                            self._generation)
                return False
            for part in todo:
                self._save_ann(part)
            return all(self._saved.get(part) == self._gens[part] for part in todo)

    def maybe_flush(self, min_interval_s: float = 60.0) -> bool:
        """:meth:`flush` if there are unsaved changes and the last save is older than
        ``min_interval_s`` seconds (for periodic saves from an idle loop, such as during the
        background deep pass: it bounds what a repair after a crash has to redo)."""
        if not self.dirty or time.monotonic() - self._last_save < min_interval_s:
            return False
        return self.flush()

    def sync(self) -> bool:
        """Catch up with what other processes committed: when the database's generation is
        not the one the in-memory vector indexes reflect, make each index hold exactly its
        partition again (ids only: a chunk id is never reused, so its vectors never change).
        Returns whether anything had moved. One small read when nothing did: searches call it
        before asking the vector indexes, and a writer after taking the index's writer lock
        (``mose_lsp.service.lock``), so that what it saves is what the database holds."""
        with self._errors():
            if self._read_generation(self._reader()) == self._generation:
                return False
            with self._write_lock:
                self._check_open()
                conn = self._writer()
                conn.execute("BEGIN")  # one snapshot: generations and partitions agree
                try:
                    if self._read_generation(conn) == self._generation:
                        return False
                    self._read_generations(conn)
                    for part in self.partitions:
                        self._reconcile(conn, part, self._anns[part], False)
                finally:
                    conn.execute("COMMIT")
        self._schedule_compaction()
        return True

    @property
    def dirty(self) -> bool:
        """Whether a vector index changed since it was last saved."""
        return any(self._saved.get(part) != self._gens.get(part) for part in self.partitions)

    @property
    def generation(self) -> int:
        """Bumped by every committed change to either vector index's partition."""
        return self._generation

    def search_deep(
        self, vector: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest chunks to a rerank-exit ("deep") query vector among the chunks that have a
        deep vector (cosine of the deep vectors), best first, as ``(ids int64, scores
        float32)``. Empty arrays when the store has no deep index (:attr:`deep_exit` None).

        ``filter(chunk_id) -> bool`` restricts candidates (build one from :meth:`chunk_ids`).
        Ids may refer to chunks deleted a moment ago (:meth:`get_chunks` leaves those out), and
        a chunk moving to the deep index may for a moment be found by :meth:`search_fresh`
        too: merge the two lists by id.
        """
        ann = self._anns.get(DEEP) if not self._closed else None
        if ann is None:
            self._check_open()
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return ann.search(np.asarray(vector, dtype=np.float32), k, filter)

    def search_fresh(
        self, vector: np.ndarray, k: int, filter: IdFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest chunks to an index-exit ("shallow") query vector among the chunks that have
        no deep vector yet (every chunk when the store has no deep index), by the cosine of
        their shallow vectors; same shapes, filter and caveats as :meth:`search_deep`.

        Together the two searches cover every chunk that has the vector its partition needs.
        Their scores come from different exits and are not comparable: re-rank the union
        (the fresh candidates with deep vectors computed on the fly) rather than merging by
        score.
        """
        return self.fresh_ann.search(np.asarray(vector, dtype=np.float32), k, filter)


class Plan:
    """Changes to apply to the vector indexes after a commit, by partition."""

    def __init__(self) -> None:
        self.deletes: dict[str, set[int]] = {part: set() for part in PARTITIONS}
        self.add_ids: dict[str, list[int]] = {part: [] for part in PARTITIONS}
        self.add_vectors: dict[str, list[np.ndarray]] = {part: [] for part in PARTITIONS}
