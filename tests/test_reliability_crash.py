"""Crash consistency: the index is never wrong after a crash.

The model is SQLite's crash tests: an indexer process (the real ``WorkspaceIndex`` in a small
driver, the real model) is killed with SIGKILL at random moments of a first index, of its
background deep pass and of incremental updates; after each kill the store is reopened and
checked against the files on disk and against its own vector indexes:

- no duplicate chunk, and every file the store holds at its current disk content has exactly
  the chunks a fresh chunking of that content gives (path, lines, symbol, content hash);
- the deep and fresh HNSW indexes hold exactly the chunk ids their partition rule selects in
  SQLite, disjoint, covering every chunk;
- after a catch-up scan the store equals a fresh index of the same files (and, at the end of
  each phase, the vectors equal those of a fresh index).

Damaged files: a truncated or corrupt vector index is rebuilt (tests/test_indexer.py and
tests/test_store.py cover it at the unit level); a corrupt database is refused with a message
by the CLI, and ``mose index --rebuild`` repairs it; a model directory whose checksum fails is
refused by ``mose index`` and by the server, which keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import STDLIB, make_workspace

from mose_lsp.config import Settings
from mose_lsp.indexer import WorkspaceIndex
from mose_lsp.walker import iter_files

KILLS = int(os.environ.get("MOSE_CRASH_KILLS", "24"))

DRIVER = r"""
import json, sys
from mose_lsp.config import Settings
from mose_lsp.indexer import WorkspaceIndex
root, index_dir, model, mode, paths = sys.argv[1:6]
settings, _ = Settings.from_dict({"index_dir": index_dir, "model": model, "threads": 1,
                                  "batch_size": 8})
index = WorkspaceIndex.open(root, settings)
print("ready", flush=True)
if mode == "scan":
    index.scan()
else:
    index.update_paths(json.loads(paths))
index.store.flush()
while index.fill_deep(16):
    index.store.maybe_flush(0.5)   # saves of the vector indexes land between (and under) kills
