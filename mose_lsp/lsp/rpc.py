"""pygls's JSON-RPC protocol, adjusted where the server needs it, and the request errors.

Each override says why it exists and when it can go:

- ``_execute_handler``: pygls keeps the future of every built-in method's user handler under a
  fresh uuid forever (a leak: each notification and command kept its result); finished ones are
  forgotten here. ``tests/test_server_protocol.py`` fails once pygls stops leaking.
- ``_handle_cancel_notification``: a command runs in a task of its own and its work in threads,
  which only a flag can stop; the session learns about ``$/cancelRequest``.
- ``lsp_exit``: pygls exits the process from inside the handler (``sys.exit``), before any
  index is closed; here ``exit`` ends the serve loop (:mod:`.lifecycle`), which closes every
  folder first and then exits with the code LSP asks for.
"""

from __future__ import annotations

import functools
from typing import Any

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method


class RequestFailed(JsonRpcException):
    """LSP RequestFailed: the request was valid but the server could not answer it."""

    CODE = -32803
    MESSAGE = "Request Failed"


class Cancelled(Exception):
    """A job noticed its cancel flag."""


class MoseProtocol(LanguageServerProtocol):
    """pygls's protocol with the overrides listed in the module docstring."""

    def _execute_handler(self, msg_id: Any, handler: Any, callback: Any,
                         args: Any = None, kwargs: Any = None) -> None:
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        future = self._request_futures.get(msg_id)
        if future is not None:
            future.add_done_callback(functools.partial(self._forget, msg_id))

    def _forget(self, msg_id: Any, future: Any) -> None:
        # A thread handler's future calls back from its worker thread: pop, never del.
        if self._request_futures.get(msg_id) is future:
            self._request_futures.pop(msg_id, None)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        super()._handle_cancel_notification(msg_id)
        service = getattr(self._server, "service", None)
        if service is not None:
            service.on_cancel(msg_id)

    @lsp_method(lsp.EXIT)
    def lsp_exit(self, *args: Any) -> None:
        """``exit``: 0 after ``shutdown``, else 1 (LSP); the serve loop closes and exits."""
        end = getattr(self._server, "end", None)
        if end is not None:
            end("exit", 0 if self._shutdown else 1)
