"""The workspace store: SQLite as truth, the deep and fresh vector indexes as caches that
partition the chunks and are repaired or rebuilt when in doubt."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mose_lsp.ann import HnswIndex, HnswParams, sidecar_path
from mose_lsp.errors import StoreError
from mose_lsp.lexical import identifier_tokens
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


def fill_deep(store: Store, limit: int | None = None) -> int:
    """The background pass: deep vectors for (up to ``limit``) chunks lacking one, 7 a batch."""
    done = 0
    while limit is None or done < limit:
        batch = 7 if limit is None else min(7, limit - done)
        if not (pending := store.chunks_missing_vectors(DEEP, batch)):
            break
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
    return {"files": files, "chunks": chunks, "vectors": vectors,
            "lexical": lexical_postings(store)}


def lexical_postings(store: Store) -> dict[tuple, int]:
    """The full-text index's postings read from SQLite ((term, chunk key) -> occurrences,
    keyed by content), checked against the chunks' text: every stored chunk has exactly the
    postings of its identifier tokens, and no other rowid has any."""
    conn = sqlite3.connect(store.db_path)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, chunks_fts, "
                     "'instance')")
        found: dict[tuple[str, int], int] = {}
        for term, doc in conn.execute("SELECT term, doc FROM temp.vocab"):
            found[(term, doc)] = found.get((term, doc), 0) + 1
        n_docs = conn.execute("SELECT COUNT(*) FROM chunks_fts").fetchone()[0]
        term_df = dict(conn.execute("SELECT term, df FROM term_df").fetchall())
    finally:
        conn.close()
    records = [c for f in store.all_files() for c in store.file_chunks(f.path)]
    want: dict[tuple[str, int], int] = {}
    for c in records:
        for token in identifier_tokens(c.text):
            want[(token, c.id)] = want.get((token, c.id), 0) + 1
    assert found == want
    assert n_docs == len(records)
    want_df: dict[str, int] = {}
    for term, _ in want:
        want_df[term] = want_df.get(term, 0) + 1
    assert term_df == want_df  # the document frequencies long queries are cut by
    key = {c.id: (c.path, c.start_line, c.content_hash) for c in records}
    return {(term, key[doc]): n for (term, doc), n in found.items()}


def partition_truth(store: Store) -> dict[str, dict[int, np.ndarray]]:
    """What each vector index must hold, computed from SQLite through the public reads:
    deep = chunks with a deep vector (their deep vectors); fresh = chunks with a shallow vector
    and no deep one (their shallow vectors). Without a deep index, fresh = every shallow one."""
    all_ids = [c.id for f in store.all_files() for c in store.file_chunks(f.path)]
    shallow = store.get_vectors(store.index_exit, all_ids)
    if store.deep_exit is None:
        return {"fresh": shallow}
    deep = store.get_vectors(store.deep_exit, all_ids)
    return {"deep": deep, "fresh": {i: v for i, v in shallow.items() if i not in deep}}


def index_of(store: Store, partition: str):
    return store.deep_ann if partition == "deep" else store.fresh_ann


def assert_ann_matches_sqlite(store: Store) -> None:
    """Each vector index holds exactly its partition of the vectors stored in SQLite (so no
    chunk is in both), with the same (normalised) vectors."""
    truth = partition_truth(store)
    assert (store.deep_ann is None) == ("deep" not in truth)
    for part, vectors in truth.items():
        index = index_of(store, part)
        assert index.ids().tolist() == sorted(vectors), part
        if vectors:
            ids = sorted(vectors)
            want = np.stack([vectors[i] / np.linalg.norm(vectors[i]) for i in ids])
            np.testing.assert_allclose(index.get(ids), want, atol=1e-6)
    if "deep" in truth:
        assert not set(truth["deep"]) & set(truth["fresh"])
    stats = store.stats()
    assert stats.deep_index_count == len(truth.get("deep", {}))
    assert stats.fresh_index_count == len(truth["fresh"])
    assert stats.index_count == stats.deep_index_count + stats.fresh_index_count


def exact_top(store: Store, query: np.ndarray, k: int, partition: str = "fresh") -> list[int]:
    """Brute-force oracle: the ``k`` best ids of a partition for ``query`` (ties by id)."""
    truth = partition_truth(store)[partition]
    unit = {i: v / np.linalg.norm(v) for i, v in truth.items()}
    return sorted(unit, key=lambda i: (-float(unit[i] @ query), i))[:k]


def search(store: Store, partition: str, text: str, k: int, **kw) -> list[int]:
    if partition == "deep":
        return store.search_deep(embed(text, DEEP), k, **kw)[0].tolist()
    return store.search_fresh(embed(text, SHALLOW), k, **kw)[0].tolist()


# ----------------------------------------------------------------------------- basics


def test_replace_file_then_search_finds_it(store: Store) -> None:
    texts = ["def parse(x):\n    return x", "def render(y):\n    return y", "class A: pass"]
    result = put_file(store, "src/a.py", texts)
    assert len(result.chunk_ids) == 3 and result.added == result.chunk_ids
    put_file(store, "src/b.py", ["def other(): pass"])
    # New chunks have no deep vector yet: they are found through the fresh (shallow) index.
    ids, scores = store.search_fresh(embed(texts[1], SHALLOW), k=2)
    assert ids[0] == result.chunk_ids[1] and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert store.search_deep(embed(texts[1], DEEP), k=2)[0].size == 0
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
    assert (stats.deep_index_count, stats.fresh_index_count) == (0, 4)
    assert stats.vectors == {SHALLOW: 4} and stats.deep_coverage == 0.0
    assert stats.bytes_on_disk > 0
    # Once the background pass gives them deep vectors, they move to the deep index.
    assert fill_deep(store) == 4
    ids, scores = store.search_deep(embed(texts[1], DEEP), k=2)
    assert ids[0] == result.chunk_ids[1] and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert store.search_fresh(embed(texts[1], SHALLOW), k=2)[0].size == 0
    stats = store.stats()
    assert (stats.index_count, stats.deep_index_count, stats.fresh_index_count) == (4, 4, 0)
    assert_ann_matches_sqlite(store)


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
    assert b_old not in store.deep_ann.ids().tolist() + store.fresh_ann.ids().tolist()
    assert [p.chunk_id for p in store.chunks_missing_vectors(DEEP, 10)] == second.added
    # Reused chunks keep their place in the deep index; the new ones wait in the fresh one.
    assert store.deep_ann.ids().tolist() == [a_id, c_id]
    assert store.fresh_ann.ids().tolist() == second.added
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
    assert search(store, "deep", "def a2(): pass", 1) == [a.chunk_ids[1]]
    assert not store.rename_file("missing.py", "x.py")

    # Renaming onto an existing path replaces that file.
    assert store.rename_file("pkg/renamed.py", "b.py")
    assert store.get_chunks(b.chunk_ids) == []
    assert sorted(store.deep_ann.ids().tolist()) == sorted(a.chunk_ids)
    assert store.fresh_ann.count() == 0
    assert_ann_matches_sqlite(store)

    assert store.delete_file("b.py")
    assert not store.delete_file("b.py")
    assert store.get_chunks(a.chunk_ids) == []
    assert store.deep_ann.count() == store.fresh_ann.count() == 0
    assert search(store, "deep", "def a1(): pass", 5) == []
    assert search(store, "fresh", "def a1(): pass", 5) == []
    assert store.stats().vectors == {}


def test_record_skip_drops_chunks_and_is_cleared_by_indexing(store: Store) -> None:
    put_file(store, "big.py", ["def big(): pass"])
    store.record_skip("big.py", FileMeta(10**9, 1, "h", "python"), "too-large",
                      "1 GB is over the 1 MB limit")
    state = store.file_state("big.py")
    assert state is not None and state.skipped and state.skip_code == "too-large"
    assert store.file_chunks("big.py") == [] and store.stats().index_count == 0
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
    assert search(store, "fresh", "def x(): pass", 5, filter=allowed.__contains__) == js.chunk_ids
    fill_deep(store)
    assert search(store, "deep", "def x(): pass", 5, filter=allowed.__contains__) == js.chunk_ids
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
            lexical_postings(store)
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
    query = embed(vocab[3], DEEP)
    k = min(5, store.deep_ann.count())
    assert sorted(store.search_deep(query, k)[1].tolist()) == pytest.approx(
        sorted(fresh.search_deep(query, k)[1].tolist()), abs=1e-5)

    before = snapshot(store)
    store.close()
    fresh.close()
    reopened = open_store(tmp_path / "edited")
    assert reopened.rebuild_reason is None  # the cache saved on close is used as is
    assert snapshot(reopened) == before
    assert_ann_matches_sqlite(reopened)
    reopened.close()


@pytest.mark.parametrize("partition", ["deep", "fresh"])
@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage", "sidecar", "stale"])
def test_damaged_vector_index_is_rebuilt(tmp_path: Path, damage: str, partition: str) -> None:
    index_dir = tmp_path / "index"
    store = open_store(index_dir)
    texts = [f"def g{i}(): return {i}" for i in range(30)]
    put_file(store, "g.py", texts)
    fill_deep(store, limit=18)  # both indexes hold something
    store.close()
    ann_path = index_dir / f"{partition}.hnsw"
    old_bin, old_side = ann_path.read_bytes(), sidecar_path(ann_path).read_bytes()
    other_partition = "fresh" if partition == "deep" else "deep"
    other = index_dir / f"{other_partition}.hnsw"
    if damage == "stale":
        # The cache saved before later edits: it reflects an older generation.
        store = open_store(index_dir)
        put_file(store, "g.py", texts[:10] + ["def changed(): pass"] + texts[25:])
        put_file(store, "h.py", ["def h(): pass"])
        fill_deep(store, limit=4)
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

    other_bin = other.read_bytes()
    store = open_store(index_dir)
    assert store.rebuild_reason
    # A stale but intact file is repaired in place; a damaged one is rebuilt.
    assert store.recovery[partition].startswith("repaired" if damage == "stale" else "rebuilt")
    if damage == "stale":
        assert "generation" in store.recovery[partition]
    assert store.recovery[other_partition] == "loaded"
    assert_ann_matches_sqlite(store)
    for text in ["def g5(): return 5", "def h(): pass", "def g28(): return 28", "def g1(): return 1"]:
        for part, layer in (("deep", DEEP), ("fresh", SHALLOW)):
            assert search(store, part, text, 3) == exact_top(store, embed(text, layer), 3, part)
    store.close()
    assert other.read_bytes() == other_bin  # the intact index was not rewritten
    # The rebuilt or repaired cache was saved: the next open loads it.
    again = open_store(index_dir)
    assert again.rebuild_reason is None
    assert again.recovery == {"deep": "loaded", "fresh": "loaded"}
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
    ids, _ = store.search_fresh(embed("def d(): pass", SHALLOW), 5)
    assert [c.symbol for c in store.get_chunks(ids)] == ["sym0", "sym0"]
    assert {c.path for c in store.get_chunks(ids)} == {"c.py", "d.py"}
    store.close()


# ----------------------------------------------------------------------------- deep / fresh


@pytest.mark.parametrize("fresh_ann", [None, "brute"])
def test_partition_invariant_under_random_operations(tmp_path: Path, fresh_ann: str | None) -> None:
    """After every edit, rename, skip, delete, deep fill and vector replacement, each chunk
    with a deep vector is in the deep index only, each other chunk with a shallow vector in
    the fresh index only, with SQLite's vectors; searches of both agree with a brute-force
    oracle; and a reopened store loads both indexes as saved. A small compaction threshold
    makes background compactions run alongside the edits."""
    rng = np.random.default_rng(7)
    params = HnswParams(compact_min_deleted=8)
    vocab = [f"def p{i}(y):\n    return y * {i}" for i in range(60)]
    store = open_store(tmp_path / "index", hnsw_params=params, fresh_ann=fresh_ann)
    paths = [f"src/f{i}.py" for i in range(6)]
    for step in range(120):
        op = int(rng.integers(12))
        known = [f.path for f in store.all_files() if not f.skipped]
        if op < 5 or not known:
            texts = [vocab[int(i)] for i in rng.integers(0, 60, size=int(rng.integers(0, 7)))]
            put_file(store, paths[int(rng.integers(len(paths)))], texts)
        elif op < 8:
            fill_deep(store, limit=int(rng.integers(1, 12)))
        elif op < 9:
            store.rename_file(known[int(rng.integers(len(known)))],
                              paths[int(rng.integers(len(paths)))])
        elif op < 10:
            store.delete_file(known[int(rng.integers(len(known)))])
        elif op < 11:
            store.record_skip(known[int(rng.integers(len(known)))], meta_for(["x"]), "binary",
                              "binary")
        else:
            # Replace stored vectors of some chunks at either exit (the index follows).
            recs = store.file_chunks(known[int(rng.integers(len(known)))])[:3]
            layer = SHALLOW if rng.integers(2) else DEEP
            store.put_vectors(layer, [c.id for c in recs],
                              np.stack([embed(c.text + "!", layer) for c in recs])
                              if recs else np.zeros((0, DIMS[layer]), np.float32))
        assert_ann_matches_sqlite(store)
        if step % 15 == 14:
            for text in rng.choice(vocab, size=3):
                for part, layer in (("deep", DEEP), ("fresh", SHALLOW)):
                    index = index_of(store, part)
                    k = index.count()  # everything: approximate search must still be exact
                    got = search(store, part, str(text), k)
                    want = exact_top(store, embed(str(text), layer), k, part)
                    assert sorted(got) == sorted(want)
                    assert got[:1] == want[:1] or k == 0
    store.compact()
    for part in ("deep", "fresh"):
        index = index_of(store, part)
        if isinstance(index, HnswIndex):
            assert index.deleted_count() <= max(index.count(), params.compact_min_deleted)
        else:
            assert fresh_ann == "brute" and part == "fresh"
    assert_ann_matches_sqlite(store)
    store.close()
    reopened = open_store(tmp_path / "index", hnsw_params=params, fresh_ann=fresh_ann)
    assert reopened.recovery == {"deep": "loaded", "fresh": "loaded"}
    assert_ann_matches_sqlite(reopened)
    reopened.close()


def test_fresh_index_gives_back_slots_when_chunks_move_to_deep(tmp_path: Path) -> None:
    """A first scan puts every chunk into the fresh index and the background pass then moves
    them all to the deep one: the fresh graph must not keep its peak size (two full graphs)."""
    params = HnswParams(compact_min_deleted=32)
    store = open_store(tmp_path / "index", hnsw_params=params)
    for i in range(10):
        put_file(store, f"m{i}.py", [f"def m{i}_{j}(): return {j}" for j in range(30)])
    fresh = store.fresh_ann
    assert isinstance(fresh, HnswIndex) and fresh.count() == 300
    peak = fresh.capacity()
    fill_deep(store)
    assert fresh.count() == 0 and store.deep_ann.count() == 300
    # A background compaction gives the slots back, without anyone asking.
    deadline = time.monotonic() + 20
    while fresh.deleted_count() > params.compact_min_deleted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fresh.deleted_count() <= params.compact_min_deleted
    assert fresh.capacity() < peak / 4
    assert_ann_matches_sqlite(store)
    assert store.dirty  # the smaller graph is saved by the next flush
    assert store.flush()
    saved = HnswIndex.load(store.index_path("fresh"), DIMS[SHALLOW])
    assert saved.capacity() < peak / 4 and saved.count() == 0
    put_file(store, "new.py", ["def brand_new(): pass"])
    assert search(store, "fresh", "def brand_new(): pass", 1) == [
        store.file_chunks("new.py")[0].id]
    store.close()


@pytest.mark.parametrize("how", ["no-rerank-exit", "same-exit", "deep_index=False"])
def test_single_shallow_index_without_a_distinct_rerank_exit(tmp_path: Path, how: str) -> None:
    """Without a deep index, fresh holds every shallow vector (one index over every chunk):
    deep fills do not move chunks and search_fresh sees them all. Switching a store between
    the two layouts rebuilds what the new layout needs, never trusting a file it did not
    maintain."""
    index_dir = tmp_path / "index"
    kw = {"no-rerank-exit": {"rerank_exit": None}, "same-exit": {"rerank_exit": SHALLOW},
          "deep_index=False": {"deep_index": False}}[how]
    store = open_store(index_dir)  # first with a deep index
    put_file(store, "a.py", ["def a(): pass", "def b(): pass", "def c(): pass"])
    fill_deep(store, limit=2)
    store.close()
    assert (index_dir / "deep.hnsw").exists()

    single = open_store(index_dir, **kw)
    assert single.deep_exit is None and single.deep_ann is None
    assert single.partitions == ("fresh",)
    assert single.recovery["fresh"].startswith("rebuilt")  # another partition rule
    assert not (index_dir / "deep.hnsw").exists()
    assert single.fresh_ann.count() == 3
    assert single.search_deep(embed("def a(): pass", DEEP), 3)[0].size == 0
    ids = [c.id for c in single.file_chunks("a.py")]
    assert single.search_fresh(embed("def a(): pass", SHALLOW), 1)[0].tolist() == [ids[0]]
    fill_deep(single)  # deep vectors are stored but do not move anything
    assert single.fresh_ann.count() == 3
    stats = single.stats()
    assert (stats.deep_index_count, stats.fresh_index_count, stats.index_count) == (0, 3, 3)
    assert_ann_matches_sqlite(single)
    put_file(single, "a.py", ["def a(): pass", "def d(): pass"])
    assert_ann_matches_sqlite(single)
    single.close()

    both = open_store(index_dir)
    assert both.recovery["deep"].startswith("rebuilt")
    assert both.recovery["fresh"].startswith("rebuilt")
    assert_ann_matches_sqlite(both)
    assert both.deep_ann.count() == 1 and both.fresh_ann.count() == 1  # d.py's chunk is new
    both.close()


CRASH_POINTS = ["first-fill", "after-flush", "fill-after-flush", "edits-after-flush",
                "periodic-save-then-fill"]


def crash_scenario(store: Store, stop: str) -> None:
    """Edits and deep fills with saves in between, stopping at ``stop`` (a CRASH_POINTS
    entry). Run in a subprocess that then exits without closing, and in-process as the
    oracle."""
    texts = [f"def k{i}(): return {i}" for i in range(40)]
    put_file(store, "k.py", texts)
    put_file(store, "j.py", ["def j(): pass", "def jj(): pass"])
    fill_deep(store, limit=15)
    if stop == "first-fill":
        return
    assert store.flush()
    if stop == "after-flush":
        return
    fill_deep(store, limit=10)
    first = store.file_chunks("k.py")[0].id  # has a deep vector; replace it in place
    store.put_vectors(DEEP, [first], embed("replaced", DEEP)[None, :])
    if stop == "fill-after-flush":
        return
    put_file(store, "k.py", texts[:30] + ["def new(): pass"])  # drops deep and fresh chunks
    store.delete_file("j.py")
    store.rename_file("k.py", "pkg/k.py")
    if stop == "edits-after-flush":
        return
    assert store.maybe_flush(min_interval_s=0.0)  # the idle loop's periodic save
    fill_deep(store)
    put_file(store, "l.py", ["def l(): pass"])


CRASH_SCENARIO_SCRIPT = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.test_store import crash_scenario, open_store
store = open_store(Path(sys.argv[1]), fresh_ann=sys.argv[4] or None)
crash_scenario(store, sys.argv[3])
os._exit(0)  # crash: no close, no flush
"""


