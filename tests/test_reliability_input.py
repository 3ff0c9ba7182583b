"""Bad input never takes mose down: each gets a clear error or a logged skip, and it goes on.

Files: binary, 50 MB, a one-line 5 MB minified file, invalid UTF-8, symlink loops, symlinks
out of the workspace, a FIFO, a folder named like a source file, unreadable files, files that
vanish (or turn into FIFOs) between the walk and the read, a tree whose files are deleted while
it is scanned. Requests to the real server over stdio: malformed and out-of-range arguments of
every command (hand-written, then fuzzed with hypothesis), unknown methods and commands,
invalid configuration, and a burst of 10,000 file events through the watcher.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import PLANTED_PY, make_workspace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.uris import from_fs_path
from pytest_lsp import ClientServerConfig

from mose_lsp.config import Settings
from mose_lsp.indexer import WorkspaceIndex
from mose_lsp.searcher import Query, Searcher
from mose_lsp.walker import iter_files

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TIMEOUT = 120.0


def _open(root: Path, index_dir: Path, model, **extra) -> WorkspaceIndex:
    config, warnings = Settings.from_dict({"index_dir": str(index_dir), **extra})
    assert warnings == []
    return WorkspaceIndex.open(root, config, model)


def _hostile_files(ws: Path, outside: Path) -> None:
    outside.mkdir(exist_ok=True)
    (outside / "secret_algo.py").write_text("def outside_secret_function():\n    return 42\n")
    (ws / "binary.py").write_bytes(b"def f():\n\x00\x01\x02" * 50)
    with (ws / "huge.py").open("wb") as fh:  # 50 MB (sparse: the size is what counts)
        fh.truncate(50 * 2**20)
    minified = "var a=" + ",".join(f"x{i}=function(){{return {i}}}" for i in range(300_000))
    (ws / "bundle.js").write_text(minified[: 5 * 2**20] + ";")  # one line, 5 MB
    (ws / "latin1.py").write_bytes(b"def caf\xe9():\n    return '\xe9\xe8'\n" * 3)
    (ws / "noise.py").write_bytes(os.urandom(4096).replace(b"\0", b"\1"))
    os.symlink("loop_b.py", ws / "loop_a.py")  # a loop of file links
    os.symlink("loop_a.py", ws / "loop_b.py")
    os.symlink(".", ws / "self_loop")  # a folder linked to itself
    os.symlink(outside / "secret_algo.py", ws / "escape.py")  # a file link leading out
    os.symlink(outside, ws / "escape_dir")  # a folder link leading out
    os.symlink("pkg/strings.py", ws / "alias.py")  # a link inside: indexed
    os.mkfifo(ws / "pipe.py")  # would block a naive open() forever
    (ws / "folder.py").mkdir()  # a folder named like a file
    (ws / "folder.py" / "inner.py").write_text("def inner_function(x):\n    return x + 1\n")
    locked = ws / "locked.py"
    locked.write_text("def locked_function():\n    return 'locked'\n")
    locked.chmod(0)


def test_hostile_files_are_skipped_with_reasons_and_never_escape(tmp_path, model):
    ws = make_workspace(tmp_path / "ws")
    outside = tmp_path / "outside"
    _hostile_files(ws, outside)
    index = _open(ws, tmp_path / "idx", model, threads=1)
    try:
        started = time.monotonic()
        report = index.scan()
        assert time.monotonic() - started < 120  # no hang (the FIFO), no crawl (50 MB, 5 MB)
        files = {s.path: s for s in index.store.all_files()}
        assert files["binary.py"].skip_code == "binary"
        assert files["huge.py"].skip_code == "too-large"
        assert files["bundle.js"].skip_code == "too-large"  # over the 1 MB default
        assert files["noise.py"].skip_code in ("binary", "invalid-encoding")
        assert files["latin1.py"].skip_code in (None, "invalid-encoding")
        for name in ("pipe.py", "loop_a.py", "loop_b.py", "escape.py", "folder.py"):
            assert name not in files, name
        assert not any(p.startswith(("self_loop/", "escape_dir/")) for p in files)
        assert files["folder.py/inner.py"].skip_code is None
        assert files["alias.py"].skip_code is None
        if os.geteuid() == 0 or os.access(ws / "locked.py", os.R_OK):
            # root reads a chmod 000 file: it is indexed like any other (nothing to skip)
            assert files["locked.py"].skip_code is None
        else:
            assert files["locked.py"].skip_code == "unreadable"
            assert "denied" in (files["locked.py"].skip_message or "").lower()
        for path, state in files.items():  # every skip says why
            assert state.skip_code is None or state.skip_message, path
        assert report.skipped.get("too-large") == 2
        # Results never point outside the workspace or at anything but the indexed files.
        searcher = Searcher(index)
        for q in ("outside secret function returning 42", "edit distance", "function"):
            for hit in searcher.search(Query(q, k=20)):
                assert hit.path in files and not hit.path.startswith("/") \
                    and ".." not in hit.path.split("/")
                assert "outside_secret_function" not in hit.text
        # A 5 MB one-liner under a raised size limit: the chunker calls it minified.
        index.close()
        index = _open(ws, tmp_path / "idx2", model, threads=1, max_file_bytes=8_000_000)
        index.scan()
        assert index.store.file_state("bundle.js").skip_code == "minified"
        assert index.store.file_state("huge.py").skip_code == "too-large"
    finally:
        index.close()


def test_entries_that_change_between_walk_and_read(tmp_path, model):
    """The read path on entries that vanished, became FIFOs, or links leading out."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.py").write_text(PLANTED_PY)
    index = _open(ws, tmp_path / "idx", model, threads=1)
    try:
        (entry,) = list(iter_files(ws, index.settings))
        (ws / "a.py").unlink()
        _, result = index._read(entry)  # vanished
        assert result.skipped and result.skipped.code == "unreadable"
        os.mkfifo(ws / "a.py")  # swapped for a FIFO: must not block
        box: list = []
        reader = threading.Thread(target=lambda: box.append(index._read(entry)), daemon=True)
        reader.start()
        reader.join(10)
        assert box, "reading a FIFO swapped in after the walk blocked the indexer"
        assert box[0][1].skipped.code == "unreadable"
        os.unlink(ws / "a.py")
        outside = tmp_path / "outside.py"
        outside.write_text("def leaked_outside():\n    return 'leak'\n")
        os.symlink(outside, ws / "a.py")  # swapped for a link leading out
        _, result = index._read(entry)
        assert result.skipped and result.skipped.code == "unreadable"
        assert not result.chunks
        # update_paths on such paths: no error, nothing indexed from outside
        report = index.update_paths(["a.py", "gone.py"])
        assert report.files_indexed == 0
        assert all("leak" not in c.text for s in index.store.all_files()
                   for c in index.store.file_chunks(s.path))
    finally:
        index.close()


