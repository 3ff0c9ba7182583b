"""The MCP server (``mose mcp``): semantic code search as tools for coding agents.

Importing this package imports nothing heavy; :mod:`.server` imports the MCP SDK, and
:mod:`.cli` registers the ``mose mcp`` command (importing the SDK only when it runs).
"""
