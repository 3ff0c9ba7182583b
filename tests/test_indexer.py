"""The indexer and searcher on a real workspace with the real model (ONNX exits)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PLANTED_PY, make_workspace

import mose_lsp.searcher as searcher_module
from mose_lsp.config import Settings
from mose_lsp.indexer import WorkspaceIndex, overlay_mtime
from mose_lsp.lexical import identifier_tokens
from mose_lsp.searcher import Query, Searcher


def _open(root: Path, index_dir: Path, model, **settings) -> WorkspaceIndex:
    config, warnings = Settings.from_dict({"index_dir": str(index_dir), **settings})
    assert warnings == []
    return WorkspaceIndex.open(root, config, model)


def _snapshot(index: WorkspaceIndex) -> dict:
    """Everything observable about a store's content, keyed by stable values (not ids)."""
    store = index.store
    files = {s.path: (s.content_hash, s.skip_code) for s in store.all_files()}
    chunks = {}
    for path in files:
        for c in store.file_chunks(path):
            key = (c.path, c.start_line, c.end_line, c.symbol, c.content_hash)
            vec = store.get_vectors(index.index_exit, [c.id]).get(c.id)
            chunks[key] = None if vec is None else np.round(vec, 4).tobytes()
    live = {int(i) for i in store.fresh_ann.ids()}
    if store.deep_ann is not None:
        deep = {int(i) for i in store.deep_ann.ids()}
        assert not live & deep  # each chunk is in exactly one index
        live |= deep
    ids = set()
    for path in files:
        ids |= {c.id for c in store.file_chunks(path)}
    return {"files": files, "chunks": chunks, "ann_matches_sqlite": live == ids}


def test_first_index_search_finds_planted_functions(workspace, tmp_path, model):
    index = _open(workspace, tmp_path / "idx", model)
    report = index.scan()
    assert report.files_indexed == 6  # 4 stdlib modules + 2 planted (.env is a secret)
    assert report.skipped == {"binary": 1, "unsupported": 1}
    searcher = Searcher(index)
    hits = searcher.search(Query("edit distance between two strings", k=3))
    assert hits[0].path == "pkg/strings.py" and hits[0].symbol == "levenshtein_distance"
    assert hits[0].start_line == 0 and hits[0].exit == index.rerank_exit
    hits = searcher.search(Query("delay calling a function until input stops", k=3))
    assert hits[0].path == "web/timing.js" and hits[0].symbol == "debounce"
    # Filters: by language and by path glob.
    py_only = searcher.search(Query("delay calling a function until input stops", k=5,
                                    languages=("python",)))
    assert py_only and all(h.language == "python" for h in py_only)
    in_pkg = searcher.search(Query("split a shell command line", k=5, path_glob="pkg/*"))
    assert [h.path for h in in_pkg] == ["pkg/strings.py"]
    assert all(".env" not in s.path for s in index.store.all_files())
    index.close()


def test_incremental_updates_equal_a_fresh_index(workspace, tmp_path, model):
    index = _open(workspace, tmp_path / "idx", model)
    index.scan()
    # Edit one function, delete a file, rename a file, add a file.
    text = (workspace / "pkg" / "strings.py").read_text()
    (workspace / "pkg" / "strings.py").write_text(
        text + "\n\ndef shout(word: str) -> str:\n    \"\"\"Upper-case and exclaim.\"\"\"\n"
               "    return word.upper() + '!'\n")
    (workspace / "colorsys.py").unlink()
    os.rename(workspace / "fnmatch.py", workspace / "globbing.py")
    shutil.copyfile(workspace / "shlex.py", workspace / "pkg" / "shlex_copy.py")
    report = index.scan()
    assert report.files_deleted == 1 and report.files_renamed == 1
    # The renamed file and the copy re-use nothing new from disk content: only the edited
    # file's new chunk and the copy's chunks are embedded (the rename keeps its vectors).
    copy_chunks = len(index.store.file_chunks("pkg/shlex_copy.py"))
    assert report.chunks_embedded <= copy_chunks + 2
    incremental = _snapshot(index)
    index.close()

    fresh = _open(workspace, tmp_path / "fresh", model)
    fresh.scan()
    expected = _snapshot(fresh)
    fresh.close()
    assert incremental["files"] == expected["files"]
    assert incremental["chunks"].keys() == expected["chunks"].keys()
    for key, vec in expected["chunks"].items():
        assert vec is not None and incremental["chunks"][key] is not None
        a = np.frombuffer(vec, np.float32)
        b = np.frombuffer(incremental["chunks"][key], np.float32)
        # Same text, same model: the same vector, whatever else was embedded with it.
        assert float(a @ b) > 0.9995, key  # (vectors rounded to 4 decimals above)
    assert incremental["ann_matches_sqlite"] and expected["ann_matches_sqlite"]


