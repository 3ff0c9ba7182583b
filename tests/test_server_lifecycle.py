"""However a session ends, committed index work is kept: `mose serve` as a subprocess, ended
by shutdown + exit, shutdown then end of input, end of input alone, SIGTERM, SIGINT or
SIGHUP, right after an edit was indexed (unsaved vector-index changes in memory). After each,
the index opens with nothing to repair and holds what a fresh index of the disk holds; the
server never sent a method outside the LSP specification to this client (it did not opt in to
mose/* notifications), and its stderr stayed quiet (warnings and errors only)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from conftest import make_workspace
from lsp_wire import WireClient
from lsprotocol import types as lsp
from pygls.uris import from_fs_path

pytestmark = pytest.mark.slow  # the server as a subprocess, the model, a first index

NEW_FUNCTION = '''

def count_vowels(text: str) -> int:
    """How many vowels the text holds."""
    return sum(ch in "aeiou" for ch in text.lower())
'''

ENDINGS = {  # how the session ends -> the exit code LSP asks for
    "shutdown+exit": 0, "shutdown+eof": 0, "eof": 1, "SIGTERM": 0, "SIGINT": 0, "SIGHUP": 0,
}


def start(tmp_path: Path, model_path: Path, workspace: Path, log: Path,
          init: dict | None = None) -> WireClient:
    client = WireClient([sys.executable, "-m", "mose_lsp", "serve", "--log-level", "info",
                         "--log-file", str(log)])
    client.request("initialize", {
        "processId": None, "rootUri": None,
        "capabilities": {"window": {"workDoneProgress": True}},
        "workspaceFolders": [{"uri": from_fs_path(str(workspace)), "name": workspace.name}],
        "initializationOptions": {"mose": {
            "model": str(model_path), "indexDir": str(tmp_path / "indexes"), "watcher": "off",
            "threads": 2, "debounceMs": 50, **(init or {})}},
    })
    client.notify("initialized", {})
    return client


def status(client: WireClient) -> dict:
    return client.command("mose.status")["folders"][0]


def chunks_of(index) -> list[tuple]:
    return sorted((c.path, c.symbol or "", c.start_line, c.end_line, c.content_hash)
                  for f in index.store.all_files() for c in index.store.file_chunks(f.path))


def end_session(client: WireClient, ending: str) -> None:
    if ending.startswith("shutdown"):
        shutdown = client.request_async("shutdown")
        if ending == "shutdown+exit":
            assert "error" not in client.response(shutdown)
            client.notify("exit")
        else:  # what Neovim's :qa does: the end of input right after the request
            client.close_input()
    elif ending == "eof":
        client.close_input()
    else:
        client.proc.send_signal(getattr(signal, ending))


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_ending_keeps_the_index(tmp_path, model_path, ending):
    ws = make_workspace(tmp_path / "ws")
    log = tmp_path / "server.log"
    client = start(tmp_path, model_path, ws, log)
    try:
        client.until(lambda: status(client)["state"] == "ready", "the first index")
        symbols = client.request("workspace/symbol", {"query": "edit distance between two strings"})
        top = symbols[0]
        assert top["name"] == "levenshtein_distance"
        # The location is the symbol's name (where editors jump); data.range the whole chunk.
        assert top["location"]["range"]["start"] == {"line": 0, "character": 4}
        assert top["data"]["range"]["start"]["line"] == 0
        client.until(lambda: status(client)["deepCoverage"] == 1.0, "the deep pass")
        # An unsaved edit, indexed: vectors added after the last save of the vector index.
        strings = ws / "pkg" / "strings.py"
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": from_fs_path(str(strings)), "languageId": "python", "version": 1,
            "text": strings.read_text() + NEW_FUNCTION}})
        client.until(lambda: (s := status(client))["openDocuments"] == 1
                     and s["pending"]["documents"] == 0, "the edit to be indexed")
        end_session(client, ending)
        assert client.wait(60) == ENDINGS[ending]
    finally:
        client.kill()

    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text
    assert "closing the indexes" in text
    quiet = [line for line in client.stderr if " INFO " in line or " DEBUG " in line]
    assert quiet == [], quiet
    spec = set(lsp.METHOD_TO_TYPES)
    assert client.methods() <= spec, client.methods() - spec  # no mose/* to this client

    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.server import folder_settings

    settings = folder_settings(Settings(model=str(model_path), index_dir=str(tmp_path / "indexes")),
                               ws.resolve())
    index = WorkspaceIndex.open(ws, settings)
    try:
        assert index.store.rebuild_reason is None, index.store.recovery  # nothing to repair
        kept = chunks_of(index)
    finally:
        index.close()
    fresh = WorkspaceIndex.open(ws, Settings(model=str(model_path),
                                             index_dir=str(tmp_path / "fresh")))
    try:
        fresh.scan()
        assert kept == chunks_of(fresh)  # the unsaved buffer went back to the disk version
    finally:
        fresh.close()


def test_a_second_signal_exits_at_once(tmp_path, model_path):
    ws = make_workspace(tmp_path / "ws")
    client = start(tmp_path, model_path, ws, tmp_path / "server.log")
    try:
        client.until(lambda: status(client)["state"] in ("indexing", "ready"), "the folder")
        client.proc.send_signal(signal.SIGTERM)
        client.proc.send_signal(signal.SIGINT)
        code = client.wait(60)
        # Closed already, or cut short by whichever of the two the kernel delivered second
        # (pending signals are delivered lowest number first: SIGINT may come before SIGTERM).
        assert code in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM), code
    finally:
        client.kill()


def test_a_repeated_stop_signal_still_closes_cleanly(tmp_path, model_path):
    """Vim sends SIGTERM once per plugin that started the server: the same request twice."""
    ws = make_workspace(tmp_path / "ws")
    log = tmp_path / "server.log"
    client = start(tmp_path, model_path, ws, log)
    try:
        client.until(lambda: status(client)["state"] == "ready", "the first index")
        client.proc.send_signal(signal.SIGTERM)
        client.proc.send_signal(signal.SIGTERM)
        assert client.wait(60) == 0
        text = log.read_text()
        assert "without closing" not in text and "closed" in text, text
    finally:
        client.kill()


def test_opted_in_client_gets_document_indexed(tmp_path, model_path):
    ws = make_workspace(tmp_path / "ws")
    client = start(tmp_path, model_path, ws, tmp_path / "server.log", {"notifications": True})
    try:
        client.until(lambda: status(client)["state"] == "ready", "the first index")
        strings = ws / "pkg" / "strings.py"
        uri = from_fs_path(str(strings))
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 3,
            "text": strings.read_text() + NEW_FUNCTION}})
        note = client.until(lambda: [n for n in client.notifications
                                     if n["method"] == "mose/documentIndexed"], "the notification")
        assert note[0]["params"]["uri"] == uri and note[0]["params"]["version"] == 3
        assert note[0]["params"]["chunks"] >= 1
        assert "notifications" not in " ".join(client.command("mose.status")["warnings"])
        client.request("shutdown")
        client.notify("exit")
        assert client.wait(60) == 0
    finally:
        client.kill()


def test_tcp_session_ends_cleanly(tmp_path):
    import json
    import socket
    import subprocess
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "mose_lsp", "serve", "--tcp", "--port",
                             str(port), "--log-file", str(log)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no TCP server"
                time.sleep(0.1)
        stream = conn.makefile("rwb")

        def send(message: dict) -> None:
            body = json.dumps({"jsonrpc": "2.0", **message}).encode()
            stream.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            stream.flush()

        def answer(msg_id: int) -> dict:
            while True:
                length = None
                while (line := stream.readline()).strip() or length is None:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                message = json.loads(stream.read(length))
                if message.get("id") == msg_id:
                    return message

        send({"id": 1, "method": "initialize", "params": {
            "processId": None, "rootUri": None, "capabilities": {}}})
        assert answer(1)["result"]["serverInfo"]["name"] == "mose"
        send({"method": "initialized", "params": {}})
        send({"id": 2, "method": "shutdown"})
        assert answer(2)["result"] is None
        send({"method": "exit"})
        assert proc.wait(60) == 0
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert "ending (exit)" in log.read_text()
