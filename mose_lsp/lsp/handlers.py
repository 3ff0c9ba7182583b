"""The LSP edge: the server class and ``create_server``, whose handlers are thin. They parse
arguments into the typed shapes of :mod:`mose_lsp.protocol`, call the session
(:class:`~mose_lsp.lsp.session.MoseService`) and turn its errors into JSON-RPC errors."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from lsprotocol import types as lsp
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcRequestCancelled,
)
from pygls.lsp.server import LanguageServer

from .. import __version__
from ..config import Settings
from ..errors import MoseError
from ..protocol import ParamsError, ReindexArgs, SearchArgs, SimilarArgs, StatusArgs
from .rpc import Cancelled, MoseProtocol, RequestFailed
from .session import MoseService

log = logging.getLogger(__name__)


class MoseLanguageServer(LanguageServer):
    def __init__(self, settings: Settings):
        super().__init__("mose", __version__, protocol_cls=MoseProtocol,
                         text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.service = MoseService(self, settings)
        #: Set by the serve loop (:mod:`.lifecycle`): ends it, closing every index first.
        self.on_end: Callable[[str, int], None] | None = None
        self.shutdown_requested = False

    def end(self, reason: str, code: int) -> None:
        """The connection is over (``exit``): the serve loop closes the indexes and exits."""
        if self.on_end is None:
            sys.exit(code)  # not run by our serve loop: behave as pygls does
        self.on_end(reason, code)

    async def guarded(self, name: str, work: Callable[[threading.Event], Any]) -> Any:
        """Run a request: register its cancel flag, turn errors into JSON-RPC errors."""
        flag = threading.Event()
        msg_id = self.protocol.msg_id
        if msg_id is not None:
            if msg_id in self.service._cancelled_early:  # cancelled before it started
                raise JsonRpcRequestCancelled(f"{name}: cancelled")
            self.service._cancels[msg_id] = (asyncio.current_task(), flag)
        try:
            return await work(flag)
        except ParamsError as err:
            log.info("invalid params: %s", err)
            raise JsonRpcInvalidParams(str(err)) from None
        except Cancelled:
            raise JsonRpcRequestCancelled(f"{name}: cancelled") from None
        except asyncio.CancelledError:
            flag.set()
            raise
        except JsonRpcException:
            raise
        except MoseError as err:
            log.warning("%s failed: %s", name, err)
            raise RequestFailed(f"{name}: {err}") from None
        except Exception as err:
            log.exception("%s failed", name)
            raise JsonRpcInternalError(f"{name}: internal error: {type(err).__name__}: {err}") \
                from None
        finally:
            if msg_id is not None:
                self.service._cancels.pop(msg_id, None)


def create_server(settings: Settings | None = None) -> MoseLanguageServer:
    """A fresh language server; ``settings`` are the defaults that client settings override."""
    server = MoseLanguageServer(settings or Settings())
    svc = server.service

    @server.feature(lsp.INITIALIZE)
    def initialize(ls: MoseLanguageServer, params: lsp.InitializeParams) -> None:
        svc.initialize(params)

    @server.feature(lsp.INITIALIZED)
    async def initialized(ls: MoseLanguageServer, params: lsp.InitializedParams) -> None:
        await svc.initialized()

    @server.feature(lsp.SHUTDOWN)
    async def shutdown(ls: MoseLanguageServer, params: Any) -> None:
        ls.shutdown_requested = True
        # Answered once every index is closed; shielded so that the end of input right after
        # `shutdown` (the serve loop waits for the same close) cannot cut it short.
        await asyncio.shield(svc.close())

    @server.feature(lsp.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    async def folders_changed(ls: MoseLanguageServer,
                              params: lsp.DidChangeWorkspaceFoldersParams) -> None:
        for removed in params.event.removed:
            await svc.remove_folder(removed.uri)
        for added in params.event.added:
            svc.add_folder(added.uri)

    @server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def configuration_changed(ls: MoseLanguageServer,
                                    params: lsp.DidChangeConfigurationParams) -> None:
        await svc.settings_pushed(params.settings)

    @server.feature(lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def watched_files(ls: MoseLanguageServer, params: lsp.DidChangeWatchedFilesParams) -> None:
        svc.watched_files_changed(change.uri for change in params.changes)

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: MoseLanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
        svc.did_open(params.text_document.uri, params.text_document.version)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: MoseLanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
        svc.did_change(params.text_document.uri, params.text_document.version)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: MoseLanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
        svc.did_close(params.text_document.uri)

    @server.feature(lsp.WORKSPACE_SYMBOL, lsp.WorkspaceSymbolOptions(resolve_provider=False))
    async def workspace_symbol(ls: MoseLanguageServer,
                               params: lsp.WorkspaceSymbolParams) -> list[lsp.WorkspaceSymbol]:
        return await ls.guarded("workspace/symbol",
                                lambda flag: svc.symbols(params.query, flag))

    @server.command(SearchArgs.COMMAND)
    async def search(ls: MoseLanguageServer, *args: Any) -> dict[str, Any]:
        async def work(flag: threading.Event) -> dict[str, Any]:
            return (await svc.search(SearchArgs.parse(args), flag)).to_json()

        return await ls.guarded(SearchArgs.COMMAND, work)

    @server.command(SimilarArgs.COMMAND)
    async def similar(ls: MoseLanguageServer, *args: Any) -> dict[str, Any]:
        async def work(flag: threading.Event) -> dict[str, Any]:
            return (await svc.similar(SimilarArgs.parse(args), flag)).to_json()

        return await ls.guarded(SimilarArgs.COMMAND, work)

    @server.command(StatusArgs.COMMAND)
    async def status(ls: MoseLanguageServer, *args: Any) -> dict[str, Any]:
        return await ls.guarded(StatusArgs.COMMAND,
                                lambda flag: svc.status(StatusArgs.parse(args)))

    @server.command(ReindexArgs.COMMAND)
    async def reindex(ls: MoseLanguageServer, *args: Any) -> dict[str, Any]:
        return await ls.guarded(ReindexArgs.COMMAND,
                                lambda flag: svc.reindex(ReindexArgs.parse(args), flag))

    return server