index.close()
print("done", flush=True)
"""


def _settings(index_dir: Path, **extra) -> Settings:
    settings, warnings = Settings.from_dict({"index_dir": str(index_dir), **extra})
    assert warnings == []
    return settings


def _expected(index: WorkspaceIndex) -> dict[str, tuple[str | None, list[tuple]]]:
    """What a fresh index of the files on disk holds: path -> (skip code, chunk keys)."""
    out = {}
    for entry in iter_files(index.root, index.settings):
        _, result = index._read(entry)  # the indexer's own read path, nothing else
        keys = sorted((entry.rel, c.start_line, c.end_line, c.symbol, c.content_hash)
                      for c in result.chunks)
        out[entry.rel] = (result.skipped.code if result.skipped else None, keys)
    return out


def _stored(index: WorkspaceIndex) -> dict[str, tuple[str | None, list[tuple]]]:
    store = index.store
    out = {}
    for state in store.all_files():
        keys = sorted((c.path, c.start_line, c.end_line, c.symbol, c.content_hash)
                      for c in store.file_chunks(state.path))
        out[state.path] = (state.skip_code, keys)
    return out


def _check_invariants(index: WorkspaceIndex) -> int:
    """The store agrees with itself and with the disk; returns the number of chunks."""
    store = index.store
    db = sqlite3.connect(f"file:{store.db_path}?mode=ro", uri=True)
    try:
        chunk_ids = {r[0] for r in db.execute("SELECT id FROM chunks")}
        vectors = {}
        for cid, layer in db.execute("SELECT chunk_id, exit_layer FROM vectors"):
            vectors.setdefault(cid, set()).add(layer)
        dup = db.execute("SELECT f.path, c.start_line, c.end_line, c.content_hash, COUNT(*) "
                         "FROM chunks c JOIN files f ON f.id = c.file_id "
                         "GROUP BY 1, 2, 3, 4 HAVING COUNT(*) > 1").fetchall()
        orphans = db.execute("SELECT COUNT(*) FROM chunks WHERE file_id NOT IN "
                             "(SELECT id FROM files)").fetchone()[0]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    assert dup == [] and orphans == 0, (dup, orphans)
    deep_rule = {c for c in chunk_ids if index.rerank_exit in vectors.get(c, ())}
    fresh_rule = {c for c in chunk_ids
                  if index.index_exit in vectors.get(c, ()) and c not in deep_rule}
    deep = {int(i) for i in store.deep_ann.ids()}
    fresh = {int(i) for i in store.fresh_ann.ids()}
    assert deep == deep_rule, (len(deep), len(deep_rule))
    assert fresh == fresh_rule, (len(fresh), len(fresh_rule))
    assert deep | fresh == chunk_ids  # every chunk has its shallow vector (same transaction)
    # Every file stored at its current disk content holds exactly that content's chunks.
    expected = _expected(index)
    on_disk = {s.path: s for s in store.all_files()}
    for rel, (skip, keys) in _stored(index).items():
        if rel not in expected:
            continue  # deleted on disk since: the next scan removes it
        state = on_disk[rel]
        path = index.root / rel
        st = path.stat()
        if state.mtime_ns == st.st_mtime_ns and state.size == st.st_size:
            assert (skip, keys) == expected[rel], rel
    return len(chunk_ids)


def _vectors_by_key(index: WorkspaceIndex, layer: int) -> dict[tuple, np.ndarray]:
    store = index.store
    out = {}
    for state in store.all_files():
        chunks = store.file_chunks(state.path)
        vecs = store.get_vectors(layer, [c.id for c in chunks])
        for c in chunks:
            out[(c.path, c.start_line, c.end_line, c.symbol, c.content_hash)] = vecs.get(c.id)
    return out


def _equals_fresh_index(index: WorkspaceIndex, model, tmp: Path) -> None:
    """After catch-up and the deep pass: the store equals a fresh index, vectors included."""
    index.scan()
    while index.fill_deep(256):
        pass
    _check_invariants(index)
    fresh = WorkspaceIndex.open(index.root, _settings(tmp), model)
    try:
        fresh.scan()
        while fresh.fill_deep(256):
            pass
        assert _stored(index) == _stored(fresh)
        for layer in (index.index_exit, index.rerank_exit):
            mine, theirs = _vectors_by_key(index, layer), _vectors_by_key(fresh, layer)
            assert mine.keys() == theirs.keys()
            keys = list(theirs)
            matrix = np.stack([theirs[k] / np.linalg.norm(theirs[k]) for k in keys])
            for key, vec in mine.items():
                assert vec is not None and theirs[key] is not None, key
                sims = matrix @ (vec / np.linalg.norm(vec))
                cos = float(sims[keys.index(key)])
                # Not asked to be bit-equal (the index may have been written by another
                # process and build): clearly its own text's vector.
                assert cos > 0.95, (key, layer, cos)
                best = keys[int(np.argmax(sims))]
                assert best[4] == key[4] or sims.max() - cos < 0.01, (key, best, layer)
    finally:
        fresh.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _tally(killed: bool, kills: int, completed: int, delay: float) -> tuple[int, int, float]:
    """Count a round and adapt the kill delay, so that kills spread over a run: a run that
    finished first shortens the delay, a kill lengthens it."""
    if killed:
        return kills + 1, completed, min(8.0, delay * 1.1)
    return kills, completed + 1, max(0.3, delay * 0.7)


def _run_and_kill(root: Path, index_dir: Path, model_path: Path, mode: str, paths: list[str],
                  rng: random.Random, max_delay: float) -> bool:
    """Start the driver, SIGKILL it at a random moment after it is ready. True if killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(root), str(index_dir), str(model_path), mode,
         json.dumps(paths)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return True
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _edit(root: Path, rng: random.Random, serial: int) -> list[str]:
    """A random burst of edits on disk; returns the paths touched (workspace-relative)."""
    py = sorted(p for p in root.rglob("*.py"))
    touched = []
    for _ in range(rng.randint(1, 4)):
        action = rng.choice(["modify", "create", "delete", "rename", "append"])
        if action in ("delete", "rename") and len(py) < 4:
            action = "create"
        if action == "modify":
            target = rng.choice(py)
            donor = rng.choice(py)
            target.write_text(donor.read_text() + f"\n\nX_{serial} = {rng.random()!r}\n")
        elif action == "append":
            target = rng.choice(py)
            with target.open("a") as fh:
                fh.write(f"\n\ndef added_{serial}_{rng.randrange(1000)}(x):\n"
                         f"    return x * {rng.randrange(100)} + {serial}\n")
        elif action == "create":
            target = root / "pkg" / f"new_{serial}_{rng.randrange(1000)}.py"
            target.write_text(rng.choice(py).read_text() + f"\n# variant {serial}\n")
            py.append(target)
        elif action == "delete":
            target = py.pop(rng.randrange(len(py)))
            target.unlink()
        else:
            source = py.pop(rng.randrange(len(py)))
            target = root / "pkg" / f"renamed_{serial}_{source.name}"
            os.rename(source, target)
            touched.append(source.relative_to(root).as_posix())
            py.append(target)
        touched.append(target.relative_to(root).as_posix())
        serial += 1
    return touched


