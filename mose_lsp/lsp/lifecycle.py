"""How the server runs and how it ends, whatever ends it.

The serve loop reads framed JSON-RPC messages (stdio, or one TCP connection) and hands them to
pygls's protocol. It ends on the first of:

- ``exit`` (exit code 0 after ``shutdown``, else 1, as LSP says);
- end of input (the client closed the pipe or died; same codes);
- SIGTERM, SIGHUP or SIGINT (code 0).

Then every folder's index is closed (flushed, nothing left to repair at the next start), at most
:data:`~mose_lsp.lsp.session.CLOSE_TIMEOUT_S`, before the process exits: a scan or an encode
step in flight notices the stop flag, and one that does not finish in time is abandoned (exit
code 1 then). A second signal exits at once (a repeat of the same SIGTERM or SIGHUP within
:data:`REPEAT_GRACE_S` is the same stop delivered twice). ``shutdown`` itself answers only once the indexes
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
from typing import TYPE_CHECKING, Any

from lsprotocol import types as lsp

from .stdio import EarlyStdio, Writer, header_line

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
        if not self.closed and self.server.protocol.writer is not None:  # (TCP: connected)
            try:
                self.server.window_log_message(lsp.LogMessageParams(type=kind, message=text))
            except Exception:  # noqa: BLE001 (the connection is gone: drop the log line)
                self.closed = True


def serve(server: MoseLanguageServer, tcp: tuple[str, int] | None = None,
          log_level: int = logging.INFO, early: EarlyStdio | None = None) -> int:
    """Run the server until it ends (see the module docstring); the process exit code.
    ``early``: stdin already being read (and ``initialize`` answered) since before the
    server's imports (:mod:`.stdio`)."""
    code = asyncio.run(_serve(server, tcp, log_level, early))
    if code is None:  # the indexes did not close in time: threads may still hold the exit
        logging.shutdown()
        os._exit(1)
    return code


async def _serve(server: MoseLanguageServer, tcp: tuple[str, int] | None,
                 log_level: int, early: EarlyStdio | None) -> int | None:
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
            early = early or EarlyStdio().start()
            server.protocol.set_writer(Writer(sys.stdout.buffer, early))

            def sink(item: bytes | None) -> None:  # from the reading thread
                try:
                    loop.call_soon_threadsafe(messages.put_nowait, item)
                except RuntimeError:  # the loop is closed: the server ended first
                    pass

            early.attach(sink)
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


#: A repeat of the same stop signal (SIGTERM, SIGHUP) this soon after the first is the same
#: request delivered twice, not impatience: Vim stops a server once per plugin that started a
#: job on it, and a process manager may signal both the process and its group.
REPEAT_GRACE_S = 1.0


def _handle_signals(loop: asyncio.AbstractEventLoop, end: Any) -> None:
    seen: list[tuple[int, float]] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if seen:
            first, at = seen[0]
            if (signum == first and signum != signal.SIGINT
                    and loop.time() - at < REPEAT_GRACE_S):
                log.info("%s again within %.0f s: still closing the indexes", name,
                         REPEAT_GRACE_S)
                return
            # A second request to stop (Ctrl-C again, or another signal): do not wait.
            log.warning("%s again: exiting without closing the indexes", name)
            logging.shutdown()
            os._exit(128 + signum)
        seen.append((signum, loop.time()))
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


async def _accept_one(server: MoseLanguageServer, address: tuple[str, int],
                      messages: asyncio.Queue[bytes | None]) -> asyncio.AbstractServer:
    """Listen on ``address``; the first client's connection is the session."""
    connected = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connected.is_set():
            writer.close()  # one client per server
            return
        connected.set()
        server.protocol.set_writer(_SocketWriter(writer))  # type: ignore[arg-type]
        try:
            while True:
                length = await _aheader(reader)
                if length is None:
                    break
                messages.put_nowait(await reader.readexactly(length))
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:
            log.info("connection closed: %s", err)
        except asyncio.CancelledError:  # the server ended first (exit, a signal)
            return
        messages.put_nowait(None)

    tcp_server = await asyncio.start_server(on_connect, *address)
    log.info("listening on %s:%s", *address)
    return tcp_server


class _SocketWriter:
    """The TCP connection for the protocol; writes after the client left are dropped."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer

    def close(self) -> None:
        self.writer.close()

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


async def _aheader(reader: asyncio.StreamReader) -> int | None:
    """:func:`.stdio.read_header` over an asyncio stream (the TCP connection)."""
    length: int | None = None
    while line := await reader.readline():
        done, length = header_line(line, length)
        if done:
            return length
    return None
