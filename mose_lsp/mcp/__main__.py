"""``python -m mose_lsp.mcp``: the same as ``mose mcp``."""

from .cli import main

main()