@pytest.mark.slow
def test_kill_9_during_first_index_and_updates_never_leaves_a_wrong_index(
        tmp_path, model, model_path):
    rng = random.Random(int(os.environ.get("MOSE_CRASH_SEED", "7")))
    root = make_workspace(tmp_path / "ws")
    for name in ("string.py", "bisect.py", "heapq.py"):
        shutil.copyfile(STDLIB / name, root / name)
    index_dir = tmp_path / "idx"
    settings = _settings(index_dir, threads=1)
    first_kills = max(1, KILLS // 2)
    kills = rounds = completed = 0
    chunk_counts = []
    started = time.monotonic()

    # Phase 1: first indexes (scan + deep pass), killed; each completed one starts over.
    # The kill delay adapts to how long a run takes here, so that kills spread over the run
    # (a run that finished first shortens it, a kill lengthens it).
    delay = 5.0
    while kills < first_kills:
        rounds += 1
        killed = _run_and_kill(root, index_dir, model_path, "scan", [], rng, max_delay=delay)
        kills, completed, delay = _tally(killed, kills, completed, delay)
        index = WorkspaceIndex.open(root, settings, model)
        try:
            chunk_counts.append(_check_invariants(index))
            whole = index.store.stats().deep_coverage == 1.0 and \
                _stored(index) == _expected(index)
        finally:
            index.close()
        if whole or rounds % 4 == 0:  # start a new first index from nothing
            shutil.rmtree(index_dir)
    index = WorkspaceIndex.open(root, settings, model)
    try:
        _equals_fresh_index(index, model, tmp_path / "ref1")
    finally:
        index.close()

    # Phase 2: incremental updates (watcher-style update_paths, or a catch-up scan), killed.
    serial = 0
    delay = 4.0
    while kills < KILLS:
        rounds += 1
        touched = _edit(root, rng, serial)
        serial += 10
        mode = rng.choice(["update", "scan"])
        killed = _run_and_kill(root, index_dir, model_path, mode, touched, rng, max_delay=delay)
        kills, completed, delay = _tally(killed, kills, completed, delay)
        index = WorkspaceIndex.open(root, settings, model)
        try:
            _check_invariants(index)
            index.scan()  # what a restarted server does first
            chunk_counts.append(_check_invariants(index))
            assert _stored(index) == _expected(index)  # nothing lost, stale or duplicated
        finally:
            index.close()
    index = WorkspaceIndex.open(root, settings, model)
    try:
        _equals_fresh_index(index, model, tmp_path / "ref2")
    finally:
        index.close()
    print(f"\ncrash test: {kills} kills in {rounds} rounds ({completed} runs finished first), "
          f"{time.monotonic() - started:.0f} s, chunks per check {min(chunk_counts)}.."
          f"{max(chunk_counts)}")
    assert kills >= KILLS


# ----------------------------------------------------------------------------- damaged files


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mose_lsp", *args], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "zeroed-header"])
def test_damaged_database_is_refused_with_a_message_or_rebuilt(tmp_path, model_path, damage):
    ws = make_workspace(tmp_path / "ws")
    idx = tmp_path / "idx"
    ok = _run_cli("index", str(ws), "--model", str(model_path), "--index-dir", str(idx),
                  "--no-deep")
    assert ok.returncode == 0, ok.stderr
    db = idx / "store.sqlite3"
    data = db.read_bytes()
    for extra in ("-wal", "-shm"):
        (idx / ("store.sqlite3" + extra)).unlink(missing_ok=True)
    if damage == "truncated":
        db.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        db.write_bytes(os.urandom(len(data)))
    else:
        db.write_bytes(b"\0" * 100 + data[100:])
    run = _run_cli("search", "edit distance", "-w", str(ws), "--model", str(model_path),
                   "--index-dir", str(idx), "--no-update", "--json")
    if run.returncode == 0:  # accepted: then the answer must be right (nothing wrong served)
        hits = json.loads(run.stdout)["hits"]
        assert hits and hits[0]["symbol"] == "levenshtein_distance"
    else:
        # --json: the error is a JSON object on stdout (docs/cli.md), naming the index and the fix.
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        message = json.loads(run.stdout)["error"]["message"]
        assert str(idx) in message, message
        assert "--rebuild" in message or "delete" in message, message
        # ... and the advice works: a rebuild gives a working index again.
        again = _run_cli("index", str(ws), "--model", str(model_path), "--index-dir", str(idx),
                         "--no-deep", "--rebuild")
        assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_vector_indexes_are_rebuilt_through_the_cli(tmp_path, model_path, damage):
    ws = make_workspace(tmp_path / "ws")
    idx = tmp_path / "idx"
    assert _run_cli("index", str(ws), "--model", str(model_path), "--index-dir", str(idx)
                    ).returncode == 0
    hnsw = [p for p in idx.iterdir() if p.suffix == ".hnsw"]
    assert hnsw
    for p in hnsw:
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    run = _run_cli("search", "edit distance between two strings", "-w", str(ws), "--model",
                   str(model_path), "--index-dir", str(idx), "--no-update", "--json", "-k", "3")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["hits"][0]["symbol"] == "levenshtein_distance"


def _bad_model(tmp_path: Path, model_path: Path) -> Path:
    bad = tmp_path / "badmodel"
    shutil.copytree(model_path, bad)
    onnx = sorted(bad.rglob("*.onnx"))
    assert onnx
    with onnx[0].open("r+b") as fh:  # flip bytes in the middle of an exit file
        fh.seek(onnx[0].stat().st_size // 2)
        fh.write(b"\xde\xad\xbe\xef")
    return bad


def test_model_dir_with_a_bad_checksum_is_refused_by_the_cli(tmp_path, model_path, workspace):
    bad = _bad_model(tmp_path, model_path)
    run = _run_cli("index", str(workspace), "--model", str(bad),
                   "--index-dir", str(tmp_path / "idx"))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "checksum" in run.stderr.lower(), run.stderr
    assert not (tmp_path / "idx" / "store.sqlite3").exists()  # refused before touching anything


async def test_model_dir_with_a_bad_checksum_is_refused_by_the_server(tmp_path, model_path):
    from lsprotocol import types as lsp
    from pygls.exceptions import JsonRpcException
    from pygls.uris import from_fs_path
    from pytest_lsp import ClientServerConfig

    ws = make_workspace(tmp_path / "ws")
    bad = _bad_model(tmp_path, model_path)
    client = await ClientServerConfig(server_command=[
        sys.executable, "-m", "mose_lsp", "serve", "--log-level", "warning"]).start()
    try:
        await asyncio.wait_for(client.initialize_session(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(),
            workspace_folders=[lsp.WorkspaceFolder(uri=from_fs_path(str(ws)), name="ws")],
            initialization_options={"mose": {"model": str(bad), "indexDir": str(tmp_path / "i"),
                                             "watcher": "off"}})), 60)

        async def cmd(name, *args):
            return await asyncio.wait_for(client.workspace_execute_command_async(
                lsp.ExecuteCommandParams(command=name, arguments=list(args))), 60)

        with pytest.raises(JsonRpcException) as info:
            await cmd("mose.search", {"query": "edit distance"})
        assert "checksum" in info.value.message.lower(), info.value.message
        status = await cmd("mose.status")  # the server keeps answering
        assert status["folders"][0]["state"] == "error"
        assert "checksum" in (status["folders"][0]["error"] or "").lower()
        with pytest.raises(JsonRpcException) as again:  # and keeps refusing, with the reason
            await cmd("mose.similar", {"uri": from_fs_path(str(ws / "shlex.py")),
                                       "position": {"line": 10, "character": 0}})
        assert "checksum" in again.value.message.lower(), again.value.message
        assert any("checksum" in m.message.lower() for m in client.messages)
    finally:
        await asyncio.wait_for(client.shutdown_session(), 60)
        await client.stop()
