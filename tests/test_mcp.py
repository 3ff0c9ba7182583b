"""End to end: the real ``mose mcp`` server in a subprocess, driven by the MCP SDK's own stdio
client (``mcp.client.stdio``) on a fixture workspace."""

from __future__ import annotations

import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

mcp = pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parents[1]
CALL_TIMEOUT_S = 300  # a first call waits for the model and the first index


def mcp_command(workspace: Path, index_dir: Path, model_path: Path, *extra: str) -> list[str]:
    """How a client starts ``mose mcp``."""
    return [sys.executable, "-m", "mose_lsp", "mcp", "-w", str(workspace), "--index-dir",
            str(index_dir), "--model", str(model_path), "--threads", "1", *extra]


@asynccontextmanager
async def session(workspace: Path, index_dir: Path, model_path: Path, *extra: str):
    cmd = mcp_command(workspace, index_dir, model_path, *extra)
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ),
                                   cwd=str(REPO))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        yield client


async def call(client, tool: str, args: dict):
    return await client.call_tool(tool, args, read_timeout_seconds=CALL_TIMEOUT_S)


async def indexed(client) -> None:
    """Wait for the server's first index (calls before it answer from what is indexed so far;
    ``reindex`` waits for the running update)."""
    result = await call(client, "reindex", {})
    assert not result.is_error, text(result)