def test_edit_keeps_deep_vectors_of_untouched_chunks(workspace, tmp_path, model):
    index = _open(workspace, tmp_path / "idx", model)
    index.scan()
    while index.fill_deep(max_chunks=512):
        pass
    assert index.store.stats().deep_coverage == 1.0
    path = workspace / "textwrap.py"
    path.write_text(path.read_text() + "\n\ndef added_function():\n    return 42\n")
    index.update_paths(["textwrap.py"])
    missing = index.store.chunks_missing_vectors(index.rerank_exit, 100)
    assert 1 <= len(missing) <= 2  # the new function (and a changed module window at most)
    index.close()


def test_unsaved_buffer_overlay_then_disk_wins(workspace, tmp_path, model):
    index = _open(workspace, tmp_path / "idx", model)
    index.scan()
    searcher = Searcher(index)
    new = PLANTED_PY + ("\n\ndef parse_roman_numeral(text: str) -> int:\n"
                        "    \"\"\"Convert a Roman numeral such as XIV to an integer.\"\"\"\n"
                        "    values = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100}\n"
                        "    total = 0\n"
                        "    for a, b in zip(text, text[1:] + ' '):\n"
                        "        total += -values[a] if values.get(b, 0) > values[a] else values[a]\n"
                        "    return total\n")
    index.update_text("pkg/strings.py", new)
    assert index.store.file_state("pkg/strings.py").mtime_ns == overlay_mtime()
    hits = searcher.search(Query("convert roman numerals to numbers", k=1))
    assert hits[0].symbol == "parse_roman_numeral"
    index.scan()  # the buffer was closed without saving: the disk version comes back
    symbols = {c.symbol for c in index.store.file_chunks("pkg/strings.py")}
    assert "parse_roman_numeral" not in symbols and "levenshtein_distance" in symbols
    index.close()


def test_similar_finds_a_copy_and_excludes_itself(workspace, tmp_path, model):
    src = (workspace / "pkg" / "strings.py").read_text()
    (workspace / "pkg" / "distance.py").write_text(
        src.replace("levenshtein_distance", "edit_distance").replace("left", "a_str")
           .replace("right", "b_str"))
    index = _open(workspace, tmp_path / "idx", model)
    index.scan()
    hits = Searcher(index).similar("pkg/strings.py", 3, k=3)
    assert hits[0].path == "pkg/distance.py" and hits[0].symbol == "edit_distance"
    assert all(h.symbol != "levenshtein_distance" for h in hits)
    index.close()