def test_files_deleted_while_a_large_tree_is_scanned(tmp_path, model):
    ws = tmp_path / "ws"
    names = []
    for d in range(30):
        (ws / f"d{d}").mkdir(parents=True)
        for f in range(100):  # 3,000 files; blank content: read and chunked, nothing to embed
            name = f"d{d}/f{f}.py"
            (ws / name).write_text("\n" * (f % 5))
            names.append(name)
    (ws / "real.py").write_text(PLANTED_PY)
    index = _open(ws, tmp_path / "idx", model, threads=1)
    stop = threading.Event()
    deleted: list[str] = []

    def deleter() -> None:
        rng = random.Random(3)
        order = names[:]
        rng.shuffle(order)
        for name in order:
            if stop.is_set():
                return
            try:
                (ws / name).unlink()
                if rng.random() < 0.3:  # some come back as folders of the same name
                    (ws / name).mkdir()
            except OSError:
                pass
            deleted.append(name)
            time.sleep(0.0005)

    thread = threading.Thread(target=deleter)
    try:
        thread.start()
        report = index.scan()  # must not raise
        stop.set()
        thread.join()
        assert report.files_seen > 0 and deleted
        index.scan()  # catch up: the store equals the tree now
        on_disk = {e.rel for e in iter_files(ws, index.settings)}
        assert {s.path for s in index.store.all_files()} == on_disk
        hits = Searcher(index).search(Query("edit distance between two strings", k=1))
        assert hits[0].path == "real.py"
    finally:
        stop.set()
        thread.join()
        index.close()


