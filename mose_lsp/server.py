"""The language server's public names, kept at their first import path; the server lives in
:mod:`mose_lsp.lsp` (one module per job)."""

from .lsp import (
    Cancelled,
    Doc,
    Folder,
    MoseLanguageServer,
    MoseProtocol,
    MoseService,
    RequestFailed,
    create_server,
    folder_settings,
    index_dir_of,
    serve,
)
from .lsp import query_from_text as _query_from_text

__all__ = [
    "Cancelled",
    "Doc",
    "Folder",
    "MoseLanguageServer",
    "MoseProtocol",
    "MoseService",
    "RequestFailed",
    "_query_from_text",
    "create_server",
    "folder_settings",
    "index_dir_of",
    "serve",
]
