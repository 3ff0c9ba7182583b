"""Install as tools are installed: the built wheel, in a fresh virtual environment, offline.

The wheel is built from this checkout (``pip wheel --no-build-isolation``: no download of
build tools). Its runtime dependencies come from a local wheelhouse made by repacking the
distributions installed in the current environment (each one's files as its RECORD lists
them), so the install runs with ``pip install --no-index``: nothing is fetched. Then the
fresh environment's ``mose`` indexes a fixture workspace and answers ``search`` and
``similar`` with the embedded default model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import make_workspace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _runtime_requirements() -> set[str]:
    """Names of the distributions ``mose`` needs at run time (transitively, with the extras
    its dependencies ask of each other, none of mose's own)."""
    from packaging.requirements import Requirement

    todo: list[tuple[str, frozenset[str]]] = [("mose", frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        name, extras = todo.pop()
        for line in metadata.distribution(name).requires or ():
            req = Requirement(line)
            wanted = [""] + sorted(extras)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e})
                                                  for e in wanted):
                continue
            key = (re.sub(r"[-_.]+", "-", req.name).lower(), frozenset(req.extras))
            if key not in seen:
                seen.add(key)
                names.add(key[0])
                todo.append((req.name, frozenset(req.extras)))
    return names


def _repack(dist: metadata.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution: its RECORD's files and its WHEEL tags."""
    info = Path(dist._path)  # type: ignore[attr-defined]  # the .dist-info folder
    site = info.parent
    from packaging.tags import parse_tag, sys_tags

    tags = [line.split(":", 1)[1].strip() for line in (info / "WHEEL").read_text().splitlines()
            if line.startswith("Tag:")] or ["py3-none-any"]
    supported = set(sys_tags())
    tag = next((t for t in tags if parse_tag(t) & supported), tags[0])  # one this Python takes
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    wheel = out / f"{name}-{dist.version}-{tag}.whl"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for file in dist.files or ():
            path = (site / file).resolve()
            rel = file.as_posix()
            if rel.startswith("..") or rel.endswith("RECORD") or "__pycache__" in rel \
                    or not path.is_file():
                continue
            data = path.read_bytes()
            zf.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{rel},sha256={digest.decode()},{len(data)}")
        record = f"{info.name}/RECORD"
        zf.writestr(record, "\n".join([*records, f"{record},,"]) + "\n")
    return wheel


def _run(cmd: list[str], env: dict, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_offline_and_searches(tmp_path):
    dist_dir, house = tmp_path / "dist", tmp_path / "wheelhouse"
    house.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist_dir), str(REPO)], env, tmp_path)
    (wheel,) = dist_dir.glob("mose-*.whl")
    for name in sorted(_runtime_requirements()):
        _repack(metadata.distribution(name), house)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env, tmp_path)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(house),
          str(wheel)], env, tmp_path)
    mose = str(venv / "bin" / "mose")

    # The installed package runs from the venv, not from this checkout.
    where = _run([str(python), "-c", "import mose_lsp; print(mose_lsp.__file__)"], env, tmp_path)
    assert str(venv) in where.stdout and str(REPO) not in where.stdout

    ws = make_workspace(tmp_path / "project")
    _run([mose, "index", str(ws), "-q"], env, tmp_path)
    found = _run([mose, "search", "edit distance between two strings", "-w", str(ws),
                  "--json", "-k", "3"], env, tmp_path)
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["path"] == "pkg/strings.py" and hits[0]["start_line"] == 1
    similar = _run([mose, "similar", f"{ws / 'pkg' / 'strings.py'}:4", "--json"], env, ws)
    result = json.loads(similar.stdout)
    assert result["hits"] and all(h["symbol"] != "levenshtein_distance" for h in result["hits"])
