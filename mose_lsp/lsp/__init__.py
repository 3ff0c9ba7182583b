"""The language server (pygls), one room per job:

- :mod:`.handlers`: the server class and ``create_server`` (thin handlers);
- :mod:`.session`: the per-client state that joins the rooms below, ``initialize``, closing;
- :mod:`.settings_sync`, :mod:`.workspace`, :mod:`.documents`, :mod:`.requests`: client
  settings, workspace folders (indexes, scans, watching, background work), open documents,
  and the requests' answers;
- :mod:`.folders`: a folder's state and its lanes' jobs; :mod:`.progress`: progress bars;
- :mod:`.rpc`: pygls's protocol with our overrides, and the request errors;
- :mod:`.lifecycle`: the serve loop, signals, end of input, and logs to the client.
"""

from .folders import Doc, Folder, folder_settings, index_dir_of
from .handlers import MoseLanguageServer, create_server
from .lifecycle import serve
from .requests import QueryText, query_from_text
from .rpc import Cancelled, MoseProtocol, RequestFailed
from .session import MoseService

__all__ = ["Cancelled", "Doc", "Folder", "MoseLanguageServer", "MoseProtocol", "MoseService",
           "QueryText", "RequestFailed", "create_server", "folder_settings", "index_dir_of",
           "query_from_text", "serve"]
