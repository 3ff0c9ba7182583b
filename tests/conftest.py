"""Shared test fixtures."""

from __future__ import annotations

import os

# Tests never reach a model hub: the base model comes from a PyPI wheel on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import shutil
import sysconfig
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """A real model directory: the embedded default model, or (before it is built) an export
    of all-MiniLM-L6-v2 exits 2 and 6 made once per session."""
    from mose_lsp.model_dir import MANIFEST, default_model_path

    default = default_model_path()
    if (default / MANIFEST).is_file():
        return default
    pytest.importorskip("torch", reason="no embedded model and no torch to export one")
    from mose_export.exporter import export_model

    out = tmp_path_factory.mktemp("model") / "minilm"
    export_model("all-minilm-l6-v2", out, exits=(2, 6))
    return out


@pytest.fixture(scope="session")
def model(model_path):
    from mose_lsp.encoder import ModelEncoder

    return ModelEncoder.open(model_path, threads=2)


PLANTED_PY = '''\
def levenshtein_distance(left: str, right: str) -> int:
    """Number of single-character edits that turn one string into the other."""
    previous = list(range(len(right) + 1))
    for i, a in enumerate(left, 1):
        current = [i]
        for j, b in enumerate(right, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]
'''

PLANTED_JS = '''\
/**
 * Debounce a function: call it once the caller has been quiet for `wait` milliseconds.
 */
export function debounce(fn, wait) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}
'''


def make_workspace(root: Path) -> Path:
    """A small workspace of real code: standard-library modules plus planted functions."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py"):
        shutil.copyfile(STDLIB / name, root / name)
    (root / "pkg").mkdir(exist_ok=True)
    (root / "pkg" / "strings.py").write_text(PLANTED_PY)
    (root / "web").mkdir(exist_ok=True)
    (root / "web" / "timing.js").write_text(PLANTED_JS)
    (root / "notes.txt").write_bytes(b"\x00\x01\x02" * 100)  # binary despite .txt
    (root / "image.png").write_bytes(b"\x89PNG\r\n")
    (root / ".env").write_text("API_KEY=do-not-index\n")
    return root


@pytest.fixture
def workspace(tmp_path) -> Path:
    return make_workspace(tmp_path / "ws")
