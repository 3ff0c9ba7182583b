"""The stdio transport, and an answer to ``initialize`` before the LSP libraries load.

Importing pygls and lsprotocol takes most of a second (lsprotocol defines a thousand classes at
import), and an editor waits for the answer to ``initialize`` before anything else. So
:class:`EarlyStdio` starts reading stdin first thing, with nothing but the standard library,
and answers ``initialize`` as soon as it arrives with :func:`initialize_result`: the
capabilities pygls would compute for this server and this client (a test holds the two equal).
Every message, ``initialize`` included, is also kept for the serve loop, so pygls builds its
state from it as usual; its own answer to that ``initialize`` is dropped by :class:`Writer`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from .. import __version__
from ..protocol import COMMANDS

log = logging.getLogger(__name__)

ENCODINGS = ("utf-8", "utf-16", "utf-32")  # pygls's supported position encodings
SYNC_INCREMENTAL = 2


def initialize_result(params: Any) -> dict[str, Any]:
    """The server's ``InitializeResult`` for a client's ``initialize`` params (JSON), as pygls
    builds it for the features ``create_server`` registers."""
    caps = params.get("capabilities") if isinstance(params, dict) else None
    caps = caps if isinstance(caps, dict) else {}
    general = caps.get("general") or {}
    offered = general.get("positionEncodings") or []
    encoding = next((e for e in offered if e in ENCODINGS), "utf-16")
    sync_caps = (caps.get("textDocument") or {}).get("synchronization") or {}
    sync: dict[str, Any] = {"openClose": True, "change": SYNC_INCREMENTAL}
    for key in ("willSave", "willSaveWaitUntil"):  # declared by the client: "no" from us
        if sync_caps.get(key) is not None:
            sync[key] = False
    sync["save"] = False
    return {
        "capabilities": {
            "positionEncoding": encoding,
            "textDocumentSync": sync,
            "workspaceSymbolProvider": {"resolveProvider": False},
            "executeCommandProvider": {"commands": list(COMMANDS)},
            "workspace": {"workspaceFolders": {"supported": True, "changeNotifications": True},
                          "fileOperations": {}},
        },
        "serverInfo": {"name": "mose", "version": __version__},
    }


class FdReader:
    """``readline``/``read`` straight from a file descriptor. The reading thread is a daemon
    blocked in a read when the process exits; a read through ``sys.stdin.buffer`` would hold
    its lock then, which aborts the interpreter's shutdown."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def readline(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            if not self._fill():
                end = len(self.buf) - 1
                break
        line = bytes(self.buf[:end + 1])
        del self.buf[:end + 1]
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n and self._fill():
            pass
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def header_line(line: bytes, length: int | None) -> tuple[bool, int | None]:
    """One line of a message's header: (whether the header ended with a length, the content
    length so far). A blank line before any ``Content-Length`` is skipped."""
    if not line.strip():
        return length is not None, length
    name, _, value = line.decode("ascii", "replace").partition(":")
    if name.strip().lower() == "content-length":
        length = int(value.strip())
    return False, length


def read_header(readline: Callable[[], bytes]) -> int | None:
    """The content length of the next message (None at the end of input)."""
    length: int | None = None
    while line := readline():
        done, length = header_line(line, length)
        if done:
            return length
    return None


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class EarlyStdio:
    """Reads framed messages from stdin on a daemon thread from the start; answers the first
    ``initialize`` at once. Messages wait in a list until :meth:`attach` gives them a sink."""

    def __init__(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None):
        self.stdin = stdin or sys.stdin.buffer
        self.stdout = stdout or sys.stdout.buffer
        self.write_lock = threading.Lock()
        self.answered: Any = None  # the id of the `initialize` answered here
        self._lock = threading.Lock()
        self._pending: list[bytes | None] = []
        self._sink: Callable[[bytes | None], None] | None = None
        self._first = True

    def start(self) -> EarlyStdio:
        threading.Thread(target=self._run, name="mose-stdin", daemon=True).start()
        return self

    def attach(self, sink: Callable[[bytes | None], None]) -> None:
        """From now on each message (None: the end of input) goes to ``sink`` (from the
        reading thread); the ones read so far go first."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._sink = sink
            for item in pending:
                sink(item)

    def _put(self, item: bytes | None) -> None:
        with self._lock:
            if self._sink is None:
                self._pending.append(item)
            else:
                self._sink(item)

    def _run(self) -> None:
        reader = FdReader(self.stdin.fileno())
        try:
            while True:
                length = read_header(reader.readline)
                if length is None:
                    return
                body = reader.read(length)
                if len(body) < length:
                    return
                if self._first:
                    self._first = False
                    self._answer_initialize(body)
                self._put(body)
        except (OSError, ValueError) as err:
            log.info("input closed: %s", err)
        finally:
            self._put(None)

    def _answer_initialize(self, body: bytes) -> None:
        try:
            message = json.loads(body)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("method") != "initialize" \
                or "id" not in message:
            return
        answer = {"jsonrpc": "2.0", "id": message["id"],
                  "result": initialize_result(message.get("params"))}
        with self.write_lock:
            try:
                self.stdout.write(frame(json.dumps(answer).encode()))
                self.stdout.flush()
            except (OSError, ValueError):
                return
        self.answered = message["id"]


class Writer:
    """stdout for the protocol. Drops pygls's answer to an ``initialize`` already answered by
    :class:`EarlyStdio`; once the client has gone (a broken pipe), later messages (a progress
    end while closing) are dropped instead of logged as errors with a traceback."""

    def __init__(self, stream: BinaryIO, early: EarlyStdio | None = None):
        self.stream = stream
        self.early = early
        self.lock = early.write_lock if early is not None else threading.Lock()
        self.broken = False
        self._dropped = False

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass

    def write(self, data: bytes) -> None:
        if self.broken or self._is_early_answer(data):
            return
        with self.lock:
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # broken pipe, or closed
                self.broken = True

    def _is_early_answer(self, data: bytes) -> bool:
        if self._dropped or self.early is None or self.early.answered is None:
            return False
        try:
            message = json.loads(data.split(b"\r\n\r\n", 1)[1])
        except (IndexError, ValueError):
            return False
        if isinstance(message, dict) and message.get("id") == self.early.answered \
                and "method" not in message:
            self._dropped = True
            return True
        return False