# ----------------------------------------------------------------------------- the server


class Served:
    """A real `mose serve` over stdio, driven from a background event loop so that sync
    tests (hypothesis) can call it."""

    def __init__(self, ws: Path, index_dir: Path, model_path: Path, **options):
        self.ws = ws
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = self.call(ClientServerConfig(server_command=[
            sys.executable, "-m", "mose_lsp", "serve", "--log-level", "warning"]).start())
        self.call(self.client.initialize_session(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(
                window=lsp.WindowClientCapabilities(work_done_progress=True),
                workspace=lsp.WorkspaceClientCapabilities(configuration=False)),
            workspace_folders=[lsp.WorkspaceFolder(uri=from_fs_path(str(ws)), name=ws.name)],
            initialization_options={"mose": {"model": str(model_path),
                                             "indexDir": str(index_dir), "threads": 1,
                                             "debounceMs": 100, **options}})))

    def call(self, coro, timeout: float = TIMEOUT):
        return asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(coro, timeout), self.loop).result(timeout + 5)

    def command(self, name: str, *args):
        return self.call(self.client.workspace_execute_command_async(
            lsp.ExecuteCommandParams(command=name, arguments=list(args))))

    def raw(self, method: str, params):
        return self.call(self.client.protocol.send_request_async(method, params))

    def error(self, name: str, *args) -> JsonRpcException:
        with pytest.raises(JsonRpcException) as info:
            self.command(name, *args)
        return info.value

    def alive(self) -> None:
        """A valid request still gets a valid answer."""
        found = self.command("mose.search", {"query": "edit distance between two strings",
                                             "k": 3})["results"]
        assert found and found[0]["symbol"] == "levenshtein_distance"

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            folders = self.command("mose.status")["folders"]
            if folders and all(f["state"] == "ready" for f in folders):
                return
            time.sleep(0.3)
        raise AssertionError("the server never became ready")

    def close(self) -> None:
        try:
            self.call(self.client.shutdown_session())
            self.call(self.client.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_path):
    tmp = tmp_path_factory.mktemp("served")
    ws = make_workspace(tmp / "ws")
    (tmp / "outside").mkdir()
    (tmp / "outside" / "far.py").write_text("def far_away():\n    return 1\n")
    os.symlink(tmp / "outside" / "far.py", ws / "link_out.py")
    os.mkfifo(ws / "fifo.py")
    server = Served(ws, tmp / "idx", model_path, watcher="off")
    server.wait_ready()
    yield server
    server.close()


