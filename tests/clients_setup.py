"""Test setup for the third-party LSP clients (Emacs eglot, Vim with ALE): Debian packages
installed with apt-get when missing (root only), and the checks every client test makes on the
index a session left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

APT_TIMEOUT_S = 900


def ensure_debian_packages(*packages: str) -> str | None:
    """Install the missing ``packages`` with apt-get; None when all are there, else why not
    (a reason for ``pytest.skip``). Set MOSE_TEST_NO_APT=1 to never install."""
    if shutil.which("dpkg") is None:
        return "not a Debian system (no dpkg)"
    missing = [p for p in packages if subprocess.run(
        ["dpkg", "-s", p], capture_output=True, check=False).returncode != 0]
    if not missing:
        return None
    if os.environ.get("MOSE_TEST_NO_APT") == "1":
        return f"{', '.join(missing)} not installed (MOSE_TEST_NO_APT=1)"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{', '.join(missing)} not installed, and apt-get needs root: " \
               f"apt-get install -y {' '.join(missing)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                          capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S,
                          check=False)
    if done.returncode != 0:  # maybe the package lists are missing: update once, retry
        subprocess.run(["apt-get", "update"], capture_output=True, env=env,
                       timeout=APT_TIMEOUT_S, check=False)
        done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                              capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S,
                              check=False)
    if done.returncode != 0:
        return f"apt-get install {' '.join(missing)} failed: {done.stderr.strip()[-500:]}"
    return None


def package_dir(package: str, marker: str) -> Path | None:
    """The folder of an installed Debian package's files that holds ``marker``."""
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                             check=False).stdout.splitlines()
    for line in listing:
        if line.endswith("/" + marker):
            return Path(line[: -len(marker) - 1])
    return None


def wait_for_log(log: Path, text: str, timeout: float = 90.0) -> str:
    """The server's log once it holds ``text`` (the server outlives its client a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text() if log.exists() else ""
        if text in content:
            return content
        if time.monotonic() > deadline:
            raise AssertionError(f"the server log never said {text!r}:\n{content[-3000:]}")
        time.sleep(0.2)


def chunks_of(index) -> list[tuple]:
    return sorted((c.path, c.symbol or "", c.start_line, c.end_line, c.content_hash)
                  for f in index.store.all_files() for c in index.store.file_chunks(f.path))


def assert_index_intact(workspace: Path, index_dir: Path, model_path: Path,
                        scratch: Path) -> None:
    """The index left by a session opens with nothing to repair and holds what a fresh index
    of the files on disk holds (no unsaved buffer, nothing lost)."""
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.lsp import folder_settings

    settings = folder_settings(Settings(model=str(model_path), index_dir=str(index_dir)),
                               workspace.resolve())
    index = WorkspaceIndex.open(workspace, settings)
    try:
        assert index.store.rebuild_reason is None, index.store.recovery  # nothing to repair
        kept = chunks_of(index)
    finally:
        index.close()
    fresh = WorkspaceIndex.open(workspace, Settings(model=str(model_path), index_dir=str(scratch)))
    try:
        fresh.scan()
        assert kept == chunks_of(fresh)
    finally:
        fresh.close()
