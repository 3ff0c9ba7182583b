"""Which files of a workspace are indexed.

Honours nested ``.gitignore`` files and a ``.moseignore`` (same syntax) at any level, the
default excludes (VCS folders, virtual environments, build output) and the secret patterns
(``.env*``, keys, credentials), which are never read. Symbolic links are not followed: a
linked file is indexed only when it resolves inside the workspace, a linked folder never
(this rules out loops and escapes).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pathspec import GitIgnoreSpec

from .config import DEFAULT_EXCLUDES, Settings

IGNORE_FILES = (".gitignore", ".moseignore")


@dataclass(frozen=True)
class FileEntry:
    rel: str  # workspace-relative posix path
    path: Path  # absolute path
    size: int
    mtime_ns: int


class IgnoreRules:
    """Layered gitignore-style rules, decided as git decides them.

    A folder's ``.gitignore`` (and ``.moseignore``, same syntax, which wins over it) applies
    to the paths below that folder. For one path the deepest file with a matching pattern
    decides, and within a file the last matching pattern, so a deeper ``!negation``
    re-includes what a parent file excluded. A path inside an excluded folder stays excluded
    whatever the deeper files say: git does not look into that folder, and neither do we.
    The default excludes and the secret patterns are absolute: no negation re-includes them.
    """

    def __init__(self, root: Path, settings: Settings):
        self.root = root
        self.settings = settings
        # The default excludes, the settings' excludes and the secret patterns, as one test
        # (one regular expression when none of them is a negation, as is usual).
        self._absolute = _any_match(GitIgnoreSpec.from_lines(settings.secret_patterns),
                                    GitIgnoreSpec.from_lines([*DEFAULT_EXCLUDES,
                                                              *settings.exclude]))
        self._layers: dict[str, list[GitIgnoreSpec]] = {}
        self._dirs: dict[str, bool] = {}  # folder -> ignored (the walk asks again and again)

    def load_dir(self, rel_dir: str) -> None:
        """Read the ignore files of ``rel_dir`` ('' for the root) once."""
        if rel_dir in self._layers:
            return
        specs = []
        names = IGNORE_FILES if self.settings.use_gitignore else (".moseignore",)
        for name in names:
            path = self.root / rel_dir / name
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            specs.append(GitIgnoreSpec.from_lines(lines))
        self._layers[rel_dir] = specs

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether the workspace-relative path ``rel`` (a folder when ``is_dir``) is ignored."""
        plain = rel and "//" not in rel and "/./" not in rel and not rel.startswith(
            ("/", "./")) and not rel.endswith("/")
        parts = tuple(rel.split("/")) if plain else PurePosixPath(rel).parts
        for depth in range(1, len(parts)):
            if self._dir_ignored("/".join(parts[:depth])):
                return True
        return self._own_rules(parts, is_dir)

    def entry_ignored(self, rel: str, is_dir: bool) -> bool:
        """:meth:`ignored` for an entry of a folder already known not to be ignored (as the
        walk, which descends only into such folders, knows): its own rules decide."""
        return self._own_rules(tuple(rel.split("/")), is_dir)

    def _dir_ignored(self, rel_dir: str) -> bool:
        known = self._dirs.get(rel_dir)
        if known is None:
            parts = tuple(rel_dir.split("/"))
            parent = "/".join(parts[:-1])
            known = (bool(parent) and self._dir_ignored(parent)) or self._own_rules(parts, True)
            self._dirs[rel_dir] = known
        return known

    def _own_rules(self, parts: tuple[str, ...], is_dir: bool) -> bool:
        """The rules that name this path itself (its folders already checked)."""
        slash = "/" if is_dir else ""
        probe = "/".join(parts) + slash
        if self._absolute(probe):
            return True
        for depth in range(len(parts) - 1, -1, -1):  # the deepest ignore file first
            rel_dir = "/".join(parts[:depth])
            self.load_dir(rel_dir)
            layers = self._layers[rel_dir]
            if not layers:
                continue
            sub = "/".join(parts[depth:]) + slash
            for spec in reversed(layers):  # .moseignore over .gitignore
                verdict = spec.check_file(sub).include
                if verdict is not None:
                    return verdict
        return False


def _any_match(*specs: GitIgnoreSpec) -> Callable[[str], bool]:
    """Whether a path matches any of ``specs``. Specs without negations reduce to "some
    pattern matches", which one regular expression (their patterns' alternation) answers in
    a single search instead of one per pattern."""
    patterns = [p for spec in specs for p in spec.patterns]
    regexes = [getattr(p, "regex", None) for p in patterns if p.include is not None]
    if all(p.include in (True, None) for p in patterns) and all(
            isinstance(r, re.Pattern) for r in regexes):
        if not regexes:
            return lambda path: False
        # Each pattern's named groups get a unique name: an alternation may not repeat one.
        parts = [re.sub(r"\(\?P<(\w+)>", rf"(?P<\1_{i}>", r.pattern)
                 for i, r in enumerate(regexes)]
        combined = re.compile("|".join(f"(?:{part})" for part in parts))
        return lambda path: combined.search(path) is not None
    return lambda path: any(spec.match_file(path) for spec in specs)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def iter_files(root: Path, settings: Settings) -> Iterator[FileEntry]:
    """Yield the workspace's indexable files (sorted, deterministic)."""
    root = root.resolve()
    rules = IgnoreRules(root, settings)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        rules.load_dir(rel_dir)
        try:
            with os.scandir(root / rel_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable or vanished folder: nothing to index there
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_symlink():
                    if entry.is_dir():
                        continue  # never follow linked folders (loops, escapes)
                    target = Path(entry.path).resolve()
                    if not _inside(target, root):
                        continue
                    st = target.stat()
                    if not stat.S_ISREG(st.st_mode) or rules.entry_ignored(rel, False):
                        continue
                    yield FileEntry(rel, Path(entry.path), st.st_size, st.st_mtime_ns)
                elif entry.is_dir(follow_symlinks=False):
                    if not rules.entry_ignored(rel, True):
                        subdirs.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    if rules.entry_ignored(rel, False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    yield FileEntry(rel, Path(entry.path), st.st_size, st.st_mtime_ns)
            except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Path.resolve)
                continue  # deleted during the scan, or unreadable metadata
        stack.extend(reversed(subdirs))


def relative_path(root: Path, path: Path) -> str | None:
    """Workspace-relative posix path, or None when ``path`` is outside the workspace."""
    root = root.resolve()
    try:
        rel = Path(os.path.abspath(path)).relative_to(root)
    except ValueError:
        try:
            rel = path.resolve().relative_to(root)
        except (ValueError, OSError):
            return None
    return rel.as_posix()
