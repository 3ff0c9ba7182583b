"""How the server runs and how it ends, whatever ends it.

The serve loop reads framed JSON-RPC messages (stdio, or one TCP connection) and hands them to
pygls's protocol. It ends on the first of:

- ``exit`` (exit code 0 after ``shutdown``, else 1, as LSP says);
- end of input (the client closed the pipe or died; same codes);
- SIGTERM, SIGHUP or SIGINT (code 0).

Then every folder's index is closed (flushed, nothing left to repair at the next start), at most
:data:`~mose_lsp.lsp.session.CLOSE_TIMEOUT_S`, before the process exits: a scan or an encode
step in flight notices the stop flag, and one that does not finish in time is abandoned (exit
code 1 then). A second signal exits at once. ``shutdown`` itself answers only once the indexes
are closed, so a client that sends ``shutdown`` and closes the pipe loses nothing either.

Logs: :class:`ClientLogHandler` copies records to the client as ``window/logMessage`` at the
level the user chose (``mose serve --log-level``); stderr gets warnings and errors only (some
clients file every stderr line as an error).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, BinaryIO

from lsprotocol import types as lsp

if TYPE_CHECKING:
    from .handlers import MoseLanguageServer

log = logging.getLogger(__name__)

SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
_LOG_TYPES = ((logging.ERROR, lsp.MessageType.Error), (logging.WARNING, lsp.MessageType.Warning),
              (logging.INFO, lsp.MessageType.Info), (logging.NOTSET, lsp.MessageType.Log))


class ClientLogHandler(logging.Handler):
    """Log records as ``window/logMessage`` notifications (from any thread; sent on the loop).

    pygls's own records are left out: it logs each message it sends, which would loop."""

    def __init__(self, server: MoseLanguageServer, loop: asyncio.AbstractEventLoop,
                 level: int = logging.INFO):
        super().__init__(level)
        self.server = server
        self.loop = loop
        self.closed = False
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.closed or record.name.startswith("pygls"):
            return
        kind = next(t for lvl, t in _LOG_TYPES if record.levelno >= lvl)
        try:
            text = self.format(record)
            self.loop.call_soon_threadsafe(self._send, kind, text)
        except RuntimeError:  # the loop is closed
            self.closed = True
        except Exception:  # noqa: BLE001 (logging must never raise into the caller)
            self.handleError(record)

    def _send(self, kind: lsp.MessageType, text: str) -> None:
        if not self.closed:
            try:
                self.server.window_log_message(lsp.LogMessageParams(type=kind, message=text))
            except Exception:  # noqa: BLE001 (the connection is gone: drop the log line)
                self.closed = True


def serve(server: MoseLanguageServer, tcp: tuple[str, int] | None = None,
          log_level: int = logging.INFO) -> int:
    """Run the server until it ends (see the module docstring); the process exit code."""
    code = asyncio.run(_serve(server, tcp, log_level))
    if code is None:  # the indexes did not close in time: threads may still hold the exit
        logging.shutdown()
        os._exit(1)
    return code


async def _serve(server: MoseLanguageServer, tcp: tuple[str, int] | None,
                 log_level: int) -> int | None:
    loop = asyncio.get_running_loop()
    ending: asyncio.Future[tuple[str, int | None]] = loop.create_future()

    def end(reason: str, code: int | None) -> None:
        if not ending.done():
            ending.set_result((reason, code))

    server.on_end = end
    _handle_signals(loop, end)
    handler = ClientLogHandler(server, loop, log_level)
    logging.getLogger().addHandler(handler)
    messages: asyncio.Queue[bytes | None] = asyncio.Queue()
    tcp_server = None
    try:
        if tcp is None:
            server.protocol.set_writer(_Writer(sys.stdout.buffer))
            threading.Thread(target=_read_frames, args=(_FdReader(sys.stdin.fileno()), loop,
                                                        messages),
                             name="mose-stdin", daemon=True).start()
        else:
            tcp_server = await _accept_one(server, tcp, messages)
        pump = asyncio.ensure_future(_pump(server, messages, end))
        reason, code = await ending
        handler.closed = True  # the client may be gone: logs go to stderr and the file only
        log.info("ending (%s): closing the indexes", reason)
        clean = await server.service.close()
        if code is None:  # (a `shutdown` handled just before the end of input has run now)
            code = 0 if server.shutdown_requested else 1
        pump.cancel()
        log.info("closed%s", "" if clean else " (not all indexes in time)")
        return code if clean else None
    finally:
        handler.closed = True
        logging.getLogger().removeHandler(handler)
        if tcp_server is not None:
            tcp_server.close()


class _Writer:
    """stdout for the protocol; once the client has gone (a broken pipe), later messages (a
    progress end while closing) are dropped instead of logged as errors with a traceback."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.broken = False

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):  # broken pipe, or closed
            self.broken = True


def _handle_signals(loop: asyncio.AbstractEventLoop, end: Any) -> None:
    seen: list[int] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if seen:  # a second signal: the user does not want to wait
            log.warning("%s again: exiting without closing the indexes", name)
            logging.shutdown()
            os._exit(128 + signum)
        seen.append(signum)
        end(name, 0)

    for name in SIGNALS:
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            pass


async def _pump(server: MoseLanguageServer, messages: asyncio.Queue[bytes | None],
                end: Any) -> None:
    protocol = server.protocol
    while True:
        body = await messages.get()
        if body is None:
            end("end of input", None)  # the code once closed: did `shutdown` come first?
            return
        try:
            message = json.loads(body, object_hook=protocol.structure_message)
            protocol.handle_message(message)
        except Exception:
            log.exception("cannot handle a message")


class _FdReader:
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


def _read_frames(stream: _FdReader | BinaryIO, loop: asyncio.AbstractEventLoop,
                 messages: asyncio.Queue[bytes | None]) -> None:
    """Read ``Content-Length`` framed messages on a daemon thread (a blocked read must not
    hold the process's exit); None marks the end of input."""
    def put(item: bytes | None) -> None:
        try:
            loop.call_soon_threadsafe(messages.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server ended first
            pass

    try:
        while True:
            length = _header(stream.readline)
            if length is None:
                return
            body = stream.read(length)
            if len(body) < length:
                return
            put(body)
    except (OSError, ValueError) as err:
        log.info("input closed: %s", err)
    finally:
        put(None)


def _header(readline: Any) -> int | None:
    """The content length of the next message (None at the end of input)."""
    length: int | None = None
    while True:
        line = readline()
        if not line:
            return None
        if not line.strip():
            if length is not None:
                return length
            continue
        name, _, value = line.decode("ascii", "replace").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())


async def _accept_one(server: MoseLanguageServer, address: tuple[str, int],
                      messages: asyncio.Queue[bytes | None]) -> asyncio.AbstractServer:
    """Listen on ``address``; the first client's connection is the session."""
    connected = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connected.is_set():
            writer.close()  # one client per server
            return
        connected.set()
        server.protocol.set_writer(writer)  # type: ignore[arg-type]
        try:
            while True:
                length = await _aheader(reader)
                if length is None:
                    break
                messages.put_nowait(await reader.readexactly(length))
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:
            log.info("connection closed: %s", err)
        messages.put_nowait(None)

    tcp_server = await asyncio.start_server(on_connect, *address)
    log.info("listening on %s:%s", *address)
    return tcp_server


async def _aheader(reader: asyncio.StreamReader) -> int | None:
    length: int | None = None
    while True:
        line = await reader.readline()
        if not line:
            return None
        if not line.strip():
            if length is not None:
                return length
            continue
        name, _, value = line.decode("ascii", "replace").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