def test_similar_on_an_indexed_chunk_reuses_its_stored_vectors(workspace, tmp_path, model,
                                                                monkeypatch):
    index = _open(workspace, tmp_path / "idx", model)
    index.scan()
    searcher = Searcher(index)
    chunk = min((c for c in index.store.file_chunks("pkg/strings.py")
                 if c.start_line <= 3 <= c.end_line), key=lambda c: c.end_line - c.start_line)
    lang = chunk.language or ""
    # What the stored vectors stand for: the query's own encodes, bit for bit.
    stored = searcher.stored_vectors(chunk)
    assert stored.keys() == {index.index_exit}  # before the deep pass: the shallow one only
    assert np.array_equal(stored[index.index_exit],
                          model.encode([chunk.text], "code", index.index_exit, [lang])[0])
    query_encodes: list[int] = []  # exits the query text itself was encoded at
    real_encode = model.encode

    def counting_encode(texts, kind, exit, *args, **kwargs):
        if list(texts) == [chunk.text]:
            query_encodes.append(exit)
        return real_encode(texts, kind, exit, *args, **kwargs)

    monkeypatch.setattr(model, "encode", counting_encode)
    searcher.similar("pkg/strings.py", 3, k=5)
    assert query_encodes == [index.rerank_exit]  # the deep exit still had to be encoded
    while index.fill_deep(max_chunks=512):
        pass
    assert index.store.stats().deep_coverage == 1.0  # nothing left to compute on the fly
    query_encodes.clear()
    encoded = Query(chunk.text, "code", lang=lang, k=5, exclude_ids=frozenset({chunk.id}))
    want = [(h.chunk_id, h.score) for h in searcher.search(encoded)]
    # Every chunk has its deep vector (the fresh index is empty): no shallow query vector.
    assert query_encodes == [index.rerank_exit]
    query_encodes.clear()
    got = [(h.chunk_id, h.score) for h in searcher.similar("pkg/strings.py", 3, k=5)]
    assert got == want and len(got) == 5
    assert query_encodes == []  # both vectors were stored: nothing encoded
    # Vectors made by another model are not used.
    foreign = Query(chunk.text, "code", lang=lang, k=5,
                    vectors=searcher.stored_vectors(chunk), vectors_model="another-model")
    searcher.search(foreign)
    assert query_encodes == [index.rerank_exit]  # encoded again (no shallow one: see above)
    # The server finds the stored chunk by content hash and exact text only.
    assert searcher.stored_chunk("pkg/strings.py", chunk.content_hash, chunk.text) == chunk
    assert searcher.stored_chunk("pkg/strings.py", chunk.content_hash, chunk.text + " ") is None
    index.close()


def test_hnsw_cache_missing_or_corrupt_is_rebuilt(workspace, tmp_path, model):
    index = _open(workspace, tmp_path / "idx", model)
    index.scan()
    before = _snapshot(index)
    ann_files = [p for p in (tmp_path / "idx").iterdir() if "hnsw" in p.name or "npz" in p.name]
    index.close()
    assert ann_files
    for p in ann_files:
        p.write_bytes(b"garbage")
    index = _open(workspace, tmp_path / "idx", model)
    assert index.store.rebuild_reason
    assert _snapshot(index) == before
    hits = Searcher(index).search(Query("edit distance between two strings", k=1))
    assert hits[0].symbol == "levenshtein_distance"
    index.close()


@pytest.mark.parametrize("bad", ["missing", "truncated"])
def test_workspace_changes_while_closed(tmp_path, model, bad):
    ws = make_workspace(tmp_path / ("ws-" + bad))
    index = _open(ws, tmp_path / "idx", model)
    index.scan()
    index.close()
    if bad == "missing":
        (ws / "shlex.py").unlink()
    else:
        (ws / "shlex.py").write_text("def tiny():\n    return 1\n")
    index = _open(ws, tmp_path / "idx", model)
    index.scan()
    paths = {s.path for s in index.store.all_files()}
    assert ("shlex.py" in paths) == (bad != "missing")
    index.close()


def test_after_the_deep_pass_search_equals_exact_deep_ranking(workspace, tmp_path, model):
    index = _open(workspace, tmp_path / "idx", model, lexicalWeight=0)  # the deep exit alone
    index.scan()
    while index.fill_deep(max_chunks=512):
        pass
    stats = index.store.stats()
    assert stats.deep_coverage == 1.0 and stats.fresh_index_count == 0
    searcher = Searcher(index)
    query = "split a string into shell-like tokens"
    hits = searcher.search(Query(query, k=5))
    assert all(h.exit == index.rerank_exit for h in hits)
    ids = sorted(index.store.chunk_ids())
    deep = index.store.get_vectors(index.rerank_exit, ids)
    qd = model.encode([query], "text", index.rerank_exit)[0]
    exact = sorted(ids, key=lambda i: -float(deep[i] @ qd))[:5]
    assert [h.chunk_id for h in hits] == exact
    # Shallow-only search (no re-rank) still covers every chunk.
    shallow = searcher.search(Query(query, k=5, rerank=False))
    assert len(shallow) == 5 and all(h.exit == index.index_exit for h in shallow)
    index.close()


