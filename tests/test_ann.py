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
    pool = unit(rng, 64)
    index.add(np.arange(64), pool)
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
                index.add(batch, unit(wrng, 8))
                index.add(np.array([int(batch[0])]), unit(wrng, 1))  # replace
                victims = [int(batch[1]), int(batch[2])]
                index.delete(victims)
                with dead_lock:
                    dead.extend(victims)
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

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert index.count() == 64 + 150 * 6
