"""A real third-party client: Emacs eglot (Debian's emacs-nox and elpa-eglot, installed by the
test setup when missing), in batch Emacs, with no mose-specific configuration beyond the server
command. It initializes, searches with workspace/symbol, edits a buffer and finds the unsaved
function with mose.search, then ends the session with eglot-shutdown (shutdown + exit) or by
killing Emacs with the server still running. Either way the index is left intact, and eglot
received no mose/* notification (it did not opt in)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clients_setup import (
    assert_index_intact,
    ensure_debian_packages,
    package_dir,
    wait_for_log,
)
from conftest import make_workspace

pytestmark = pytest.mark.slow  # Emacs, the server, the model

SCRIPT = Path(__file__).with_name("eglot_session.el")


@pytest.fixture(scope="module")
def emacs() -> tuple[str, Path]:
    """Emacs and the folder of Debian's eglot (``emacs -Q`` does not load site packages)."""
    reason = ensure_debian_packages("emacs-nox", "elpa-eglot")
    if reason is not None:
        pytest.skip(reason)
    path, eglot = shutil.which("emacs"), package_dir("elpa-eglot", "eglot.el")
    if path is None or eglot is None:
        pytest.skip("emacs or eglot.el not found after installing emacs-nox and elpa-eglot")
    return path, eglot


@pytest.mark.parametrize("ending", ["shutdown", "kill"])
def test_eglot_session(tmp_path, model_path, emacs, ending):
    ws = make_workspace(tmp_path / "ws")
    log, out, index_dir = tmp_path / "server.log", tmp_path / "out.json", tmp_path / "indexes"
    env = {**os.environ, "MOSE_PYTHON": sys.executable, "MOSE_WORKSPACE": str(ws),
           "MOSE_MODEL": str(model_path), "MOSE_INDEX_DIR": str(index_dir),
           "MOSE_LOG": str(log), "MOSE_OUT": str(out), "MOSE_ENDING": ending,
           "HOME": str(tmp_path)}  # no user init files
    binary, eglot = emacs
    done = subprocess.run([binary, "--batch", "-Q", "-L", str(eglot), "-l", str(SCRIPT)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0 and out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["symbol"] == "levenshtein_distance"
    assert result["line"] == 0  # the definition line (the name), not a decorator above it
    assert result["edit_found"] is True
    assert result["mose_methods_received"] == 0
    text = wait_for_log(log, "closed")
    assert "Traceback" not in text and "CancelledError" not in text, text
    assert "repaired" not in text
    assert_index_intact(ws, index_dir, model_path, tmp_path / "fresh")
