"""Vector indexes: HnswIndex checked against the exact BruteForceIndex."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from mose_lsp.ann import (
    BruteForceIndex,
    HnswIndex,
    HnswParams,
    IndexFileError,
    VectorIndex,
    sidecar_path,
)
from mose_lsp.errors import StoreError

DIM = 16
KINDS = [HnswIndex, BruteForceIndex]


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make(kind: type, capacity: int = 16) -> VectorIndex:
    return kind.create(DIM, capacity)


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return len(set(got.tolist()) & set(want.tolist())) / max(1, len(want))


@pytest.mark.parametrize("kind", KINDS)
def test_add_search_finds_each_vector_first(kind: type) -> None:
    rng = np.random.default_rng(0)
    index = make(kind)
    vecs = unit(rng, 200)
    ids = np.arange(200, dtype=np.int64) * 7 + 3
    index.add(ids, vecs * 5.0)  # scaled: the index normalises
    assert isinstance(index, VectorIndex)
    assert index.count() == 200
    assert np.array_equal(index.ids(), np.sort(ids))
    got, scores = index.search(vecs[:50], k=1)
    assert got.shape == (50, 1)
    assert np.array_equal(got[:, 0], ids[:50])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_hnsw_matches_brute_force_oracle() -> None:
    rng = np.random.default_rng(1)
    hnsw, brute = make(HnswIndex), make(BruteForceIndex)
    vecs = unit(rng, 600)
    ids = rng.permutation(10_000)[:600].astype(np.int64)
    hnsw.add(ids, vecs)
    brute.add(ids, vecs)
    queries = unit(rng, 40)
    h_ids, h_scores = hnsw.search(queries, k=10)
    b_ids, b_scores = brute.search(queries, k=10)
    rec = np.mean([recall(h, b) for h, b in zip(h_ids, b_ids)])
    assert rec >= 0.98
    # Scores are cosines and agree where the ids agree.
    assert np.all(np.diff(h_scores, axis=1) <= 1e-6)
    for hi, hs, bi, bs in zip(h_ids, h_scores, b_ids, b_scores):
        common = dict(zip(bi.tolist(), bs.tolist()))
        for i, s in zip(hi.tolist(), hs.tolist()):
            if i in common:
                assert abs(common[i] - s) < 1e-5
        exact = queries[0] @ vecs.T
        assert np.all(np.abs(exact) <= 1.0 + 1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_delete_hides_ids_and_ignores_unknown(kind: type) -> None:
    rng = np.random.default_rng(2)
    index = make(kind)
    vecs = unit(rng, 100)
    index.add(np.arange(100), vecs)
    assert index.delete([1, 2, 3, 3, 12345]) == 3
    assert index.delete([1]) == 0
    assert index.count() == 97
    got, _ = index.search(vecs[1], k=97)
    assert len(got) == 97
    assert not {1, 2, 3} & set(got.tolist())
    with pytest.raises(KeyError):
        index.get([2])


@pytest.mark.parametrize("kind", KINDS)
def test_readding_an_id_replaces_its_vector(kind: type) -> None:
    rng = np.random.default_rng(3)
    index = make(kind)
    vecs = unit(rng, 50)
    index.add(np.arange(50), vecs)
    new = unit(rng, 2)
    index.add(np.array([7, 7]), new)  # repeated id in one batch: the last row wins
    assert index.count() == 50
    np.testing.assert_allclose(index.get([7])[0], new[1], atol=1e-6)
    got, scores = index.search(new[1], k=1)
    assert got.tolist() == [7] and scores[0] == pytest.approx(1.0, abs=1e-5)
    got, _ = index.search(vecs[7], k=50)
    assert got[0] != 7 or float(vecs[7] @ new[1]) > 0.99

    # A deleted id comes back with the new vector.
    index.delete([9])
    index.add(np.array([9]), new[:1])
    assert index.count() == 50
    np.testing.assert_allclose(index.get([9])[0], new[0], atol=1e-6)
    assert index.search(new[0], k=1)[0].tolist() == [9]


def test_hnsw_reuses_deleted_slots_without_label_confusion() -> None:
    rng = np.random.default_rng(4)
    index = HnswIndex.create(DIM, capacity=20)
    vecs = unit(rng, 60)
    index.add(np.arange(20), vecs[:20])
    capacity = index.capacity()
    index.delete(range(10))
    # New labels take the deleted slots: capacity does not grow.
    index.add(np.arange(100, 110), vecs[20:30])
    assert index.capacity() == capacity
    # Re-adding labels whose slots were taken, and labels still owning a deleted slot.
    index.add(np.arange(0, 10), vecs[30:40])
    assert index.count() == 30
    index.delete([100, 0])
    everything, _ = index.search(vecs[0], k=100)
    assert sorted(everything.tolist()) == sorted(set(range(1, 20)) | set(range(101, 110)))
    for label, row in [(5, 35), (105, 25), (15, 15)]:
        assert index.search(vecs[row], k=1)[0].tolist() == [label]


def test_random_operations_agree_with_oracle() -> None:
    """A long random sequence of adds, replacements and deletes: the HNSW index holds exactly
    the oracle's ids and vectors, and exhaustive searches rank the same ids."""
    rng = np.random.default_rng(5)
    hnsw = HnswIndex.create(DIM, capacity=16)
    brute = BruteForceIndex.create(DIM, capacity=16)
    for _ in range(60):
        op = rng.integers(3)
        if op < 2:
            ids = rng.integers(0, 150, size=int(rng.integers(1, 12)))
            vecs = unit(rng, len(ids))
            hnsw.add(ids, vecs)
            brute.add(ids, vecs)
        else:
            ids = rng.integers(0, 150, size=int(rng.integers(1, 12)))
            assert hnsw.delete(ids) == brute.delete(ids)
        assert np.array_equal(hnsw.ids(), brute.ids())
    ids = brute.ids()
    np.testing.assert_allclose(hnsw.get(ids), brute.get(ids), atol=1e-6)
    query = unit(rng, 1)[0]
    h_ids, h_scores = hnsw.search(query, k=len(ids))
    b_ids, b_scores = brute.search(query, k=len(ids))
    assert sorted(h_ids.tolist()) == sorted(b_ids.tolist())
    np.testing.assert_allclose(np.sort(h_scores), np.sort(b_scores), atol=1e-5)


