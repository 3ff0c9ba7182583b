"""The debouncer, the path batcher and the watchdog folder watcher (no LSP, no model).

Timers and file events are awaited by polling with a deadline (:func:`eventually`), never by a
fixed sleep that a loaded machine could outrun; the delays are long next to a loop turn, so
that a slow machine delays a test rather than failing it.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from mose_lsp.config import Settings
from mose_lsp.watcher import FolderWatcher, KeyedDebouncer, PathBatcher, is_ignore_file


async def eventually(condition, timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``condition()`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.01)


async def test_debouncer_runs_only_the_latest_call_per_key():
    loop = asyncio.get_running_loop()
    calls: list[tuple[str, int]] = []
    debouncer: KeyedDebouncer[str] = KeyedDebouncer(loop, 0.3)
    for version in range(5):
        debouncer.schedule("a.py", lambda v=version: calls.append(("a.py", v)))
        await asyncio.sleep(0)  # a loop turn: far less than the delay
    debouncer.schedule("b.py", lambda: calls.append(("b.py", 0)))
    assert debouncer.pending() == 2 and debouncer.pending("a.py") == 1
    await eventually(lambda: len(calls) == 2, what="both keys firing")
    assert sorted(calls) == [("a.py", 4), ("b.py", 0)]  # stale versions were dropped
    assert debouncer.pending() == 0


async def test_debouncer_cancel_and_async_jobs():
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    ran: list[str] = []
    debouncer: KeyedDebouncer[str] = KeyedDebouncer(loop, 0.02)

    async def job() -> None:
        ran.append("job")
        done.set()

    debouncer.schedule("x", lambda: ran.append("cancelled"))
    assert debouncer.cancel("x") and not debouncer.cancel("x")
    debouncer.schedule("y", job)
    await asyncio.wait_for(done.wait(), 1)
    assert ran == ["job"]
    # A per-call delay overrides the default (0: next loop turn), and close drops the rest.
    debouncer.schedule("z", lambda: ran.append("now"), 0.0)
    debouncer.schedule("w", lambda: ran.append("never"), 5.0)
    await eventually(lambda: "now" in ran, what="the zero-delay call")
    debouncer.close()
    assert ran == ["job", "now"] and debouncer.pending() == 0


async def test_batcher_coalesces_a_burst_into_one_batch():
    loop = asyncio.get_running_loop()
    batches: list[set[str]] = []
    batcher = PathBatcher(loop, 0.05, 1.0, batches.append)
    for i in range(2000):  # a `git checkout` touching 2000 files, some twice
        batcher.add([f"src/f{i % 1500}.py"])
    assert batcher.pending == 1500
    await eventually(lambda: batches, what="the batch")
    assert len(batches) == 1 and len(batches[0]) == 1500
    batcher.add(["later.py"])
    await eventually(lambda: len(batches) == 2, what="the second batch")
    assert batches[1] == {"later.py"} and batcher.batches == 2


async def test_batcher_max_delay_bounds_a_steady_stream():
    """A stream with no quiet moment of ``delay_s`` is still handed over, ``max_delay_s``
    after its first path: the batch arrives while the stream goes on."""
    loop = asyncio.get_running_loop()
    batches: list[set[str]] = []
    batcher = PathBatcher(loop, 2.0, 2.5, batches.append)
    added: set[str] = set()
    deadline = time.monotonic() + 30.0
    while not batches:  # an event every loop turn or so: never two seconds of quiet
        assert time.monotonic() < deadline, "no batch while the stream went on"
        added.add(f"log{len(added)}.py")
        batcher.add([f"log{len(added) - 1}.py"])
        await asyncio.sleep(0.01)
    batcher.add(["last.py"])
    added.add("last.py")
    batcher.flush()
    assert len(batches) >= 2 and set().union(*batches) == added


async def test_batcher_flush_and_close():
    loop = asyncio.get_running_loop()
    batches: list[set[str]] = []
    batcher = PathBatcher(loop, 10.0, 10.0, batches.append)
    batcher.add(["a", "b"])
    batcher.flush()
    assert batches == [{"a", "b"}]
    batcher.add(["c"])
    batcher.close()
    batcher.add(["d"])
    await asyncio.sleep(0.01)
    assert batches == [{"a", "b"}] and batcher.pending == 0
    with pytest.raises(ValueError):
        PathBatcher(loop, 1.0, 0.5, batches.append)


def test_is_ignore_file():
    assert is_ignore_file(".gitignore") and is_ignore_file("sub/dir/.moseignore")
    assert not is_ignore_file("gitignore.py")


async def _collect(watcher_root, settings=None, delay=0.5, skip=()):
    """A real watchdog watcher feeding a batcher; returns (watcher, batches, stop)."""
    loop = asyncio.get_running_loop()
    batches: list[set[str]] = []
    batcher = PathBatcher(loop, delay, 5.0, batches.append)
    watcher = FolderWatcher(watcher_root, settings or Settings(), loop, batcher.add, skip=skip)
    await loop.run_in_executor(None, watcher.start)
    return watcher, batches


async def _wait_batches(batches, n=1, timeout=20.0, settle=0.5):
    """Until ``n`` batches came (deadline ``timeout``), then ``settle`` more seconds: any
    late event would show up as one more batch."""
    await eventually(lambda: len(batches) >= n, timeout, f"{n} batch(es) of file events")
    await asyncio.sleep(settle)


async def test_watcher_reports_changes_and_honours_ignore_rules(tmp_path):
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "node_modules" / "pkg").mkdir(parents=True)
    (root / ".gitignore").write_text("*.log\ngenerated/\n")
    (root / "src" / "keep.py").write_text("x = 1\n")
    (root / "src" / "old.py").write_text("y = 2\n")
    index_dir = root / ".mose-index"
    index_dir.mkdir()
    watcher, batches = await _collect(root, skip=[index_dir])
    try:
        (root / "src" / "new.py").write_text("def f():\n    return 1\n")
        (root / "src" / "keep.py").write_text("x = 2\n")
        (root / "src" / "old.py").unlink()
        os.rename(root / "src" / "new.py", root / "src" / "moved.py")
        # None of these may reach the index.
        (root / ".git" / "index").write_bytes(b"\0" * 10)
        (root / "node_modules" / "pkg" / "index.js").write_text("module.exports = 1\n")
        (root / ".env").write_text("TOKEN=secret\n")
        (root / "debug.log").write_text("noise\n")
        (root / "generated").mkdir()
        (root / "generated" / "out.py").write_text("z = 3\n")
        (index_dir / "store.sqlite3").write_bytes(b"x")
        await _wait_batches(batches)
        seen = set().union(*batches)
        assert {"src/new.py", "src/keep.py", "src/old.py", "src/moved.py"} <= seen
        assert not {p for p in seen if p.startswith((".git", "node_modules", "generated",
                                                     ".mose-index"))}
        assert ".env" not in seen and "debug.log" not in seen
        assert len(batches) == 1  # one burst, one batch

        # A changed .gitignore is passed on, and the rules are read again.
        (root / ".gitignore").write_text("*.log\n")
        await _wait_batches(batches, 2)
        assert ".gitignore" in batches[1]
        (root / "generated" / "again.py").write_text("w = 4\n")
        await _wait_batches(batches, 3)
        assert "generated/again.py" in batches[2]
    finally:
        watcher.stop()
    assert not watcher.running


async def test_watcher_reports_folders_created_and_removed(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    watcher, batches = await _collect(root)
    try:
        (root / "lib").mkdir()
        await _wait_batches(batches)
        import shutil

        shutil.rmtree(root / "lib")
        await _wait_batches(batches, 2)
        assert "lib" in set().union(*batches)
    finally:
        watcher.stop()


async def test_watcher_a_checkout_of_many_files_is_one_batch(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    watcher, batches = await _collect(root, delay=1.0)
    try:
        for i in range(400):
            (root / f"m{i}.py").write_text(f"def f{i}():\n    return {i}\n")
        await _wait_batches(batches)
        assert len(batches) == 1
        assert batches[0] == {f"m{i}.py" for i in range(400)}
    finally:
        watcher.stop()