RARE_PY = '''\
def zorblax_quantile(values):
    """Return the middle element."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
'''


def _deep_cosines(index: WorkspaceIndex, model, query: str) -> dict[int, float]:
    ids = sorted(index.store.chunk_ids())
    deep = index.store.get_vectors(index.rerank_exit, ids)
    qd = model.encode([query], "text", index.rerank_exit)[0]
    return {i: float(deep[i] @ qd) for i in ids}


def test_lexical_fusion_ranks_a_named_rare_identifier_first(workspace, tmp_path, model,
                                                            monkeypatch):
    (workspace / "pkg" / "stats.py").write_text(RARE_PY)
    index = _open(workspace, tmp_path / "idx", model, lexicalWeight=0.1)
    index.scan()
    while index.fill_deep(max_chunks=512):
        pass
    searcher = Searcher(index)
    query = "zorblax quantile of a list"
    target = next(c.id for c in index.store.file_chunks("pkg/stats.py")
                  if c.symbol == "zorblax_quantile")
    cosine = _deep_cosines(index, model, query)
    hits = searcher.search(Query(query, k=5))
    assert hits[0].chunk_id == target and hits[0].lexical == pytest.approx(1.0)
    for h in hits:  # the fused score: deep cosine + w * BM25 / the query's best BM25
        assert 0.0 <= h.lexical <= 1.0 and h.exit == index.rerank_exit
        assert h.score == pytest.approx(cosine[h.chunk_id] + 0.1 * h.lexical, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert "lexical" in hits[0].to_json() and hits[0].to_json()["score"] == hits[0].score
    # The lexical part is BM25 / the workspace's best, from one ranking cut at LEXICAL_DEPTH.
    ranked, bm25 = index.store.lexical_search(identifier_tokens(query), 10_000)
    full = dict(zip(ranked.tolist(), (bm25 / bm25[0]).tolist()))
    for h in hits:
        assert h.lexical == pytest.approx(full.get(h.chunk_id, 0.0))
    monkeypatch.setattr(searcher_module, "LEXICAL_DEPTH", 1)  # only the best counts
    shallow_depth = searcher.search(Query(query, k=5))
    assert shallow_depth[0].chunk_id == target and shallow_depth[0].lexical == 1.0
    assert [h.lexical for h in shallow_depth[1:]] == [0.0] * (len(shallow_depth) - 1)
    for h in shallow_depth[1:]:
        assert h.score == pytest.approx(cosine[h.chunk_id], abs=1e-5)
    monkeypatch.undo()
    # Filters apply to the lexical candidates too.
    js = searcher.search(Query(query, k=5, languages=("javascript",)))
    assert js and all(h.language == "javascript" for h in js)
    assert all(h.chunk_id != target for h in searcher.search(
        Query(query, k=5, exclude_ids=frozenset({target}))))
    index.close()

    # Weight 0: exactly the deep exit's order, no lexical part.
    index = _open(workspace, tmp_path / "idx", model, lexicalWeight=0)
    hits = Searcher(index).search(Query(query, k=5))
    exact = sorted(cosine, key=lambda i: -cosine[i])[:5]
    assert [h.chunk_id for h in hits] == exact
    assert all(h.lexical == 0.0 for h in hits)
    assert [h.score for h in hits] == pytest.approx([cosine[i] for i in exact], abs=1e-5)
    index.close()


def test_lexical_candidates_without_deep_vectors_are_scored_on_the_fly(workspace, tmp_path,
                                                                      model):
    """Before the deep pass: a chunk found only by BM25 gets its deep vector on the fly."""
    (workspace / "pkg" / "stats.py").write_text(RARE_PY)
    index = _open(workspace, tmp_path / "idx", model, lexicalWeight=0.1, rerankCandidates=1)
    index.scan()
    target = next(c.id for c in index.store.file_chunks("pkg/stats.py")
                  if c.symbol == "zorblax_quantile")
    assert index.store.get_vectors(index.rerank_exit, [target]) == {}
    hits = Searcher(index).search(Query("zorblax quantile of a list", k=3))
    assert hits[0].chunk_id == target and hits[0].exit == index.rerank_exit
    assert target in index.store.get_vectors(index.rerank_exit, [target])
    index.close()
