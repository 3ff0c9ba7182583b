"""The early answer to `initialize` (mose_lsp/lsp/stdio.py) is what pygls would answer, and
the transport hands every message on and drops pygls's second answer."""

from __future__ import annotations

import asyncio
import json
import os
import queue

import pytest

from mose_lsp.lsp import create_server
from mose_lsp.lsp.stdio import EarlyStdio, Writer, frame, initialize_result

CLIENTS = [
    {},
    {"general": {"positionEncodings": ["utf-8", "utf-16"]},
     "workspace": {"workspaceFolders": True, "configuration": True,
                   "didChangeWatchedFiles": {"dynamicRegistration": True}},
     "textDocument": {"synchronization": {"willSave": True, "willSaveWaitUntil": False,
                                          "didSave": True}},
     "window": {"workDoneProgress": True}},
    {"general": {"positionEncodings": ["utf-32"]}, "notebookDocument": {
        "synchronization": {"dynamicRegistration": False}},
     "experimental": {"mose": {"notifications": True}}},
    {"general": {"positionEncodings": ["latin-1"]}},
]


class Capture:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def pygls_answer(params: dict) -> dict:
    server = create_server()
    out = Capture()
    server.protocol.set_writer(out)

    async def run() -> None:
        message = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
        server.protocol.handle_message(json.loads(json.dumps(message),
                                                  object_hook=server.protocol.structure_message))
        for _ in range(50):
            if out.data:
                return
            await asyncio.sleep(0.01)

    asyncio.run(run())
    return json.loads(out.data[-1].split(b"\r\n\r\n", 1)[1])["result"]


@pytest.mark.parametrize("caps", CLIENTS)
def test_early_answer_equals_pygls(caps):
    params = {"processId": None, "rootUri": None, "capabilities": caps}
    assert initialize_result(params) == pygls_answer(params)


def test_early_stdio_answers_at_once_and_hands_everything_on():
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    with os.fdopen(in_r, "rb", buffering=0) as stdin, os.fdopen(out_w, "wb") as stdout:
        early = EarlyStdio(stdin, stdout).start()
        init = {"jsonrpc": "2.0", "id": 7, "method": "initialize",
                "params": {"processId": None, "rootUri": None, "capabilities": {}}}
        os.write(in_w, frame(json.dumps(init).encode()))
        os.write(in_w, frame(b'{"jsonrpc": "2.0", "method": "initialized", "params": {}}'))
        with os.fdopen(out_r, "rb") as answers:
            header = answers.readline() + answers.readline()
            length = int(header.split(b":")[1].split(b"\r\n")[0])
            answer = json.loads(answers.read(length))
        assert answer["id"] == 7 and answer["result"]["serverInfo"]["name"] == "mose"
        got: queue.Queue = queue.Queue()
        early.attach(got.put)  # the messages read so far come first
        assert json.loads(got.get(timeout=10))["method"] == "initialize"
        assert json.loads(got.get(timeout=10))["method"] == "initialized"
        os.close(in_w)
        assert got.get(timeout=10) is None  # the end of input

    # pygls's own answer to that initialize is dropped; everything else is written.
    sink = Capture()
    writer = Writer(sink, early)  # type: ignore[arg-type]
    writer.write(frame(json.dumps({"jsonrpc": "2.0", "id": 7, "result": {}}).encode()))
    writer.write(frame(json.dumps({"jsonrpc": "2.0", "id": 8, "result": {}}).encode()))
    writer.write(frame(json.dumps({"jsonrpc": "2.0", "id": 7, "result": {}}).encode()))
    assert len(sink.data) == 2
