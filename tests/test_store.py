"""The workspace store: SQLite as truth, the vector index as a cache rebuilt when in doubt."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from mose_lsp.ann import sidecar_path
from mose_lsp.errors import StoreError
from mose_lsp.store import (
    ChunkRow,
    FileMeta,
    Store,
    default_index_dir,
    remove_index,
)

SHALLOW, DEEP = 2, 8
DIMS = {SHALLOW: 16, DEEP: 24}
MODEL = "test-model@sha256:aaaa"
REPO = Path(__file__).resolve().parents[1]


def embed(text: str, layer: int) -> np.ndarray:
    """A deterministic stand-in for an exit: a unit vector seeded by the text."""
    seed = int.from_bytes(hashlib.sha256(f"{layer}:{text}".encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).normal(size=DIMS[layer]).astype(np.float32)
    return v / np.linalg.norm(v)


def rows_for(texts: list[str], language: str = "python") -> list[ChunkRow]:
    rows, line, byte = [], 0, 0
    for i, text in enumerate(texts):
        n_lines = text.count("\n") + 1
        rows.append(ChunkRow(
            symbol=f"sym{i}", kind="function", language=language, start_line=line,
            end_line=line + n_lines - 1, start_byte=byte, end_byte=byte + len(text.encode()),
            content_hash=hashlib.sha256(text.encode()).hexdigest()[:16], text=text))
        line += n_lines + 1
        byte += len(text.encode()) + 1
    return rows


def meta_for(texts: list[str], language: str = "python") -> FileMeta:
    body = "\n".join(texts).encode()
    return FileMeta(size=len(body), mtime_ns=len(body) * 1000,
                    content_hash=hashlib.sha256(body).hexdigest(), language=language)


def put_file(store: Store, path: str, texts: list[str], language: str = "python"):
    rows = rows_for(texts, language)
    vecs = np.stack([embed(t, SHALLOW) for t in texts]) if texts else None
    return store.replace_file(path, meta_for(texts, language), rows, vecs)


def fill_deep(store: Store) -> int:
    done = 0
    while pending := store.chunks_missing_vectors(DEEP, 7):
        ids = [p.chunk_id for p in pending]
        done += store.put_vectors(DEEP, ids, np.stack([embed(p.text, DEEP) for p in pending]))
    return done


def open_store(path: Path, **kw) -> Store:
    args = {"dims": DIMS, "index_exit": SHALLOW, "rerank_exit": DEEP, "model_id": MODEL, **kw}
    return Store.open(path, **args)


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path / "index")
    yield s
    s.close()


def snapshot(store: Store) -> dict:
    """Everything observable, keyed by content rather than by id."""
    chunks = {}
    for f in store.all_files():
        for c in store.file_chunks(f.path):
            key = (c.path, c.start_line, c.content_hash)
            chunks[key] = (c.symbol, c.kind, c.language, c.end_line, c.start_byte, c.end_byte,
                           c.text)
    vectors = {}
    for f in store.all_files():
        recs = store.file_chunks(f.path)
        for layer in DIMS:
            got = store.get_vectors(layer, [c.id for c in recs])
            for c in recs:
                if c.id in got:
                    vectors[(c.path, c.start_line, c.content_hash, layer)] = got[c.id].tobytes()
    files = {f.path: (f.size, f.mtime_ns, f.content_hash, f.language, f.skip_code)
             for f in store.all_files()}
    return {"files": files, "chunks": chunks, "vectors": vectors}


def assert_ann_matches_sqlite(store: Store) -> None:
    """The vector index holds exactly the index-exit vectors stored in SQLite."""
    all_ids = [c.id for f in store.all_files() for c in store.file_chunks(f.path)]
    truth = store.get_vectors(SHALLOW, all_ids)
    assert sorted(truth) == store.ann.ids().tolist()
    if truth:
        ids = sorted(truth)
        np.testing.assert_allclose(store.ann.get(ids), np.stack([truth[i] for i in ids]),
                                   atol=1e-6)


def exact_top(store: Store, query: np.ndarray, k: int) -> list[int]:
    all_ids = [c.id for f in store.all_files() for c in store.file_chunks(f.path)]
    truth = store.get_vectors(SHALLOW, all_ids)
    return sorted(truth, key=lambda i: -float(truth[i] @ query))[:k]


# ----------------------------------------------------------------------------- basics


def test_replace_file_then_search_finds_it(store: Store) -> None:
    texts = ["def parse(x):\n    return x", "def render(y):\n    return y", "class A: pass"]
    result = put_file(store, "src/a.py", texts)
    assert len(result.chunk_ids) == 3 and result.added == result.chunk_ids
    put_file(store, "src/b.py", ["def other(): pass"])
    ids, scores = store.search_shallow(embed(texts[1], SHALLOW), k=2)
    assert ids[0] == result.chunk_ids[1] and scores[0] == pytest.approx(1.0, abs=1e-5)
    [rec] = store.get_chunks([int(ids[0])])
    assert (rec.path, rec.symbol, rec.language, rec.text) == ("src/a.py", "sym1", "python",
                                                             texts[1])
    assert (rec.start_line, rec.end_line) == (3, 4)
    state = store.file_state("src/a.py")
    assert state is not None and not state.skipped and state.language == "python"
    assert store.file_state("nope.py") is None
    assert [f.path for f in store.all_files()] == ["src/a.py", "src/b.py"]
    assert store.get_chunks([999, result.chunk_ids[0]])[0].id == result.chunk_ids[0]
    stats = store.stats()
    assert (stats.files, stats.chunks, stats.index_count) == (2, 4, 4)
    assert stats.vectors == {SHALLOW: 4} and stats.deep_coverage == 0.0
    assert stats.bytes_on_disk > 0


def test_editing_one_chunk_keeps_the_others_and_their_deep_vectors(store: Store) -> None:
    texts = ["def a(): return 1", "def b(): return 2", "def c(): return 3"]
    first = put_file(store, "m.py", texts)
    assert fill_deep(store) == 3
    deep_before = store.get_vectors(DEEP, first.chunk_ids)
    gen = store.generation

    edited = ["def a(): return 1", "def b(): return 20", "def c(): return 3"]
    second = put_file(store, "m.py", ["# header"] + edited)  # also shifts every line
    a_id, b_old, c_id = first.chunk_ids
    assert second.reused == [a_id, c_id]
    assert second.removed == [b_old]
    assert len(second.added) == 2 and b_old not in second.chunk_ids
    assert second.chunk_ids[1] == a_id and second.chunk_ids[3] == c_id
    assert store.generation > gen
    deep_after = store.get_vectors(DEEP, second.chunk_ids)
    assert set(deep_after) == {a_id, c_id}
    for cid in (a_id, c_id):
        np.testing.assert_array_equal(deep_after[cid], deep_before[cid])
    # Reused chunks moved: their positions follow the new file.
    [a_rec] = store.get_chunks([a_id])
    assert a_rec.start_line == 2
    assert store.get_chunks([b_old]) == []
    assert b_old not in store.ann.ids().tolist()
    assert [p.chunk_id for p in store.chunks_missing_vectors(DEEP, 10)] == second.added
    assert_ann_matches_sqlite(store)


def test_reused_chunk_rows_may_be_zero(store: Store) -> None:
    texts = ["def a(): pass", "def b(): pass"]
    first = put_file(store, "z.py", texts)
    new_texts = texts + ["def c(): pass"]
    known = store.chunk_hashes("z.py")
    rows = rows_for(new_texts)
    vecs = np.stack([np.zeros(DIMS[SHALLOW], np.float32) if r.content_hash in known
                     else embed(r.text, SHALLOW) for r in rows])
    result = store.replace_file("z.py", meta_for(new_texts), rows, vecs)
    assert result.reused == first.chunk_ids
    np.testing.assert_allclose(store.get_vectors(SHALLOW, first.chunk_ids)[first.chunk_ids[0]],
                               embed(texts[0], SHALLOW))
    bad = np.zeros((4, DIMS[SHALLOW]), np.float32)
    with pytest.raises(ValueError, match="new"):
        store.replace_file("z.py", meta_for(new_texts + ["x"]), rows_for(new_texts + ["x"]), bad)
    assert [c.text for c in store.file_chunks("z.py")] == new_texts  # rolled back
    assert_ann_matches_sqlite(store)


def test_delete_and_rename(store: Store) -> None:
    a = put_file(store, "a.py", ["def a1(): pass", "def a2(): pass"])
    b = put_file(store, "b.py", ["def b1(): pass"])
    fill_deep(store)
    deep = store.get_vectors(DEEP, a.chunk_ids)

    assert store.rename_file("a.py", "pkg/renamed.py")
    assert store.file_state("a.py") is None
    assert [c.id for c in store.file_chunks("pkg/renamed.py")] == a.chunk_ids
    assert all(c.path == "pkg/renamed.py" for c in store.get_chunks(a.chunk_ids))
    for cid, vec in store.get_vectors(DEEP, a.chunk_ids).items():
        np.testing.assert_array_equal(vec, deep[cid])
    assert store.search_shallow(embed("def a2(): pass", SHALLOW), 1)[0].tolist() == [
        a.chunk_ids[1]]
    assert not store.rename_file("missing.py", "x.py")

    # Renaming onto an existing path replaces that file.
    assert store.rename_file("pkg/renamed.py", "b.py")
    assert store.get_chunks(b.chunk_ids) == []
    assert sorted(store.ann.ids().tolist()) == sorted(a.chunk_ids)

    assert store.delete_file("b.py")
    assert not store.delete_file("b.py")
    assert store.get_chunks(a.chunk_ids) == []
    assert store.ann.count() == 0
    assert store.search_shallow(embed("def a1(): pass", SHALLOW), 5)[0].size == 0
    assert store.stats().vectors == {}


def test_record_skip_drops_chunks_and_is_cleared_by_indexing(store: Store) -> None:
    put_file(store, "big.py", ["def big(): pass"])
    store.record_skip("big.py", FileMeta(10**9, 1, "h", "python"), "too-large",
                      "1 GB is over the 1 MB limit")
    state = store.file_state("big.py")
    assert state is not None and state.skipped and state.skip_code == "too-large"
    assert store.file_chunks("big.py") == [] and store.ann.count() == 0
    store.record_skip("blob.bin", FileMeta(5, 1, "h2", None), "binary", "binary file")
    stats = store.stats()
    assert stats.skipped == {"too-large": 1, "binary": 1} and stats.indexed_files == 0
    put_file(store, "big.py", ["def small(): pass"])
    assert not store.file_state("big.py").skipped
    assert store.stats().skipped == {"binary": 1}


def test_filters_paths_and_put_vectors_edge_cases(store: Store) -> None:
    py = put_file(store, "src/x.py", ["def x(): pass"])
    js = put_file(store, "web/y.js", ["function y() {}"], language="javascript")
    allowed = store.chunk_ids(path_glob="web/*")
    assert allowed == set(js.chunk_ids)
    assert store.chunk_ids(languages=["python"]) == set(py.chunk_ids)
    assert store.chunk_ids(languages=[]) == set()
    ids, _ = store.search_shallow(embed("def x(): pass", SHALLOW), 5, filter=allowed.__contains__)
    assert ids.tolist() == js.chunk_ids
    with pytest.raises(ValueError):
        put_file(store, "/abs/path.py", ["x"])
    with pytest.raises(ValueError):
        put_file(store, "../outside.py", ["x"])
    assert store.file_state(Path("src") / "x.py") is not None
    # A vector for a chunk deleted meanwhile is dropped, not an error.
    store.delete_file("src/x.py")
    assert store.put_vectors(DEEP, py.chunk_ids, embed("x", DEEP)[None, :]) == 0
    with pytest.raises(ValueError):
        store.put_vectors(99, js.chunk_ids, np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError):
        store.put_vectors(DEEP, js.chunk_ids, np.zeros((1, 3), np.float32))


# ----------------------------------------------------------------------------- consistency


def test_edit_sequence_equals_fresh_build(tmp_path: Path) -> None:
    """Random edits, renames, skips and deletes, with deep fills in between, end in the same
    state as a fresh store built from the final files; the vector index mirrors SQLite, also
    after reopening."""
    rng = np.random.default_rng(0)
    vocab = [f"def f{i}(x):\n    return x + {i}" for i in range(40)]
    workspace: dict[str, list[str]] = {}
    store = open_store(tmp_path / "edited")
    for step in range(80):
        op = rng.integers(10)
        paths = sorted(workspace)
        if op < 6 or not paths:
            path = f"pkg/m{rng.integers(8)}.py"
            texts = [vocab[int(i)] for i in rng.integers(0, 40, size=rng.integers(0, 6))]
            workspace[path] = texts
            put_file(store, path, texts)
        elif op < 7:
            old = paths[int(rng.integers(len(paths)))]
            new = f"pkg/m{rng.integers(8)}.py"
            store.rename_file(old, new)
            workspace[new] = workspace.pop(old)
        elif op < 8:
            path = paths[int(rng.integers(len(paths)))]
            store.delete_file(path)
            del workspace[path]
        elif op < 9:
            path = paths[int(rng.integers(len(paths)))]
            store.record_skip(path, meta_for(["skipped"]), "too-large", "too large")
            workspace[path] = None  # type: ignore[assignment]
        else:
            fill_deep(store)
        if step % 20 == 19:
            assert_ann_matches_sqlite(store)
    fill_deep(store)
    assert_ann_matches_sqlite(store)

    fresh = open_store(tmp_path / "fresh")
    for path, texts in sorted(workspace.items()):
        if texts is None:
            fresh.record_skip(path, meta_for(["skipped"]), "too-large", "too large")
        else:
            put_file(fresh, path, texts)
    fill_deep(fresh)
    assert snapshot(store) == snapshot(fresh)
    query = embed(vocab[3], SHALLOW)
    k = min(5, store.ann.count())
    assert sorted(store.search_shallow(query, k)[1].tolist()) == pytest.approx(
        sorted(fresh.search_shallow(query, k)[1].tolist()), abs=1e-5)

    before = snapshot(store)
    store.close()
    fresh.close()
    reopened = open_store(tmp_path / "edited")
    assert reopened.rebuild_reason is None  # the cache saved on close is used as is
    assert snapshot(reopened) == before
    assert_ann_matches_sqlite(reopened)
    reopened.close()


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage", "sidecar", "stale"])
def test_damaged_vector_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    index_dir = tmp_path / "index"
    store = open_store(index_dir)
    texts = [f"def g{i}(): return {i}" for i in range(30)]
    put_file(store, "g.py", texts)
    store.close()
    ann_path = index_dir / "shallow.hnsw"
    old_bin, old_side = ann_path.read_bytes(), sidecar_path(ann_path).read_bytes()
    if damage == "stale":
        # The cache saved before later edits: it reflects an older generation.
        store = open_store(index_dir)
        put_file(store, "g.py", texts[:10] + ["def changed(): pass"])
        put_file(store, "h.py", ["def h(): pass"])
        store.close()
        ann_path.write_bytes(old_bin)
        sidecar_path(ann_path).write_bytes(old_side)
    elif damage == "deleted":
        ann_path.unlink()
    elif damage == "truncated":
        ann_path.write_bytes(old_bin[: len(old_bin) // 3])
    elif damage == "garbage":
        ann_path.write_bytes(os.urandom(len(old_bin)))
    elif damage == "sidecar":
        sidecar_path(ann_path).write_text("]] not json")

    store = open_store(index_dir)
    assert store.rebuild_reason
    assert_ann_matches_sqlite(store)
    for text in ["def g5(): return 5", "def h(): pass", "def g20(): return 20"]:
        query = embed(text, SHALLOW)
        assert store.search_shallow(query, 3)[0].tolist() == exact_top(store, query, 3)
    store.close()
    # The rebuilt cache was saved: the next open loads it.
    again = open_store(index_dir)
    assert again.rebuild_reason is None
    again.close()


CRASH_SCRIPT = """
import hashlib, os, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from tests.test_store import open_store, put_file
from pathlib import Path
store = open_store(Path(sys.argv[1]))
put_file(store, "a.py", ["def a(): pass", "def b(): pass"])
store.flush()
put_file(store, "a.py", ["def a(): pass", "def b2(): pass"])
put_file(store, "c.py", ["def c(): pass"])
store.delete_file("a.py")
put_file(store, "d.py", ["def d(): pass"])
os._exit(0)  # crash: no close, no flush
"""


def test_crash_after_commits_rebuilds_a_correct_index(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH_SCRIPT), str(index_dir),
                    str(REPO)], check=True, cwd=REPO, timeout=60)
    store = open_store(index_dir)
    assert store.rebuild_reason and "generation" in store.rebuild_reason
    assert [f.path for f in store.all_files()] == ["c.py", "d.py"]
    assert_ann_matches_sqlite(store)
    ids, _ = store.search_shallow(embed("def d(): pass", SHALLOW), 5)
    assert [c.symbol for c in store.get_chunks(ids)] == ["sym0", "sym0"]
    assert {c.path for c in store.get_chunks(ids)} == {"c.py", "d.py"}
    store.close()


# ----------------------------------------------------------------------------- open / errors


def test_corrupt_database_raises_actionable_store_error(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    open_store(index_dir).close()
    (index_dir / "store.sqlite3").write_bytes(b"this is not a database" * 500)
    with pytest.raises(StoreError) as info:
        open_store(index_dir)
    message = str(info.value)
    assert str(index_dir) in message and "mose index --rebuild" in message
    # What `mose index --rebuild` does: remove the store's files, then open afresh.
    (index_dir / "notes.txt").write_text("not ours")
    assert remove_index(index_dir)
    assert [p.name for p in index_dir.iterdir()] == ["notes.txt"]
    store = open_store(index_dir)
    assert store.stats().files == 0
    store.close()


def test_damaged_database_pages_raise_store_error(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    store = open_store(index_dir)
    for i in range(20):
        put_file(store, f"f{i}.py", [f"def f{i}_{j}(): pass  # {'x' * 200}" for j in range(20)])
    store.close()
    db = index_dir / "store.sqlite3"
    data = bytearray(db.read_bytes())
    page = 4096
    for start in range(page, len(data), page):  # keep the header page, wreck the rest
        data[start : start + page] = os.urandom(page)
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="Delete the index folder"):
        s = open_store(index_dir)
        s.stats()
        s.get_chunks(range(1, 500))


def test_foreign_or_newer_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(other / "store.sqlite3")
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a mose index"):
        open_store(other)

    newer = tmp_path / "newer"
    open_store(newer).close()
    conn = sqlite3.connect(newer / "store.sqlite3")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer mose"):
        open_store(newer)


def test_permissions_are_private(tmp_path: Path) -> None:
    index_dir = tmp_path / "deep" / "index"
    store = open_store(index_dir)
    put_file(store, "a.py", ["def a(): pass"])

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(index_dir) == 0o700
    present = list(index_dir.iterdir())
    assert {p.name for p in present} >= {"store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm"}
    store.flush()
    for p in index_dir.iterdir():
        assert mode(p) == 0o600, p.name
    store.close()


def test_model_change_drops_vectors_and_asks_for_reembedding(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    store = open_store(index_dir)
    first = put_file(store, "a.py", ["def a(): pass", "def b(): pass"])
    fill_deep(store)
    store.close()

    same = open_store(index_dir)
    assert not same.needs_reembed and same.reembed_reason is None
    same.close()

    store = open_store(index_dir, model_id="another-model@sha256:bbbb")
    assert store.needs_reembed and "model changed" in (store.reembed_reason or "")
    assert store.stats().vectors == {} and store.ann.count() == 0
    # Chunks and file states survive: only the vectors are recomputed.
    assert [c.id for c in store.file_chunks("a.py")] == first.chunk_ids
    pending = store.chunks_missing_vectors(SHALLOW, 10)
    assert [p.chunk_id for p in pending] == first.chunk_ids
    store.put_vectors(SHALLOW, [p.chunk_id for p in pending],
                      np.stack([embed(p.text, SHALLOW) for p in pending]))
    assert not store.needs_reembed
    assert store.search_shallow(embed("def b(): pass", SHALLOW), 1)[0].tolist() == [
        first.chunk_ids[1]]
    assert_ann_matches_sqlite(store)
    store.close()

    # Another dimension for the deep exit drops only that exit's vectors.
    store = open_store(index_dir, model_id="another-model@sha256:bbbb")
    fill_deep(store)
    store.close()
    store = Store.open(index_dir, dims={SHALLOW: 16, DEEP: 32}, index_exit=SHALLOW,
                       rerank_exit=DEEP, model_id="another-model@sha256:bbbb")
    assert set(store.stats().vectors) == {SHALLOW}
    assert not store.needs_reembed
    fill_deep_32 = store.chunks_missing_vectors(DEEP, 10)
    store.put_vectors(DEEP, [p.chunk_id for p in fill_deep_32[:1]],
                      np.ones((1, 32), np.float32))
    store.close()

    # Same model, another index exit: the cache is rebuilt from that exit's vectors and the
    # chunks lacking one are reported.
    store = Store.open(index_dir, dims={SHALLOW: 16, DEEP: 32}, index_exit=DEEP,
                       model_id="another-model@sha256:bbbb")
    assert store.rebuild_reason
    assert store.ann.count() == 1 and store.needs_reembed
    store.close()


def test_brute_force_backend(tmp_path: Path) -> None:
    store = open_store(tmp_path / "index", ann="brute")
    res = put_file(store, "a.py", ["def a(): pass", "def b(): pass"])
    assert store.search_shallow(embed("def a(): pass", SHALLOW), 1)[0].tolist() == [
        res.chunk_ids[0]]
    store.close()
    assert (tmp_path / "index" / "shallow.npz").exists()
    store = open_store(tmp_path / "index", ann="brute")
    assert store.rebuild_reason is None and store.ann.count() == 2
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.stats()


def test_default_index_dir_is_per_workspace(tmp_path: Path) -> None:
    one, two = tmp_path / "a" / "My Project", tmp_path / "b" / "My Project"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    d1, d2 = default_index_dir(one), default_index_dir(two)
    assert d1 != d2 and d1.parent == d2.parent
    assert d1.name.startswith("My_Project-") and len(d1.name.split("-")[-1]) == 12
    assert default_index_dir(one / ".." / "My Project") == d1
    assert "mose" in d1.parts


def test_concurrent_writer_and_readers(tmp_path: Path) -> None:
    store = open_store(tmp_path / "index")
    texts = [f"def t{i}(): return {i}" for i in range(60)]
    put_file(store, "base.py", texts[:10])
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            for i in range(40):
                put_file(store, f"w{i % 5}.py", texts[i : i + 4])
                if i % 7 == 0:
                    store.delete_file(f"w{(i + 3) % 5}.py")
                if i % 10 == 0:
                    fill_deep(store)
                    store.flush()
        except BaseException as err:  # noqa: BLE001 - reported to the main thread
            errors.append(err)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                query = embed(texts[int(rng.integers(60))], SHALLOW)
                ids, _ = store.search_shallow(query, 5)
                for rec in store.get_chunks(ids.tolist()):
                    assert rec.text in texts
                store.get_vectors(DEEP, ids.tolist())
                store.stats()
        except BaseException as err:  # noqa: BLE001 - reported to the main thread
            errors.append(err)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert_ann_matches_sqlite(store)
    store.close()