def test_malformed_and_out_of_range_requests_get_errors(served):
    ws = served.ws
    strings = from_fs_path(str(ws / "pkg" / "strings.py"))
    invalid = -32602
    cases = [
        ("mose.search", [{"query": 42}]),
        ("mose.search", [{"query": "x", "k": 10**12}]),
        ("mose.search", [{"query": "x", "k": -1}]),
        ("mose.search", [{"query": "x", "k": 2.5}]),
        ("mose.search", [{"query": "x", "languages": "python"}]),
        ("mose.search", [{"query": "x", "kind": "sql"}]),
        ("mose.search", [{"query": "x"}, {"query": "y"}]),
        ("mose.search", [None]),
        ("mose.search", [[1, 2, 3]]),
        ("mose.similar", [{"uri": strings, "position": {"line": -5, "character": 0}}]),
        ("mose.similar", [{"uri": strings, "position": {"line": 10**9, "character": 0}}]),
        ("mose.similar", [{"uri": strings, "position": {"line": "one"}}]),
        ("mose.similar", [{"uri": strings, "range": {"start": {"line": 5, "character": 0},
                                                      "end": {"line": 2, "character": 0}}}]),
        ("mose.similar", [{"uri": strings, "range": {"start": {"line": 10**6, "character": 0},
                                                      "end": {"line": 10**6, "character": 0}}}]),
        ("mose.similar", [{"uri": "file:///etc/passwd", "position": {"line": 0, "character": 0}}]),
        ("mose.similar", [{"uri": from_fs_path(str(ws / ".." / "outside" / "far.py")),
                           "position": {"line": 0, "character": 0}}]),
        ("mose.similar", [{"uri": from_fs_path(str(ws / "pkg" / ".." / ".." / "outside" /
                                                   "far.py"))}]),
        ("mose.similar", [{"uri": from_fs_path(str(ws / "link_out.py")),
                           "position": {"line": 0, "character": 0}}]),
        ("mose.similar", [{"uri": from_fs_path(str(ws / "fifo.py")),
                           "position": {"line": 0, "character": 0}}]),
        ("mose.similar", [{"uri": from_fs_path(str(ws / "missing.py"))}]),
        ("mose.similar", [{"uri": "not a uri at all"}]),
        ("mose.similar", [{"uri": "http://example.com/x.py"}]),
        ("mose.status", [{"folder": "file:///nowhere"}]),
        ("mose.reindex", [{"folder": 12}]),
        ("mose.reindex", [{"rebuild": "yes"}]),
    ]
    for name, args in cases:
        err = served.error(name, *args)
        assert err.code in (invalid, -32603, -32600, -32803), (name, args, err)
        assert err.message and len(err.message) < 2000, (name, args)
        assert "Traceback" not in err.message
        if err.code == -32603:  # an internal error is a bug: name it
            pytest.fail(f"{name} {args}: internal error {err.message}")
    served.alive()
    with pytest.raises(JsonRpcException) as unknown:
        served.command("mose.doesNotExist", {"query": "x"})
    assert unknown.value.code in (-32601, -32602)
    with pytest.raises(JsonRpcException) as method:
        served.raw("mose/noSuchMethod", {"x": 1})
    assert method.value.code == -32601
    # Positions past the end and unknown documents in notifications: ignored, server alive.
    served.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
        text_document=lsp.VersionedTextDocumentIdentifier(uri=strings + ".nope", version=3),
        content_changes=[lsp.TextDocumentContentChangePartial(
            range=lsp.Range(start=lsp.Position(line=10**6, character=0),
                            end=lsp.Position(line=10**6, character=5)), text="x")]))
    served.client.text_document_did_close(lsp.DidCloseTextDocumentParams(
        text_document=lsp.TextDocumentIdentifier(uri="file:///never/opened.py")))
    served.alive()
    # Symbols of the workspace with odd queries.
    for query in ("", "x" * 10_000, "\0\ud7ff", "levenshtein"):
        assert isinstance(served.call(served.client.workspace_symbol_async(
            lsp.WorkspaceSymbolParams(query=query))), list)
    served.alive()


def test_invalid_configuration_is_reported_and_defaults_kept(served):
    for pushed in ("a string", 5, {"mose": 7}, {"mose": {"threads": -1, "limit": "ten",
                                                           "maxFileBytes": 10**15,
                                                           "model": 12, "exclude": "x",
                                                           "unknownKey": True}}):
        served.client.workspace_did_change_configuration(
            lsp.DidChangeConfigurationParams(settings=pushed))
    time.sleep(1.0)
    status = served.command("mose.status")
    assert status["settings"]["limit"] == 10 and status["settings"]["threads"] == 1
    warnings = [m.message for m in served.client.messages
                if m.type in (lsp.MessageType.Warning, lsp.MessageType.Error)]
    assert any("'limit'" in w for w in warnings), warnings
    served.alive()