def text(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def test_tools_list_and_every_tool(tmp_path, workspace, model_path):
    async with session(workspace, tmp_path / "index", model_path, "--max-lines", "4") as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert set(listed) == {"search", "similar", "status", "reindex"}
        for tool in listed.values():
            assert tool.output_schema is not None and len(tool.description) > 100
        assert "grep" in listed["search"].description  # when semantic search beats grep
        assert {"query", "limit", "language", "path"} <= set(listed["search"].input_schema["properties"])
        assert "hits" in listed["search"].output_schema["properties"]
        await indexed(client)

        found = await call(client, "search", {"query": "edit distance between two strings",
                                              "limit": 3})
        assert not found.is_error
        top = found.structured_content["hits"][0]
        assert (top["path"], top["start_line"], top["symbol"], top["language"]) == \
            ("pkg/strings.py", 1, "levenshtein_distance", "python")
        assert top["end_line"] == 9 and top["truncated"] and len(top["code"].splitlines()) == 4
        assert top["workspace"] == str(workspace)
        assert "pkg/strings.py:1-9  levenshtein_distance" in text(found)

        wide = await call(client, "search", {"query": "edit distance", "max_lines": 100})
        assert not wide.structured_content["hits"][0]["truncated"]
        js = await call(client, "search", {"query": "wait before calling a function again",
                                           "language": "javascript"})
        assert {h["language"] for h in js.structured_content["hits"]} == {"javascript"}
        globbed = await call(client, "search", {"query": "quote a string for a shell",
                                                "path": "shl*"})
        assert {h["path"] for h in globbed.structured_content["hits"]} == {"shlex.py"}
        as_code = await call(client, "search", {"query": "for i, a in enumerate(left, 1):",
                                                "kind": "code", "limit": 1})
        assert as_code.structured_content["hits"][0]["path"] == "pkg/strings.py"

        by_line = await call(client, "similar", {"path": "pkg/strings.py", "line": 3})
        assert not by_line.is_error
        assert all(h["path"] != "pkg/strings.py" for h in by_line.structured_content["hits"])
        by_range = await call(client, "similar", {"path": "shlex.py", "line": 1, "end_line": 60,
                                                  "limit": 5})
        assert all(not (h["path"] == "shlex.py" and h["start_line"] <= 60)
                   for h in by_range.structured_content["hits"])
        snippet = (workspace / "web" / "timing.js").read_text()
        pasted = await call(client, "similar", {"snippet": snippet, "language": "javascript"})
        assert all(" ".join(h["code"].split()) != " ".join(snippet.split())
                   for h in pasted.structured_content["hits"])

        status = await call(client, "status", {})
        folder = status.structured_content["folders"][0]
        assert folder["workspace"] == str(workspace) and folder["chunks"] > 0
        assert folder["pending_files"] == 0 and folder["skipped"].get("binary") == 1
        assert "chunks" in text(status)

        again = await call(client, "reindex", {})
        assert again.structured_content["folders"][0]["chunks_embedded"] == 0
        rebuilt = await call(client, "reindex", {"rebuild": True})
        done = rebuilt.structured_content["folders"][0]
        assert done["rebuilt"] and done["chunks_embedded"] == folder["chunks"]


async def test_an_edit_on_disk_is_found_by_the_next_search(tmp_path, workspace, model_path):
    async with session(workspace, tmp_path / "index", model_path) as client:
        await indexed(client)
        first = await call(client, "search", {"query": "volume of a sphere", "limit": 3})
        assert all(h["path"] != "geometry.py" for h in first.structured_content["hits"])
        (workspace / "geometry.py").write_text(
            "def sphere_volume(radius):\n    return 4 / 3 * 3.14159 * radius ** 3\n")
        found = await call(client, "search", {"query": "volume of a sphere", "limit": 3})
        out = found.structured_content
        assert out["files_updated"] == 1 and out["hits"][0]["path"] == "geometry.py"
        assert out["hits"][0]["end_line"] == 2
        (workspace / "geometry.py").write_text(  # edited: the new code, at its new lines
            "import math\n\n\ndef circle_area(radius):\n    return math.pi * radius ** 2\n")
        edited = await call(client, "search", {"query": "area of a circle", "limit": 3})
        top = edited.structured_content["hits"][0]
        assert (top["path"], top["start_line"], top["symbol"]) == ("geometry.py", 4, "circle_area")
        (workspace / "geometry.py").rename(workspace / "shapes.py")
        renamed = await call(client, "search", {"query": "area of a circle", "limit": 3})
        assert renamed.structured_content["hits"][0]["path"] == "shapes.py"
        (workspace / "shapes.py").unlink()
        gone = await call(client, "search", {"query": "area of a circle", "limit": 10})
        assert all(h["path"] != "shapes.py" for h in gone.structured_content["hits"])


BAD_CALLS = [
    ("search", {}, "query"),  # a required argument missing
    ("search", {"query": 42}, "query"),  # the wrong type
    ("search", {"query": "   "}, "empty"),
    ("search", {"query": "x", "limit": 0}, "greater than or equal to 1"),
    ("search", {"query": "x", "limit": "many"}, "limit"),
    ("search", {"query": "x", "kind": "sql"}, "kind"),
    ("similar", {}, "either path"),
    ("similar", {"path": "pkg/strings.py", "snippet": "x"}, "either path"),
    ("similar", {"path": "pkg/strings.py", "line": 10_000}, "past the end"),
    ("similar", {"path": "pkg/strings.py", "line": 0}, "greater than or equal to 1"),
    ("similar", {"path": "pkg/strings.py", "line": 5, "end_line": 2}, "before line"),
    ("similar", {"path": "pkg/strings.py", "end_line": 2}, "needs line"),
    ("similar", {"path": "no/such/file.py"}, "cannot read"),
    ("similar", {"path": "/etc/passwd"}, "not inside a workspace"),
    ("similar", {"path": "notes.txt", "line": 1}, "not indexed code"),
    ("reindex", {"rebuild": "please"}, "rebuild"),
]


async def test_bad_arguments_are_tool_errors_and_the_server_goes_on(tmp_path, workspace,
                                                                    model_path):
    async with session(workspace, tmp_path / "index", model_path) as client:
        await indexed(client)
        for tool, args, expected in BAD_CALLS:
            result = await call(client, tool, args)
            assert result.is_error, (tool, args, text(result))
            assert expected in text(result), (tool, args, text(result))
            ok = await call(client, "search", {"query": "split a string into shell words",
                                               "limit": 1})
            assert not ok.is_error and ok.structured_content["hits"][0]["path"] == "shlex.py"
        unknown = await call(client, "grep", {"pattern": "x"})
        assert unknown.is_error
        assert not (await call(client, "status", {})).is_error


async def test_no_update_answers_from_the_index_as_it_is(tmp_path, workspace, model_path):
    async with session(workspace, tmp_path / "index", model_path, "--no-update") as client:
        empty = await call(client, "search", {"query": "edit distance"})
        assert empty.structured_content["hits"] == []  # nothing indexed, nothing updated
        await indexed(client)  # reindex still updates
        (workspace / "geometry.py").write_text(
            "def sphere_volume(radius):\n    return 4 / 3 * 3.14159 * radius ** 3\n")
        stale = await call(client, "search", {"query": "volume of a sphere", "limit": 3})
        assert stale.structured_content["files_updated"] == 0
        assert all(h["path"] != "geometry.py" for h in stale.structured_content["hits"])
        await indexed(client)
        found = await call(client, "search", {"query": "volume of a sphere", "limit": 3})
        assert found.structured_content["hits"][0]["path"] == "geometry.py"