def test_hnsw_grows_beyond_capacity() -> None:
    rng = np.random.default_rng(6)
    index = HnswIndex.create(DIM, capacity=16)
    vecs = unit(rng, 300)
    for start in range(0, 300, 37):
        index.add(np.arange(start, min(start + 37, 300)), vecs[start : start + 37])
    assert index.count() == 300
    assert index.capacity() >= 300
    got, _ = index.search(vecs, k=1)
    assert np.mean(got[:, 0] == np.arange(300)) >= 0.99


def test_compaction_frees_deleted_slots_and_keeps_ids_and_vectors() -> None:
    rng = np.random.default_rng(13)
    index = HnswIndex.create(DIM, 16, HnswParams(compact_min_deleted=40))
    oracle = BruteForceIndex.create(DIM)
    vecs = unit(rng, 400)
    index.add(np.arange(400), vecs)
    oracle.add(np.arange(400), vecs)
    index.delete(range(330))
    oracle.delete(range(330))
    assert index.deleted_count() == 330 and index.wants_compaction()
    grown = index.capacity()
    assert index.maybe_compact()
    assert index.deleted_count() == 0 and index.capacity() < grown / 3
    assert not index.maybe_compact()  # nothing left to give back
    assert np.array_equal(index.ids(), oracle.ids())
    np.testing.assert_allclose(index.get(oracle.ids()), oracle.get(oracle.ids()), atol=1e-6)
    query = unit(rng, 1)[0]
    got, scores = index.search(query, k=70)
    want, want_scores = oracle.search(query, k=70)
    assert got.tolist() == want.tolist()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # The compacted index keeps working: re-adding a deleted id, deleting, growing.
    index.add(np.array([5, 1000]), unit(rng, 2))
    assert index.count() == 72 and index.delete([331]) == 1
    # Below the threshold (deleted <= live, or <= compact_min_deleted) nothing happens.
    index.delete(range(332, 360))
    assert not index.maybe_compact()


def test_brute_force_memory_follows_the_live_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    index = BruteForceIndex.create(DIM, 16)
    vecs = unit(rng, 5000)
    index.add(np.arange(5000), vecs)
    assert 5000 <= index.capacity() <= 5000 * 1.25 + 17
    index.delete(range(100, 5000))
    assert index.capacity() <= 1024 + 16  # shrunk as the deletes happened
    assert index.ids().tolist() == list(range(100))
    np.testing.assert_allclose(index.get(range(100)), vecs[:100], atol=1e-6)
    assert index.search(vecs[42], k=1)[0].tolist() == [42]
    index.save(tmp_path / "b.npz")
    loaded = BruteForceIndex.load(tmp_path / "b.npz", DIM)
    loaded.add(np.arange(100, 3000), vecs[100:3000])  # grows the adopted arrays in place
    loaded.delete(range(10))
    assert loaded.ids().tolist() == list(range(10, 3000))
    np.testing.assert_allclose(loaded.get([10, 2999]), vecs[[10, 2999]], atol=1e-6)


