"""The VS Code extension (editors/vscode): strict build, its node tests (pure modules, and a
real LSP client sending the extension's requests to the real server) and the .vsix.

VS Code itself cannot run here; what it would send is checked by
``editors/vscode/src/test/server.test.ts`` with the extension's own settings, argument
builders and result mapping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import make_workspace

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "editors" / "vscode"
NPM = shutil.which("npm")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(  # npm ci
    NPM is None, reason="npm is not installed: Node.js 20+ with npm builds the VS Code extension")]


def npm(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run([NPM, *args], cwd=EXT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"npm {' '.join(args)} failed ({proc.returncode}):\n{output[-8000:]}"
    return output


@pytest.fixture(scope="module")
def built() -> None:
    """npm ci (the committed lock file) and the strict tsc build."""
    npm("ci", "--no-audit", "--no-fund")
    npm("run", "build")
    assert (EXT / "out" / "extension.js").is_file()


def _mose_exe() -> str:
    exe = Path(sys.executable).parent / ("mose.exe" if sys.platform.startswith("win") else "mose")
    return str(exe) if exe.is_file() else (shutil.which("mose") or "mose")


def test_node_tests_pass_against_the_real_server(built, tmp_path, model_path):
    ws = make_workspace(tmp_path / "ws")
    log = tmp_path / "server.log"
    env = {
        "MOSE_SERVER_CMD": json.dumps([_mose_exe(), "serve", "--log-file", str(log)]),
        "MOSE_MODEL": str(model_path),
        "MOSE_TEST_WORKSPACE": str(ws),
        "MOSE_SERVER_TEST_REQUIRED": "1",
    }
    try:
        out = npm("test", env=env)
    except AssertionError as err:
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        raise AssertionError(f"{err}\nserver log:\n{tail}") from None
    counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped|cancelled) (\d+)$", out, re.MULTILINE)}
    assert counts.get("fail") == 0 and counts.get("cancelled") == 0, out[-4000:]
    assert counts.get("skipped") == 0, "the server tests must run, not skip:\n" + out[-4000:]
    for name in ("MoSE: Search Workspace finds the planted functions",
                 "MoSE: Find Similar Code on a selection of an unsaved buffer finds levenshtein_distance",
                 "takes the extension settings without warnings and reports indexing progress"):
        assert re.search(rf"^\s*ok \d+ - {re.escape(name)}$", out, re.MULTILINE), f"{name!r} did not pass"
    assert counts.get("pass", 0) >= 30


def test_vsix_packages(built):
    vsix = EXT / "mose.vsix"
    vsix.unlink(missing_ok=True)
    npm("run", "package")
    assert vsix.is_file()
    with zipfile.ZipFile(vsix) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("extension/package.json"))
    assert {"extension/package.json", "extension/out/extension.js", "extension/readme.md"} <= names
    # The runtime dependency ships; sources, tests and dev tools do not.
    assert any(n.startswith("extension/node_modules/vscode-languageclient/") for n in names)
    assert not any(n.startswith(("extension/src/", "extension/out/test/")) for n in names)
    assert not any(n.startswith(("extension/node_modules/typescript/",
                                 "extension/node_modules/@vscode/vsce/")) for n in names)
    assert manifest["main"] == "./out/extension.js"
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert {"mose.searchWorkspace", "mose.findSimilar", "mose.findSimilarReferences",
            "mose.restart"} <= commands
    assert "mose.trace.server" in manifest["contributes"]["configuration"]["properties"]


def _node(built_module: str, expression: str) -> str:
    node = shutil.which("node") or pytest.skip("node is not installed")
    code = f"const m = require({json.dumps(str(EXT / 'out' / built_module))}); " \
           f"process.stdout.write(JSON.stringify({expression}));"
    proc = subprocess.run([node, "-e", code], capture_output=True, text=True, timeout=60,
                          check=True)
    return json.loads(proc.stdout)


def test_synced_files_are_the_ones_the_server_indexes(built):
    from mose_lsp import filetypes

    exts = _node("languages.js", "m.EXTENSIONS")
    names = _node("languages.js", "m.FILE_NAMES")
    assert sorted(exts) == sorted(filetypes._EXTENSIONS)
    assert sorted(names) == sorted(filetypes._FILE_NAMES)


def test_the_extension_finds_indexes_where_the_server_keeps_them(built, tmp_path):
    from mose_lsp.store import default_index_dir

    folder = tmp_path / "My Project.v2"
    folder.mkdir()
    cache = tmp_path / "cache"
    ctx = {"platform": "linux", "env": {"XDG_CACHE_HOME": str(cache)}, "home": str(tmp_path)}
    found = _node("startPolicy.js", f"m.indexPath({json.dumps(str(folder))}, {json.dumps(ctx)})")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    expected = subprocess.run(
        [sys.executable, "-c", ("import sys; from mose_lsp.store import default_index_dir; "
                                "print(default_index_dir(sys.argv[1]))"), str(folder)],
        env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert found == expected
    assert default_index_dir(folder).name == Path(expected).name