@pytest.mark.parametrize(("point", "fresh_ann"),
                         [(p, None) for p in CRASH_POINTS] + [("edits-after-flush", "brute")])
def test_crash_between_deep_fills_is_repaired_not_rebuilt(
    tmp_path: Path, point: str, fresh_ann: str | None
) -> None:
    """A process killed at any point between deep fills and saves leaves saved indexes that
    the next open repairs (or loads, right after a save) into exactly the partitions of the
    database, including a deep vector replaced in place, without rebuilding either graph."""
    index_dir = tmp_path / "index"
    subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH_SCENARIO_SCRIPT),
                    str(index_dir), str(REPO), point, fresh_ann or ""], check=True, cwd=REPO,
                   timeout=60)
    store = open_store(index_dir, fresh_ann=fresh_ann)
    expected = "loaded" if point == "after-flush" else "repaired"
    assert {part: how.split(":")[0] for part, how in store.recovery.items()} == {
        "deep": expected, "fresh": expected}, store.recovery
    if point == "fill-after-flush":
        assert "1 replaced" in store.recovery["deep"]
    assert_ann_matches_sqlite(store)

    oracle = open_store(tmp_path / "oracle", fresh_ann=fresh_ann)
    crash_scenario(oracle, point)
    assert snapshot(store) == snapshot(oracle)
    for part in ("deep", "fresh"):
        assert index_of(store, part).ids().tolist() == index_of(oracle, part).ids().tolist()
    for text in ["def k3(): return 3", "def new(): pass", "replaced", "def l(): pass"]:
        for part, layer in (("deep", DEEP), ("fresh", SHALLOW)):
            assert search(store, part, text, 4) == exact_top(store, embed(text, layer), 4, part)
    oracle.close()
    store.close()
    again = open_store(index_dir, fresh_ann=fresh_ann)  # the repair was saved on close
    assert again.recovery == {"deep": "loaded", "fresh": "loaded"}
    again.close()