def test_hnsw_params_are_validated_and_load_keeps_the_graphs_own(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        HnswParams(M=1)
    with pytest.raises(ValueError):
        HnswParams(growth=1.0)
    rng = np.random.default_rng(14)
    index = HnswIndex.create(DIM, 16, HnswParams(M=8, ef_construction=40))
    index.add(np.arange(50), unit(rng, 50))
    index.save(tmp_path / "g.idx")
    loaded = HnswIndex.load(tmp_path / "g.idx", DIM, HnswParams(ef_search=99))
    assert (loaded.params.M, loaded.params.ef_construction, loaded.params.ef_search) == (8, 40, 99)
    side = json.loads(sidecar_path(tmp_path / "g.idx").read_text())
    assert (side["M"], side["ef_construction"]) == (8, 40)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_index_and_k_beyond_count(kind: type) -> None:
    rng = np.random.default_rng(7)
    index = make(kind)
    ids, scores = index.search(unit(rng, 1)[0], k=5)
    assert ids.shape == (0,) and scores.shape == (0,)
    ids, scores = index.search(unit(rng, 3), k=5)
    assert ids.shape == (3, 0)
    vecs = unit(rng, 4)
    index.add(np.arange(4), vecs)
    ids, scores = index.search(vecs[0], k=50)
    assert sorted(ids.tolist()) == [0, 1, 2, 3]
    assert ids[0] == 0 and np.all(np.diff(scores) <= 1e-6)
    assert index.search(vecs[0], k=0)[0].shape == (0,)
    index.delete(range(4))
    assert index.search(vecs[0], k=3)[0].shape == (0,)


@pytest.mark.parametrize("kind", KINDS)
def test_filter_keeps_only_allowed_ids(kind: type) -> None:
    rng = np.random.default_rng(8)
    index, oracle = make(kind), make(BruteForceIndex)
    vecs = unit(rng, 300)
    index.add(np.arange(300), vecs)
    oracle.add(np.arange(300), vecs)
    query = unit(rng, 1)[0]

    def even(i: int) -> bool:
        return i % 2 == 0

    got, _ = index.search(query, k=10, filter=even)
    want, _ = oracle.search(query, k=10, filter=even)
    assert all(i % 2 == 0 for i in got.tolist())
    assert recall(got, want) >= 0.9
    # Fewer matches than k: exactly the matches come back, best first.
    few = {3, 150, 299}
    got, scores = index.search(query, k=10, filter=few.__contains__)
    want, want_scores = oracle.search(query, k=10, filter=few.__contains__)
    assert got.tolist() == want.tolist()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # Batched queries with a filter pad short rows with -1 / -inf.
    got, scores = index.search(unit(rng, 2), k=5, filter=few.__contains__)
    assert got.shape == (2, 5)
    assert np.all(got[:, 3:] == -1) and np.all(np.isneginf(scores[:, 3:]))
    assert index.search(query, k=5, filter=lambda i: False)[0].shape == (0,)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: type, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    index = make(kind)
    vecs = unit(rng, 120)
    index.add(np.arange(120), vecs)
    index.delete(range(0, 120, 3))
    path = tmp_path / "vectors.idx"
    index.save(path, meta={"generation": 7})
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (sidecar_path(path).stat().st_mode & 0o777) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    loaded = kind.load(path, DIM)
    assert loaded.meta == {"generation": 7}
    assert np.array_equal(loaded.ids(), index.ids())
    query = unit(rng, 5)
    assert np.array_equal(loaded.search(query, k=8)[0], index.search(query, k=8)[0])
    # Deleted ids stay deleted after a load, and can be re-added.
    assert 3 not in loaded.search(vecs[3], k=80)[0].tolist()
    loaded.add(np.array([3]), vecs[3:4])
    assert loaded.search(vecs[3], k=1)[0].tolist() == [3]
    assert loaded.count() == index.count() + 1


@pytest.mark.parametrize("kind", KINDS)
def test_load_refuses_damaged_files(kind: type, tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    index = make(kind)
    index.add(np.arange(40), unit(rng, 40))
    path = tmp_path / "v.idx"
    index.save(path)
    data = path.read_bytes()
    side = sidecar_path(path)
    good_side = side.read_text()

    with pytest.raises(IndexFileError, match="dimension"):
        kind.load(path, DIM + 1)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        kind.load(path, DIM)
    path.write_bytes(bytes(rng.integers(0, 256, size=len(data), dtype=np.uint8)))
    with pytest.raises(IndexFileError, match="checksum"):
        kind.load(path, DIM)
    path.write_bytes(data)
    side.write_text("{not json")
    with pytest.raises(IndexFileError):
        kind.load(path, DIM)
    side.write_text(json.dumps({**json.loads(good_side), "format": "other"}))
    with pytest.raises(IndexFileError):
        kind.load(path, DIM)
    side.unlink()
    with pytest.raises(IndexFileError, match="missing"):
        kind.load(path, DIM)
    side.write_text(good_side)
    assert kind.load(path, DIM).count() == 40


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_and_closed_index(kind: type) -> None:
    index = make(kind)
    with pytest.raises(ValueError):
        index.add(np.arange(2), np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        index.add(np.arange(2), np.full((2, DIM), np.nan, np.float32))
    with pytest.raises(ValueError):
        index.add(np.array([-1]), np.ones((1, DIM), np.float32))
    index.close()
    index.close()
    with pytest.raises(StoreError):
        index.search(np.ones(DIM, np.float32), k=1)


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_readers_and_writer(kind: type) -> None:
    """A writer adds, replaces, deletes and grows the index while readers search: no crash,
    and a search never returns an id deleted (for good) before it started."""
    rng = np.random.default_rng(11)
    index = kind.create(DIM, 16)
    if kind is HnswIndex:
        index = HnswIndex.create(DIM, 16, HnswParams(compact_min_deleted=16))
    pool = unit(rng, 64)
    index.add(np.arange(64), pool)
    last = {i: pool[i] for i in range(64)}  # id -> the vector the writer wrote last
    dead: list[int] = []  # ids deleted and never re-added, appended after the delete
    dead_lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        wrng = np.random.default_rng(12)
        try:
            next_id = 64
            for step in range(150):
                batch = np.arange(next_id, next_id + 8)
                next_id += 8
                vecs, again = unit(wrng, 8), unit(wrng, 1)
                index.add(batch, vecs)
                index.add(np.array([int(batch[0])]), again)  # replace
                last.update(zip(batch.tolist(), vecs))
                last[int(batch[0])] = again[0]
                victims = [int(batch[1]), int(batch[2])]
                index.delete(victims)
                with dead_lock:
                    dead.extend(victims)
                if step % 40 == 39:
                    index.delete(range(next_id - 40, next_id - 20))  # a burst of deletes
                    with dead_lock:
                        dead.extend(range(next_id - 40, next_id - 20))
                    index.maybe_compact()
        except BaseException as err:  # noqa: BLE001 - reported to the main thread
            errors.append(err)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        rrng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                with dead_lock:
                    gone = set(dead)
                query = unit(rrng, 1)[0]
                ids, scores = index.search(query, k=20)
                assert not gone & set(ids.tolist())
                assert np.all(np.isfinite(scores))
                ids, _ = index.search(query, k=5, filter=lambda i: i % 3 == 0)
                assert not gone & set(ids.tolist())
                assert all(i % 3 == 0 for i in ids.tolist())
        except BaseException as err:  # noqa: BLE001 - reported to the main thread
            errors.append(err)

    def compactor() -> None:
        # Compactions alongside the writer and the readers (HNSW); the brute-force index
        # only shrinks its matrix.
        try:
            while not stop.is_set():
                if isinstance(index, HnswIndex):
                    index.compact()
                else:
                    index.maybe_compact()
        except BaseException as err:  # noqa: BLE001 - reported to the main thread
            errors.append(err)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    threads += [threading.Thread(target=writer), threading.Thread(target=compactor)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert set(index.ids().tolist()).isdisjoint(dead)
    # What the writer left is exactly there, with the vectors it wrote last.
    oracle_ids = sorted(set(range(64 + 150 * 8)) - set(dead))
    assert index.ids().tolist() == oracle_ids
    np.testing.assert_allclose(index.get(oracle_ids), np.stack([last[i] for i in oracle_ids]),
                               atol=1e-6)
    assert index.count() == 64 + 150 * 8 - len(set(dead))
