"""Where a workspace's index lives, and removing one."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..errors import StoreError
from .database import DB_NAME
from .vector_cache import ANN_FILES


def default_index_dir(workspace: Path | str) -> Path:
    """Where a workspace's index lives by default: ``<user cache>/mose/indexes/<name>-<hash12>``.

    The hash is of the resolved workspace path, so two checkouts with the same folder name get
    different indexes; the name keeps the folder recognisable.
    """
    import platformdirs

    resolved = Path(workspace).expanduser().resolve()
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved.name).strip("._")[:40] or "root"
    cache = Path(platformdirs.user_cache_dir("mose", appauthor=False))
    return cache / "indexes" / f"{name}-{digest}"


def remove_index(index_dir: Path | str) -> list[Path]:
    """Delete a store's files (for ``mose index --rebuild``): the database with its WAL files
    and the vector index with its sidecar. Other files are left alone, and the folder is
    removed only if that leaves it empty. Close any open :class:`Store` on it first.
    Returns the paths removed."""
    folder = Path(index_dir).expanduser()
    names = [DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal"]
    for name in (n for kind in ANN_FILES.values() for n in kind.values()):
        names += [name, name + ".json"]
    removed = []
    for name in names:
        path = folder / name
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise StoreError(f"cannot delete {path}: {err}") from err
        removed.append(path)
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (someone else's files) or already gone
    return removed
