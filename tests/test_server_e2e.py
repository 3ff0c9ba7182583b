"""End to end: the real `mose serve` as a subprocess, driven over stdio with pytest-lsp.

One server for the module (loading the model dominates), one test per behaviour, in order:
first index with progress, search, an unsaved edit found by mose.similar and mose.search
without saving, closing the buffer restores the disk version, a file deleted on disk leaves the
index through the watcher, a second folder is added and searched, malformed requests get
JSON-RPC errors and the server goes on, workspace/symbol answers, cancellation, and shutdown
leaves a consistent index. A failing test does not stop the ones after it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import make_workspace
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.uris import from_fs_path
from pytest_lsp import ClientServerConfig, LanguageClient, make_test_lsp_client

pytestmark = [pytest.mark.slow,  # the server as a subprocess
              pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROMAN_DISK = '''\
def roman_to_int(numeral: str) -> int:
    """Value of a Roman numeral like MCMXCIV."""
    table = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    result = 0
    for here, after in zip(numeral, numeral[1:] + " "):
        value = table[here]
        result += -value if table.get(after, 0) > value else value
    return result
'''

ROMAN_BUFFER = '''

def parse_roman_numeral(text: str) -> int:
    """Convert a Roman numeral such as XIV to an integer."""
    values = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100}
    total = 0
    for a, b in zip(text, text[1:] + ' '):
        total += -values[a] if values.get(b, 0) > values[a] else values[a]
    return total
'''

HAVERSINE = '''\
import math


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance along the Earth's surface between two latitude/longitude points."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))
'''

TIMEOUT = 60.0


def uri(path: Path) -> str:
    return from_fs_path(str(path))


async def until(check, what: str, timeout: float = TIMEOUT, every: float = 0.1):
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def progress_done(client: LanguageClient, title: str):
    """The reports of a finished progress whose begin has ``title``, or None."""
    for reports in client.progress_reports.values():
        if reports and isinstance(reports[0], lsp.WorkDoneProgressBegin) \
                and reports[0].title == title and isinstance(reports[-1], lsp.WorkDoneProgressEnd):
            return reports
    return None


async def command(client: LanguageClient, name: str, *args):
    return await asyncio.wait_for(client.workspace_execute_command_async(
        lsp.ExecuteCommandParams(command=name, arguments=list(args))), TIMEOUT)


async def search(client: LanguageClient, query: str, **extra) -> list[dict]:
    return (await command(client, "mose.search", {"query": query, **extra}))["results"]


async def expect_error(client: LanguageClient, code: int, name: str, *args) -> str:
    with pytest.raises(JsonRpcException) as info:
        await command(client, name, *args)
    assert info.value.code == code, info.value
    return info.value.message


def make_client() -> LanguageClient:
    """pytest-lsp's client, also recording the server's mose/documentIndexed notifications."""
    client = make_test_lsp_client()
    client.indexed = []  # type: ignore[attr-defined]

    @client.feature("mose/documentIndexed")
    def document_indexed(ls: LanguageClient, params) -> None:
        ls.indexed.append(params)  # type: ignore[attr-defined]

    return client


def capabilities() -> lsp.ClientCapabilities:
    return lsp.ClientCapabilities(
        window=lsp.WindowClientCapabilities(work_done_progress=True),
        workspace=lsp.WorkspaceClientCapabilities(
            workspace_folders=True, configuration=True,
            did_change_watched_files=lsp.DidChangeWatchedFilesClientCapabilities(
                dynamic_registration=False)),
        text_document=lsp.TextDocumentClientCapabilities(
            synchronization=lsp.TextDocumentSyncClientCapabilities()),
    )


class Session:
    def __init__(self, client: LanguageClient, tmp: Path, ws1: Path, ws2: Path, index_dir: Path,
                 result: lsp.InitializeResult):
        self.client, self.tmp, self.ws1, self.ws2 = client, tmp, ws1, ws2
        self.index_dir, self.result = index_dir, result
        self.strings = ws1 / "pkg" / "strings.py"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def session(tmp_path_factory, model_path):
    tmp_path = tmp_path_factory.mktemp("e2e")
    ws1 = make_workspace(tmp_path / "ws1")
    (ws1 / "pkg" / "numerals.py").write_text(ROMAN_DISK)
    ws2 = tmp_path / "ws2"
    (ws2 / "geo").mkdir(parents=True)
    (ws2 / "geo" / "haversine.py").write_text(HAVERSINE)
    index_dir = tmp_path / "indexes"

    config = ClientServerConfig(server_command=[sys.executable, "-m", "mose_lsp", "serve",
                                                "--log-level", "warning"],
                                client_factory=make_client)
    client = await config.start()
    try:
        result = await asyncio.wait_for(client.initialize_session(lsp.InitializeParams(
            capabilities=capabilities(),
            workspace_folders=[lsp.WorkspaceFolder(uri=uri(ws1), name="ws1")],
            initialization_options={"mose": {
                "model": str(model_path), "indexDir": str(index_dir), "debounceMs": 100,
                "watcher": "watchdog", "threads": 2, "limit": 0, "colour": "blue",
                "notifications": True}},
        )), TIMEOUT)
        yield Session(client, tmp_path, ws1, ws2, index_dir, result)
    finally:
        if client._server is not None and client._server.returncode is None:
            await asyncio.wait_for(client.shutdown_session(), TIMEOUT)
        await client.stop()


async def test_initialize_answers_and_warns_about_invalid_settings(session):
    commands = session.result.capabilities.execute_command_provider.commands
    assert set(commands) >= {"mose.search", "mose.similar", "mose.status", "mose.reindex"}
    assert session.result.capabilities.workspace_symbol_provider
    client = session.client
    # Invalid settings fall back to defaults, and the user is told which.
    warning = await until(lambda: [m for m in client.messages
                                   if m.type == lsp.MessageType.Warning], "a warning")
    assert "'limit'" in warning[0].message and "'colour'" in warning[0].message
    assert "notifications" not in warning[0].message  # the opt-in is not a setting


async def test_first_index_reports_progress(session):
    # The bar begins before the model loads and ends when the first scan is done.
    reports = await until(lambda: progress_done(session.client, "mose: indexing ws1"),
                          "the first index to finish")
    percents = [r.percentage for r in reports[1:-1] if r.percentage is not None]
    assert reports[0].percentage == 0 and percents and percents[-1] == 100
    assert percents == sorted(percents)


async def test_search_finds_the_planted_function(session):
    client, ws1 = session.client, session.ws1
    await until(lambda: progress_done(client, "mose: indexing ws1"), "the first index")
    hits = await search(client, "edit distance between two strings", k=3)
    top = hits[0]
    assert top["symbol"] == "levenshtein_distance"
    assert top["uri"] == uri(ws1 / "pkg" / "strings.py") and top["folder"] == uri(ws1)
    assert top["range"] == {"start": {"line": 0, "character": 0},
                            "end": {"line": 9, "character": 0}}
    # Where an editor lands: the name on the definition line.
    assert top["selectionRange"] == {"start": {"line": 0, "character": 4},
                                     "end": {"line": 0, "character": 24}}
    assert top["kind"] == "function" and top["language"] == "python"
    assert top["snippet"].startswith("def levenshtein_distance")
    assert isinstance(top["score"], float) and isinstance(top["exit"], int)
    status = await command(client, "mose.status")
    assert status["settings"]["limit"] == 10  # the invalid 0 fell back to the default
    assert len(await search(client, "split a shell command line")) == 10


async def test_unsaved_edit_is_searchable_and_closing_restores_the_disk(session):
    client, ws1, strings = session.client, session.ws1, session.strings
    await until(lambda: progress_done(client, "mose: indexing ws1"), "the first index")
    disk_text = strings.read_text()
    lines = disk_text.count("\n")
    client.text_document_did_open(lsp.DidOpenTextDocumentParams(text_document=lsp.TextDocumentItem(
        uri=uri(strings), language_id="python", version=1, text=disk_text)))
    client.text_document_did_change(lsp.DidChangeTextDocumentParams(
        text_document=lsp.VersionedTextDocumentIdentifier(uri=uri(strings), version=2),
        content_changes=[lsp.TextDocumentContentChangePartial(
            range=lsp.Range(start=lsp.Position(line=lines, character=0),
                            end=lsp.Position(line=lines, character=0)),
            text=ROMAN_BUFFER)]))
    try:
        # mose.similar from the buffer, before the edit is even indexed: the query is the
        # new function (from the buffer), the answer the similar function on disk.
        new_line = lines + 3
        similar = (await command(client, "mose.similar", {
            "uri": uri(strings), "position": {"line": new_line, "character": 4},
            "k": 3}))["results"]
        assert similar[0]["symbol"] == "roman_to_int", similar
        # ... and once indexed, mose.similar from the other file finds the unsaved function.
        numerals = {"uri": uri(ws1 / "pkg" / "numerals.py"),
                    "position": {"line": 2, "character": 0}, "k": 3}

        async def similar_finds_buffer():
            found = (await command(client, "mose.similar", numerals))["results"]
            return [h for h in found if h["symbol"] == "parse_roman_numeral"]

        found = await until(similar_finds_buffer, "mose.similar to find the unsaved function")
        # The client opted in to mose/documentIndexed: it says when an edit became searchable.
        indexed = await until(lambda: {n.version: n.chunks for n in client.indexed
                                       if n.uri == uri(strings)}, "mose/documentIndexed")
        assert indexed[2] >= 1
        assert indexed.get(1, 0) == 0  # the opened buffer equal to the disk: nothing to embed
        assert found[0]["uri"] == uri(strings)
        assert found[0]["range"]["start"]["line"] == lines + 2
        assert strings.read_text() == disk_text  # nothing was saved
        own = (await command(client, "mose.similar", numerals))["results"]
        assert all(h["symbol"] != "roman_to_int" for h in own)  # the query's own chunk is out
    finally:
        # Closing the buffer without saving brings the disk version back.
        client.text_document_did_close(lsp.DidCloseTextDocumentParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri(strings))))

    async def buffer_gone():
        found = await search(client, "convert a Roman numeral such as XIV to an integer")
        return all(h["symbol"] != "parse_roman_numeral" for h in found)

    await until(buffer_gone, "the disk version to come back")


async def test_a_file_deleted_on_disk_leaves_the_index(session):
    client, ws1 = session.client, session.ws1
    await until(lambda: progress_done(client, "mose: indexing ws1"), "the first index")
    query = "delay calling a function until input stops"
    assert (await search(client, query, k=3))[0]["path"] == "web/timing.js"
    (ws1 / "web" / "timing.js").unlink()

    async def timing_gone():
        return all(h["path"] != "web/timing.js" for h in await search(client, query, k=20))

    await until(timing_gone, "the deleted file to leave the index")
    assert await search(client, query, k=5, languages=["javascript"]) == []  # the only JS file


async def test_a_second_folder_is_indexed_and_searched(session):
    client, ws1, ws2 = session.client, session.ws1, session.ws2
    client.workspace_did_change_workspace_folders(lsp.DidChangeWorkspaceFoldersParams(
        event=lsp.WorkspaceFoldersChangeEvent(
            added=[lsp.WorkspaceFolder(uri=uri(ws2), name="ws2")], removed=[])))
    await until(lambda: progress_done(client, "mose: indexing ws2"), "ws2 to be indexed")
    geo = "great-circle distance between two latitude longitude points"
    hits = await search(client, geo, k=3)
    assert hits[0]["symbol"] == "great_circle_km" and hits[0]["folder"] == uri(ws2)
    assert hits[0]["uri"] == uri(ws2 / "geo" / "haversine.py")
    only_ws1 = await search(client, geo, k=3, folder=uri(ws1))
    assert all(h["folder"] == uri(ws1) for h in only_ws1)


async def test_malformed_requests_get_errors_and_the_server_goes_on(session):
    client, strings, tmp_path = session.client, session.strings, session.tmp
    await expect_error(client, -32602, "mose.search", "not an object")
    await expect_error(client, -32602, "mose.search")
    message = await expect_error(client, -32602, "mose.search", {"query": "x", "k": "ten"})
    assert "'k'" in message
    await expect_error(client, -32602, "mose.search", {"query": "   "})
    await expect_error(client, -32602, "mose.search", {"query": "x", "folder": uri(tmp_path)})
    await expect_error(client, -32602, "mose.similar", {"uri": uri(tmp_path / "elsewhere.py")})
    await expect_error(client, -32602, "mose.similar", {
        "uri": uri(strings), "position": {"line": -1}})
    await expect_error(client, -32602, "mose.nonsense", {})
    assert (await search(client, "edit distance between two strings", k=1))[0]["symbol"] \
        == "levenshtein_distance"


async def test_workspace_symbol_without_any_plugin(session):
    client = session.client
    await until(lambda: progress_done(client, "mose: indexing ws1"), "the first index")
    symbols = await asyncio.wait_for(client.workspace_symbol_async(
        lsp.WorkspaceSymbolParams(query="edit distance between two strings")), TIMEOUT)
    assert symbols[0].name == "levenshtein_distance"
    assert symbols[0].kind == lsp.SymbolKind.Function
    assert symbols[0].location.uri == uri(session.strings)
    # The location is the name (where clients jump); data.range is the whole chunk.
    assert symbols[0].location.range == lsp.Range(start=lsp.Position(line=0, character=4),
                                                  end=lsp.Position(line=0, character=24))
    assert symbols[0].data["range"]["end"] == {"line": 9, "character": 0}
    assert await client.workspace_symbol_async(lsp.WorkspaceSymbolParams(query="")) == []


async def test_status_lists_folders_counts_and_skipped_files(session):
    client, ws1 = session.client, session.ws1
    await until(lambda: progress_done(client, "mose: indexing ws1"), "the first index")
    status = await command(client, "mose.status", {"folder": uri(ws1)})
    one = status["folders"][0]
    assert one["state"] == "ready" and one["watcher"] == "watchdog"
    assert one["skipped"] == {"binary": 1, "unsupported": 1}
    assert {s["path"] for s in one["skippedFiles"]} == {"notes.txt", "image.png"}
    assert one["model"]["indexExit"] < one["model"]["rerankExit"]
    assert one["chunks"] > 10
    assert one["indexDir"].startswith(str(session.index_dir))
    assert 0.0 <= one["deepCoverage"] <= 1.0

    async def settled():
        st = (await command(client, "mose.status", {"folder": uri(ws1)}))["folders"][0]
        return st["pending"] == {"paths": 0, "documents": 0}

    await until(settled, "no pending work")


async def test_reindex_and_cancelling_a_rebuild(session):
    client, ws1 = session.client, session.ws1
    await until(lambda: progress_done(client, "mose: indexing ws1"), "the first index")
    before = (await command(client, "mose.status", {"folder": uri(ws1)}))["folders"][0]
    # mose.reindex answers when the scan is done.
    again = await command(client, "mose.reindex", {"folder": uri(ws1)})
    assert again["folders"][0]["lastScan"]["filesUnchanged"] >= 1

    # $/cancelRequest: a rebuild of ws1 is answered RequestCancelled, its scan stops
    # (the folder is left "cancelled"), and mose.reindex resumes it.
    def bars() -> list:
        return [r for r in client.progress_reports.values()
                if r and getattr(r[0], "title", "") == "mose: indexing ws1"]

    n_bars = len(bars())
    rebuild = asyncio.ensure_future(client.protocol.send_request_async(
        lsp.WORKSPACE_EXECUTE_COMMAND, lsp.ExecuteCommandParams(
            command="mose.reindex", arguments=[{"folder": uri(ws1), "rebuild": True}]),
        msg_id="rebuild-ws1"))
    await until(lambda: len(bars()) > n_bars, "the rebuild to begin", every=0.01)
    client.protocol.notify(lsp.CANCEL_REQUEST, lsp.CancelParams(id="rebuild-ws1"))
    with pytest.raises(JsonRpcException) as info:
        await asyncio.wait_for(rebuild, TIMEOUT)
    assert info.value.code == -32800

    async def ws1_state():
        st = await command(client, "mose.status", {"folder": uri(ws1)})
        return st["folders"][0]["state"] if st["folders"][0]["state"] != "loading" else None

    assert await until(ws1_state, "the cancelled rebuild") in ("indexing", "cancelled")
    await until(lambda: all(isinstance(r[-1], lsp.WorkDoneProgressEnd) for r in bars()),
                "the cancelled scan to end")
    assert await ws1_state() == "cancelled"
    resumed = await command(client, "mose.reindex", {"folder": uri(ws1)})
    assert resumed["folders"][0]["lastScan"]["filesSeen"] == before["files"]
    assert await ws1_state() == "ready"
    st = (await command(client, "mose.status", {"folder": uri(ws1)}))["folders"][0]
    assert st["chunks"] == before["chunks"] and st["files"] == before["files"]
    hits = await search(client, "edit distance between two strings", k=1)
    assert hits[0]["symbol"] == "levenshtein_distance"


async def test_deep_vectors_fill_in_the_background(session):
    client, ws1 = session.client, session.ws1

    async def deep_done():
        st = await command(client, "mose.status", {"folder": uri(ws1)})
        return st["folders"][0]["deepCoverage"] == 1.0

    await until(deep_done, "deep vectors of ws1")


async def test_shutdown_leaves_a_consistent_index(session, model_path):
    client = session.client
    await asyncio.wait_for(client.shutdown_session(), TIMEOUT)
    await client.stop()
    server = client._server
    assert server is not None and server.returncode == 0

    # Shutdown flushed and closed the stores: they open without a repair of the vector index.
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.server import folder_settings

    for root in (session.ws1, session.ws2):
        settings = folder_settings(Settings(model=str(model_path),
                                            index_dir=str(session.index_dir)), root.resolve())
        index = WorkspaceIndex.open(root, settings)
        try:
            assert index.store.rebuild_reason is None
            if root == session.ws1:
                assert "web/timing.js" not in {s.path for s in index.store.all_files()}
                symbols = {c.symbol for c in index.store.file_chunks("pkg/strings.py")}
                assert "parse_roman_numeral" not in symbols
        finally:
            index.close()
