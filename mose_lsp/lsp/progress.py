"""LSP work-done progress bars (a no-op when the client does not support them)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.2  # at most this often a $/progress report (unless the percentage moved)
CREATE_TIMEOUT_S = 10.0  # a client that does not answer window/workDoneProgress/create: no bar


class ProgressBar:
    """One LSP work-done progress; ``token`` None means the client shows none."""

    def __init__(self, ls: LanguageServer, loop: asyncio.AbstractEventLoop, token: str | None):
        self._ls = ls
        self._loop = loop
        self.token = token
        self._last = (-1, 0.0)
        self._ended = False

    def report(self, percent: int, message: str) -> None:
        if self.token is None or self._ended:
            return
        now = time.monotonic()
        last_pct, last_t = self._last
        if percent == last_pct and now - last_t < PROGRESS_EVERY_S:
            return
        self._last = (percent, now)
        self._ls.work_done_progress.report(
            self.token, lsp.WorkDoneProgressReport(message=message, percentage=percent))

    def report_threadsafe(self, percent: int, message: str) -> None:
        try:
            self._loop.call_soon_threadsafe(self.report, percent, message)
        except RuntimeError:  # loop closed
            pass

    def end(self, message: str) -> None:
        if self.token is None or self._ended:
            return
        self._ended = True
        self._ls.work_done_progress.end(self.token, lsp.WorkDoneProgressEnd(message=message))
        self._ls.work_done_progress.tokens.pop(self.token, None)


async def open_progress(ls: LanguageServer, title: str, message: str = "",
                        cancellable: bool = False,
                        on_cancel: Callable[[], None] | None = None) -> ProgressBar:
    """A progress bar begun on the client (server-initiated, ``window/workDoneProgress/create``)
    when it supports them; ``on_cancel`` runs when the user cancels it."""
    loop = asyncio.get_running_loop()
    caps = ls.client_capabilities
    if not (caps and caps.window and caps.window.work_done_progress):
        return ProgressBar(ls, loop, None)
    token = f"mose-{uuid.uuid4().hex[:12]}"
    try:
        await asyncio.wait_for(ls.work_done_progress.create_async(token), CREATE_TIMEOUT_S)
    except (JsonRpcException, asyncio.TimeoutError) as err:  # refused or no answer: no bar
        log.info("progress %r not created: %s", title, err)
        return ProgressBar(ls, loop, None)
    ls.work_done_progress.begin(token, lsp.WorkDoneProgressBegin(
        title=title, message=message, percentage=0, cancellable=cancellable))
    fut = ls.work_done_progress.tokens.get(token)
    if on_cancel is not None and fut is not None:
        fut.add_done_callback(lambda f: on_cancel() if f.cancelled() else None)
    return ProgressBar(ls, loop, token)
