"""The language server (pygls), one room per job:

- :mod:`.handlers`: the server class and ``create_server`` (thin handlers);
- :mod:`.session`: the per-client state that joins the rooms below, ``initialize``, closing;
- :mod:`.settings_sync`, :mod:`.workspace`, :mod:`.documents`, :mod:`.requests`: client
  settings, workspace folders (indexes, scans, watching, background work), open documents,
  and the requests' answers;
- :mod:`.folders`: a folder's state and its lanes' jobs; :mod:`.progress`: progress bars;
- :mod:`.rpc`: pygls's protocol with our overrides, and the request errors;
- :mod:`.lifecycle`: the serve loop, signals, end of input, and logs to the client;
- :mod:`.stdio`: the stdio transport and the answer to ``initialize`` before pygls loads.

The names below load on first use, so that :mod:`.stdio` runs before pygls is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Doc": "folders", "Folder": "folders", "folder_settings": "folders",
    "index_dir_of": "folders", "MoseLanguageServer": "handlers", "create_server": "handlers",
    "serve": "lifecycle", "query_from_text": "requests",
    "Cancelled": "rpc", "MoseProtocol": "rpc", "RequestFailed": "rpc",
    "MoseService": "session",
}

__all__ = ["Cancelled", "Doc", "Folder", "MoseLanguageServer", "MoseProtocol", "MoseService",
           "RequestFailed", "create_server", "folder_settings", "index_dir_of",
           "query_from_text", "serve"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
