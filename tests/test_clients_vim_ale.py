"""A real third-party client: Vim with ALE (Debian's vim and vim-ale, installed by the test
setup when missing), in a terminal (tmux), with ALE's generic LSP linter definition as the only
configuration. It initializes, searches with workspace/symbol, edits the buffer and finds the
unsaved function with mose.search, then quits Vim (which stops the server's job: SIGTERM). The
index is left intact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clients_setup import (
    assert_index_intact,
    ensure_debian_packages,
    package_dir,
    wait_for_log,
)
from conftest import make_workspace

pytestmark = pytest.mark.slow  # Vim, the server, the model

SCRIPT = Path(__file__).with_name("ale_session.vim")


@pytest.fixture(scope="module")
def vim_ale() -> tuple[str, str, Path]:
    reason = ensure_debian_packages("vim", "vim-ale", "tmux")
    if reason is not None:
        pytest.skip(reason)
    vim, tmux = shutil.which("vim"), shutil.which("tmux")
    ale = package_dir("vim-ale", "plugin/ale.vim")
    if vim is None or tmux is None or ale is None:
        pytest.skip("vim, tmux or ALE's plugin/ale.vim not found after installing them")
    return vim, tmux, ale


def test_vim_ale_session(tmp_path, model_path, vim_ale):
    vim, tmux, ale = vim_ale
    ws = make_workspace(tmp_path / "ws")
    log, out, index_dir = tmp_path / "server.log", tmp_path / "out.json", tmp_path / "indexes"
    env = {**os.environ, "MOSE_ALE_DIR": str(ale), "MOSE_PYTHON": sys.executable,
           "MOSE_WORKSPACE": str(ws), "MOSE_MODEL": str(model_path),
           "MOSE_INDEX_DIR": str(index_dir), "MOSE_LOG": str(log), "MOSE_OUT": str(out),
           "HOME": str(tmp_path), "TERM": "xterm-256color"}
    socket = f"mose-test-{os.getpid()}"
    command = f"{vim} -N -i NONE -u {SCRIPT} {ws / 'pkg' / 'strings.py'}"
    subprocess.run([tmux, "-L", socket, "new-session", "-d", "-x", "120", "-y", "40",
                    command], env=env, check=True, cwd=ws)
    try:
        deadline = time.monotonic() + 300
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert out.exists(), "Vim never wrote its result"
        result = json.loads(out.read_text())
    finally:
        subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True, check=False)
    assert result["error"] == "", result
    assert result["symbol"] == "levenshtein_distance"
    assert result["line"] == 0
    assert result["edit_found"] is True
    text = wait_for_log(log, "closed")
    assert "ending (SIGTERM)" in text or "ending (end of input)" in text, text
    assert "Traceback" not in text and "CancelledError" not in text, text
    assert_index_intact(ws, index_dir, model_path, tmp_path / "fresh")
