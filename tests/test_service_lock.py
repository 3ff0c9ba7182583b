"""The writer lock: one writer per index folder across processes, taken over when its owner
dies, never in the way of readers; and two processes indexing one workspace at once embed
each chunk once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mose_lsp.service.lock import LockBusy, WriterLock, writer_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from mose_lsp.service.lock import writer_lock
    lock = writer_lock(sys.argv[1])
    lock.acquire("test-holder")
    print("held", flush=True)
    time.sleep(600)
""")


def _spawn_holder(index_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(index_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_dead_owner_lock_is_taken_over(tmp_path):
    index_dir = tmp_path / "index"
    proc = _spawn_holder(index_dir)
    lock = WriterLock(index_dir)
    try:
        assert lock.busy()
        owner = lock.owner()
        assert owner is not None and owner.pid == proc.pid and owner.what == "test-holder"
        with pytest.raises(LockBusy) as err:
            lock.acquire("mine", timeout_s=0.2)
        assert f"pid {proc.pid}" in str(err.value)
        os.kill(proc.pid, signal.SIGKILL)  # the owner dies mid-write: no cleanup runs
        proc.wait(timeout=30)
        with lock.hold("mine", timeout_s=30):
            assert lock.held
            assert lock.owner() is not None and lock.owner().pid == os.getpid()
        assert not lock.busy() and lock.owner() is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_reentrant_in_a_thread_exclusive_between_threads(tmp_path):
    lock = writer_lock(tmp_path / "index")
    assert writer_lock(tmp_path / "index") is lock  # one per folder per process
    got: list[str] = []
    with lock.hold("outer"):
        with lock.hold("inner"):  # re-entrant
            pass
        assert lock.held

        def other() -> None:
            try:
                lock.acquire("thread", timeout_s=0.1)
                got.append("acquired")
                lock.release()
            except LockBusy:
                got.append("busy")

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert got == ["busy"]
    assert not lock.held
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert got == ["busy", "acquired"]


def test_readers_are_not_blocked_by_a_writer(tmp_path, workspace, model):
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.searcher import Query, Searcher

    settings = Settings(index_dir=str(tmp_path / "index"))
    index = WorkspaceIndex.open(workspace, settings, model)
    try:
        index.scan()
        proc = _spawn_holder(tmp_path / "index")
        try:
            assert index.update_running()
            hits = Searcher(index).search(Query("edit distance between two strings", k=3))
            assert hits and hits[0].path == "pkg/strings.py"
            status = index.store.stats()
            assert status.chunks > 0
            with pytest.raises(LockBusy):  # a write asked not to wait gives up at once
                index.flush(timeout_s=0)
        finally:
            proc.kill()
            proc.wait()
    finally:
        index.close()


CONCURRENT = textwrap.dedent("""
    import sys
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    index = WorkspaceIndex.open(sys.argv[1], Settings(index_dir=sys.argv[2], threads=1))
    try:
        report = index.scan()
    finally:
        index.close()
    print(report.chunks_embedded, flush=True)
""")


def test_two_processes_indexing_at_once_embed_each_chunk_once(tmp_path, workspace):
    log_path = tmp_path / "encode.log"
    env = {**os.environ, "MOSE_ENCODE_LOG": str(log_path)}
    index_dir = tmp_path / "index"
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(workspace), str(index_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    embedded = [int(out.split()[-1]) for out, _ in outs]
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    items = [tuple(i) for line in lines if line["purpose"] == "index" for i in line["items"]]
    assert items, "nothing was embedded"
    assert len(items) == len(set(items)), "a chunk was embedded twice"
    assert sum(embedded) == len(items)

    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex

    index = WorkspaceIndex.open(workspace, Settings(index_dir=str(index_dir)))
    try:
        assert index.store.stats().chunks == len(items)
        assert index.scan().chunks_embedded == 0
    finally:
        index.close()


def test_a_second_process_sees_the_first_ones_writes(tmp_path, workspace, model):
    """A reader's in-memory vector index catches up with another process's commits."""
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.searcher import Query, Searcher

    settings = Settings(index_dir=str(tmp_path / "index"))
    index = WorkspaceIndex.open(workspace, settings, model)
    try:
        index.scan()
        searcher = Searcher(index)
        (workspace / "pkg" / "volume.py").write_text(
            "def sphere_volume(radius):\n    return 4 / 3 * 3.14159 * radius ** 3\n")
        script = textwrap.dedent("""
            import sys
            from mose_lsp.config import Settings
            from mose_lsp.indexer import WorkspaceIndex
            index = WorkspaceIndex.open(sys.argv[1], Settings(index_dir=sys.argv[2], threads=1))
            try:
                print(index.scan().files_indexed)
            finally:
                index.close()
        """)
        out = subprocess.run([sys.executable, "-c", script, str(workspace),
                              str(tmp_path / "index")], capture_output=True, text=True,
                             timeout=600, check=True).stdout
        assert out.split()[-1] == "1"
        started = time.monotonic()
        hits = searcher.search(Query("volume of a sphere from its radius", k=3))
        assert hits and hits[0].path == "pkg/volume.py", (hits, time.monotonic() - started)
    finally:
        index.close()


OVERLAY = textwrap.dedent("""
    import sys, time
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    index = WorkspaceIndex.open(sys.argv[1], Settings(index_dir=sys.argv[2], threads=1))
    index.update_text("pkg/strings.py", open(sys.argv[3]).read())
    print("buffer", flush=True)
    time.sleep(600)
""")


def test_an_editors_unsaved_buffer_stays_while_its_owner_lives(tmp_path, workspace, model):
    """Another process's scan leaves a live client's unsaved buffer alone, and restores the
    disk version once that client has died."""
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex

    settings = Settings(index_dir=str(tmp_path / "index"))
    index = WorkspaceIndex.open(workspace, settings, model)
    try:
        index.scan()
        buffer = tmp_path / "buffer.py"
        buffer.write_text("def parse_roman_numeral(text):\n    return len(text)\n")
        proc = subprocess.Popen([sys.executable, "-c", OVERLAY, str(workspace),
                                 str(tmp_path / "index"), str(buffer)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "buffer"

            def symbols() -> set:
                return {c.symbol for c in index.store.file_chunks("pkg/strings.py")}

            assert index.scan().files_indexed == 0  # the editor's buffer is left alone
            assert index.update_paths(["pkg/strings.py"]).files_indexed == 0
            assert "parse_roman_numeral" in symbols()
        finally:
            proc.kill()
            proc.wait()
        assert index.scan().files_indexed == 1  # its owner died: the disk version is back
        assert "levenshtein_distance" in symbols() and "parse_roman_numeral" not in symbols()
    finally:
        index.close()
