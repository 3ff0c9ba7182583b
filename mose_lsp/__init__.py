"""mose: local semantic code search on a multi-exit code encoder.

This package is the runtime (language server, index, search, CLI). It never imports torch
or transformers; training and export live in the optional ``mose_training`` and
``mose_export`` packages (extras ``[train]``).
"""

import os

# onnxruntime's wheels carry a telemetry client that, on import, writes a device id and an event
# database under ~/.cache/Microsoft and probes the environment; a local search engine has no
# business doing either. Set before anything imports onnxruntime (a user's own value wins).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