def _json_values(depth: int = 3):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63),
                        st.floats(allow_nan=False), st.text(max_size=40),
                        st.sampled_from(["file:///", "file:///etc/passwd", "../..", "\0",
                                         "python", "text", "code", "*.py", "**"]))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
        max_leaves=12)


def _arguments():
    keys = st.sampled_from(["query", "k", "kind", "languages", "pathGlob", "folder", "uri",
                            "position", "range", "line", "character", "start", "end",
                            "rebuild"])
    positions = st.fixed_dictionaries({"line": st.integers(-10, 10**7),
                                       "character": st.integers(-10, 10**7)})
    obj = st.dictionaries(keys, st.one_of(_json_values(), positions), max_size=5)
    return st.lists(st.one_of(obj, _json_values()), max_size=3)


@settings(max_examples=int(os.environ.get("MOSE_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(["mose.search", "mose.similar", "mose.status", "mose.reindex"]),
       args=_arguments())
def test_fuzzed_command_arguments_answer_result_or_error(served, name, args):
    if name == "mose.reindex" and not (args and isinstance(args[0], dict)):
        args = [{"folder": "file:///not/a/folder"}]  # keep fuzzing cheap: no real re-scans
    try:
        result = served.command(name, *args)
        assert isinstance(result, (dict, list)), result
    except JsonRpcException as err:
        assert err.code != -32603, f"{name} {args!r}: internal error {err.message}"
        assert err.message
    served.command("mose.status")  # still answering


@pytest.mark.slow
def test_burst_of_10000_file_events_stays_responsive_and_converges(tmp_path, model_path):
    ws = make_workspace(tmp_path / "ws")
    server = Served(ws, tmp_path / "idx", model_path, watcher="watchdog")
    try:
        server.wait_ready()
        burst = ws / "burst"
        burst.mkdir()
        latencies: list[float] = []
        stop = threading.Event()

        def query_loop() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                server.alive()
                latencies.append(time.perf_counter() - t)
                time.sleep(0.2)

        querier = threading.Thread(target=query_loop)
        querier.start()
        started = time.perf_counter()
        try:
            for i in range(4000):  # 4,000 creates ...
                (burst / f"f{i}.py").write_text("\n" * (i % 3))
            for i in range(0, 4000, 2):  # ... 2,000 modifications ...
                (burst / f"f{i}.py").write_text("\n\n\n\n")
            for i in range(1, 4000, 2):  # ... 2,000 deletions ...
                (burst / f"f{i}.py").unlink()
            for i in range(2000):  # ... and 2,000 more creates: 10,000 events
                (burst / f"g{i}.py").write_text("\n")
            (burst / "marker.py").write_text(
                "def burst_marker_vector_cross_product(a, b):\n"
                '    """Cross product of two three-dimensional vectors."""\n'
                "    return (a[1]*b[2]-a[2]*b[1], a[2]*b[0]-a[0]*b[2], a[0]*b[1]-a[1]*b[0])\n")
            burst_s = time.perf_counter() - started
            expected = {e.rel for e in iter_files(ws, Settings())}
            deadline = time.monotonic() + 600
            while True:
                folder = server.command("mose.status")["folders"][0]
                if folder["files"] == len(expected) and folder["pending"]["paths"] == 0:
                    break
                assert time.monotonic() < deadline, f"did not converge: {folder}"
                time.sleep(1.0)
            converge_s = time.perf_counter() - started
        finally:
            stop.set()
            querier.join()
        hits = server.command("mose.search", {"query": "cross product of two vectors", "k": 1,
                                              "pathGlob": "burst/**"})["results"]
        assert hits and hits[0]["symbol"] == "burst_marker_vector_cross_product"
        latencies.sort()
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(f"\nburst: 10,000 events in {burst_s:.1f} s, converged after {converge_s:.1f} s, "
              f"{len(latencies)} searches meanwhile, p95 {p95 * 1000:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms")
        assert p95 < 15.0  # responsive: no request waits behind the whole burst
    finally:
        server.close()
