"""The workspace rule: which folder a command works on, and where its index is.

Stated once, for every command that takes a workspace (``index``, ``search``, ``similar``,
``status``, and the editors' ``serve``/``mcp`` folders):

- A folder you name (``mose index DIR``, ``-w DIR``, an editor's workspace folder) is the
  workspace, exactly that folder: never a parent or a child of it.
- Without one, the workspace is the nearest folder, from the current folder upwards, that is
  already indexed; else the nearest holding ``.git`` or ``.moseignore``; else the current
  folder.
- Its index lives in ``--index-dir`` when given, else in a per-user cache folder keyed by the
  workspace's path (so ``mose index DIR`` and ``mose search -w DIR`` name the same index).
- A file argument (``mose similar FILE``) must lie inside the workspace.

:data:`RULE` is the text that ``--help`` and the README show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .output import CliError

RULE = ("The workspace is the folder you name (index DIR, -w DIR), exactly; without one, the "
        "nearest folder from the current one upwards that is already indexed, else that holds "
        ".git or .moseignore, else the current folder. Its index lives in --index-dir, else in "
        "a per-user cache folder keyed by the workspace's path.")

MARKERS = (".git", ".moseignore")


@dataclass(frozen=True)
class Workspace:
    root: Path  # resolved
    index_dir: Path
    explicit: bool  # named by the user (DIR or -w), not found from the current folder

    @property
    def indexed(self) -> bool:
        """Whether an index exists for it (read-only commands need one)."""
        return _has_index(self.index_dir)

    def require_index(self) -> None:
        """Raise the not-indexed error (and create nothing) when there is no index."""
        if not self.indexed:
            raise CliError(
                f"{self.root} is not indexed (no index in {self.index_dir}). Build it with: "
                f"mose index {_quote(self.root)}"
                + (f" --index-dir {_quote(self.index_dir)}" if not self._default_dir else ""),
                code="not-indexed")

    @property
    def _default_dir(self) -> bool:
        from ..store import default_index_dir

        return self.index_dir == default_index_dir(self.root)

    def relative(self, file: Path) -> str:
        """``file``'s workspace-relative path; an error when it lies outside the workspace."""
        from ..walker import relative_path

        rel = relative_path(self.root, file)
        if rel is None or rel.startswith("../") or rel == "..":
            raise CliError(
                f"{file} is outside the workspace {self.root}. Run the command from inside the "
                f"file's workspace, or name it with -w DIR (the folder you indexed).",
                code="outside-workspace")
        return rel


def _quote(path: Path) -> str:
    text = str(path)
    return f"'{text}'" if any(c in text for c in " \t'\"$&;|()<>*?") else text


def _has_index(index_dir: Path) -> bool:
    from ..store import DB_NAME

    return (index_dir / DB_NAME).is_file()


def resolve(folder: Path | None, index_dir: Path | None = None,
            start: Path | None = None) -> Workspace:
    """Apply the workspace rule: ``folder`` is what the user named (None: find it from
    ``start``, default the current folder); ``index_dir`` the ``--index-dir`` option."""
    from ..store import default_index_dir

    if folder is not None:
        root = Path(os.path.abspath(folder.expanduser()))
        if not root.exists():
            raise CliError(f"workspace {folder} does not exist: name an existing folder",
                           code="workspace")
        if not root.is_dir():
            raise CliError(f"workspace {folder} is not a folder: name the folder that holds "
                           f"your code (a file goes after the command, e.g. 'mose similar "
                           f"FILE:LINE -w DIR')", code="workspace")
        root = root.resolve()
        explicit = True
    else:
        root = find(start or Path.cwd(), check_indexes=index_dir is None)
        explicit = False
    chosen = Path(os.path.abspath(index_dir.expanduser())) if index_dir else default_index_dir(root)
    return Workspace(root, chosen, explicit)


def find(start: Path, check_indexes: bool = True) -> Path:
    """The folder the rule picks from ``start`` when none is named."""
    from ..store import default_index_dir

    start = start.resolve()
    chain = (start, *start.parents)
    if check_indexes:
        for folder in chain:
            if _has_index(default_index_dir(folder)):
                return folder
    for folder in chain:
        if any((folder / m).exists() for m in MARKERS):
            return folder
    return start
