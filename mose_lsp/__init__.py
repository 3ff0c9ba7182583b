"""mose: local semantic code search on a multi-exit code encoder.

This package is the runtime (language server, index, search, CLI). It never imports torch
or transformers; training and export live in the optional ``mose_training`` and
``mose_export`` packages (extras ``[train]``).
"""

__version__ = "0.1.0"