def test_fresh_index_kind_can_change_between_opens(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    store = open_store(index_dir)
    put_file(store, "a.py", [f"def a{i}(): return {i}" for i in range(12)])
    fill_deep(store, limit=5)
    store.close()
    brute = open_store(index_dir, fresh_ann="brute")
    assert brute.recovery["deep"] == "loaded" and brute.recovery["fresh"].startswith("rebuilt")
    assert not (index_dir / "fresh.hnsw").exists() and (index_dir / "fresh.npz").exists()
    assert_ann_matches_sqlite(brute)
    assert search(brute, "fresh", "def a9(): return 9", 1) == [brute.file_chunks("a.py")[9].id]
    brute.close()
    again = open_store(index_dir)
    assert again.recovery["fresh"].startswith("rebuilt") and not (index_dir / "fresh.npz").exists()
    assert_ann_matches_sqlite(again)
    again.close()


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
    assert store.stats().vectors == {} and store.stats().index_count == 0
    # Chunks and file states survive: only the vectors are recomputed.
    assert [c.id for c in store.file_chunks("a.py")] == first.chunk_ids
    pending = store.chunks_missing_vectors(SHALLOW, 10)
    assert [p.chunk_id for p in pending] == first.chunk_ids
    store.put_vectors(SHALLOW, [p.chunk_id for p in pending],
                      np.stack([embed(p.text, SHALLOW) for p in pending]))
    assert not store.needs_reembed
    # No deep vectors yet after the model change: everything is found through fresh.
    assert search(store, "fresh", "def b(): pass", 1) == [first.chunk_ids[1]]
    assert store.stats().deep_index_count == 0
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
    assert store.rebuild_reason and store.deep_exit is None
    assert store.fresh_ann.count() == 1 and store.needs_reembed
    assert_ann_matches_sqlite(store)
    store.close()


def test_brute_force_backend(tmp_path: Path) -> None:
    store = open_store(tmp_path / "index", ann="brute")
    res = put_file(store, "a.py", ["def a(): pass", "def b(): pass"])
    assert search(store, "fresh", "def a(): pass", 1) == [res.chunk_ids[0]]
    fill_deep(store, limit=1)
    assert search(store, "deep", "def a(): pass", 1) == [res.chunk_ids[0]]
    assert search(store, "fresh", "def a(): pass", 1) == [res.chunk_ids[1]]
    store.close()
    assert (tmp_path / "index" / "fresh.npz").exists() and (tmp_path / "index" / "deep.npz").exists()
    store = open_store(tmp_path / "index", ann="brute")
    assert store.rebuild_reason is None
    assert (store.deep_ann.count(), store.fresh_ann.count()) == (1, 1)
    assert_ann_matches_sqlite(store)
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
    """Readers search both indexes while a writer edits, deletes and fills deep vectors, and
    background compactions (a low threshold) rebuild graphs underneath them."""
    store = open_store(tmp_path / "index", hnsw_params=HnswParams(compact_min_deleted=4))
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
                text = texts[int(rng.integers(60))]
                ids = np.concatenate([store.search_deep(embed(text, DEEP), 5)[0],
                                      store.search_fresh(embed(text, SHALLOW), 5)[0]])
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


# ----------------------------------------------------------------------------- lexical index


def lexical(store: Store, text: str, k: int = 10, **kw) -> list[int]:
    return store.lexical_search(identifier_tokens(text), k, **kw)[0].tolist()


def test_lexical_index_follows_edits_deletes_renames_and_reopen(tmp_path: Path) -> None:
    store = open_store(tmp_path / "index")
    a = put_file(store, "a.py", ["def parseHTTPResponse(raw):\n    return raw",
                                 "def other_thing(x):\n    return x"])
    put_file(store, "b.py", ["def unrelated(y):\n    return y * 2"])
    ids, scores = store.lexical_search(["parse", "http", "response"], 5)
    assert ids.tolist() == [a.chunk_ids[0]]
    assert scores.dtype == np.float64 and scores[0] > 0
    ids, scores = store.lexical_search(["other", "thing"], 5)
    assert ids.tolist() == [a.chunk_ids[1]] and scores[0] > 0
    # The deep pass and a model change leave the full-text index alone.
    fill_deep(store)
    assert lexical(store, "parseHTTPResponse") == [a.chunk_ids[0]]

    # Edit: the old identifier is gone, the new one found, the kept chunk keeps its id.
    e = put_file(store, "a.py", ["def readJsonBody(raw):\n    return raw",
                                 "def other_thing(x):\n    return x"])
    assert e.reused == [a.chunk_ids[1]]
    assert lexical(store, "parseHTTPResponse") == []
    assert lexical(store, "read_json_body") == [e.added[0]]
    assert lexical(store, "other thing") == [a.chunk_ids[1]]
    # Filters: a set of ids or a predicate.
    assert lexical(store, "return", filter_ids={e.added[0]}) == [e.added[0]]
    assert lexical(store, "return", filter_ids=lambda i: i == a.chunk_ids[1]) == [a.chunk_ids[1]]

    assert store.rename_file("a.py", "pkg/moved.py")  # keeps ids and postings
    assert lexical(store, "readJsonBody") == [e.added[0]]
    store.record_skip("b.py", meta_for(["x"]), "too-large", "too large")
    assert lexical(store, "unrelated") == []
    lexical_postings(store)
    before = snapshot(store)
    store.close()

    reopened = open_store(tmp_path / "index", model_id="another-model@sha256:bbbb")
    assert reopened.needs_reembed  # vectors dropped ...
    assert lexical(reopened, "readJsonBody") == [e.added[0]]  # ... full text kept
    assert snapshot(reopened)["lexical"] == before["lexical"]
    assert reopened.delete_file("pkg/moved.py")
    assert lexical(reopened, "readJsonBody other") == []
    assert lexical_postings(reopened) == {}
    reopened.close()


@pytest.mark.parametrize("query", [
    [], [""], ["   "], ['a"b'], ['"'], ['""'], ["AND"], ["OR", "NOT"], ["NEAR"], ["NEAR(a b)"],
    ["*"], ["def*"], ["^def"], ["tokens:def"], ["(", ")"], ["-"], ["\x00"], ["a\x00b"],
    ["\ud800"], ["def", "AND", "*"],
    ["{tokens}"], ["é"], [str(i) for i in range(10_000)], ["x" * 100_000],
])
def test_lexical_queries_never_raise(store: Store, query: list[str]) -> None:
    put_file(store, "q.py", ['def quoted(s):\n    return "a\\"b" AND s * NEAR(1)'])
    ids, scores = store.lexical_search(query, 5)
    assert len(ids) == len(scores) <= 5 and (scores > 0).all()
    assert store.lexical_search(query, 0)[0].tolist() == []


def test_lexical_query_operators_are_plain_words(store: Store) -> None:
    plain = put_file(store, "p.py", ["def near_and_or(x):\n    return x"])
    put_file(store, "o.py", ["def other(y):\n    return y"])
    # Unquoted, "near AND or" would be an FTS5 expression; here each word is a token.
    assert lexical(store, "NEAR AND OR") == plain.chunk_ids
    assert store.lexical_search(["near", "*"], 5)[0].tolist() == plain.chunk_ids


def test_schema_1_store_is_migrated_with_its_full_text_index(tmp_path: Path) -> None:
    store = open_store(tmp_path / "index")
    a = put_file(store, "a.py", ["def levenshteinDistance(a, b):\n    return 0"])
    fill_deep(store)
    store.close()
    conn = sqlite3.connect(tmp_path / "index" / "store.sqlite3")
    conn.execute("DROP TABLE chunks_fts")  # what schema 1 had
    conn.execute("DROP TABLE term_df")
    conn.execute("DELETE FROM meta WHERE key = 'lexical_tokens'")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    migrated = open_store(tmp_path / "index")
    assert migrated.reembed_reason is None and not migrated.needs_reembed  # nothing dropped
    assert migrated.recovery == {"deep": "loaded", "fresh": "loaded"}
    assert lexical(migrated, "levenshtein distance") == a.chunk_ids
    lexical_postings(migrated)
    migrated.close()

    # A tokenizer version other than this mose's rebuilds the table from the chunks.
    conn = sqlite3.connect(tmp_path / "index" / "store.sqlite3")
    conn.execute("UPDATE meta SET value = 'old' WHERE key = 'lexical_tokens'")
    conn.execute("INSERT INTO chunks_fts (rowid, tokens) VALUES (12345, 'stale words')")
    conn.commit()
    conn.close()
    rebuilt = open_store(tmp_path / "index")
    assert lexical(rebuilt, "stale words") == []
    assert lexical(rebuilt, "levenshteinDistance") == a.chunk_ids
    lexical_postings(rebuilt)
    rebuilt.close()


def test_schema_2_store_gets_the_document_frequencies_of_its_tokens(tmp_path: Path) -> None:
    store = open_store(tmp_path / "index")
    put_file(store, "a.py", ["def levenshteinDistance(a, b):\n    return 0",
                             "def hamming_distance(a, b):\n    return 1"])
    fill_deep(store)
    store.close()
    conn = sqlite3.connect(tmp_path / "index" / "store.sqlite3")
    conn.execute("DROP TABLE term_df")  # what schema 2 had
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    migrated = open_store(tmp_path / "index")
    assert migrated.reembed_reason is None and not migrated.needs_reembed
    lexical_postings(migrated)  # term_df filled: "distance" 2, "levenshtein" 1, ...
    conn = sqlite3.connect(tmp_path / "index" / "store.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("SELECT df FROM term_df WHERE term = 'distance'").fetchone() == (2,)
    conn.close()
    migrated.close()


def test_lexical_search_split_over_id_ranges_equals_one_query(tmp_path: Path,
                                                              monkeypatch) -> None:
    import mose_lsp.store.fulltext as store_module

    store = open_store(tmp_path / "index")
    words = ["parse", "render", "table", "value", "file", "stream", "merge", "date"]
    for f in range(30):  # chunks sharing words, so that scores tie and order by id
        put_file(store, f"m{f}.py", [f"def {words[(f + c) % 8]}_{words[c % 8]}(x):\n"
                                     f"    return {words[(f * c) % 8]}(x)" for c in range(4)])
    query = ["parse", "value", "file", "merge"]
    one = store.lexical_search(query, 50)
    monkeypatch.setattr(store_module, "LEXICAL_SPLIT_MIN", 0)
    for workers in (2, 3, 7):
        ids, scores = store.lexical_search(query, 50, workers=workers)
        assert ids.tolist() == one[0].tolist() and scores.tolist() == one[1].tolist()
    assert store.lexical_search(query, 3, workers=2)[0].tolist() == one[0][:3].tolist()
    store.close()
    assert store._lexical_pool is not None  # made by the split, shut down by close()
    assert store._lexical_pool._shutdown
