"""An index on disk: the file, its JSON sidecar (format, dimension, live count, deleted labels,
size and SHA-256, caller metadata) and atomic saves. Nothing is pickled."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .base import IndexFileError

SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "mose-vector-index"
SIDECAR_VERSION = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def sidecar_path(path: Path | str) -> Path:
    """The JSON sidecar that describes the index file at ``path``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path | str) -> dict[str, Any]:
    """Read and validate the sidecar of the index saved at ``path``.

    Raises :class:`IndexFileError` when it is missing, unreadable, not JSON, or not ours.
    """
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise IndexFileError(f"{side} is missing") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFileError(f"{side} is unreadable: {err}") from err
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise IndexFileError(f"{side} is not a mose vector index sidecar")
    if data.get("version") != SIDECAR_VERSION:
        raise IndexFileError(f"{side} has version {data.get('version')!r}, expected {SIDECAR_VERSION}")
    for key, kind in (("kind", str), ("dim", int), ("count", int), ("size", int), ("sha256", str)):
        if not isinstance(data.get(key), kind):
            raise IndexFileError(f"{side} lacks a valid {key!r}")
    if not isinstance(data.get("meta", {}), dict):
        raise IndexFileError(f"{side} has a malformed 'meta'")
    return data


def check_file(path: Path, info: Mapping[str, Any], kind: str, dim: int) -> None:
    if info["kind"] != kind:
        raise IndexFileError(f"{path} holds a {info['kind']!r} index, expected {kind!r}")
    if info["dim"] != dim:
        raise IndexFileError(f"{path} holds vectors of dimension {info['dim']}, expected {dim}")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise IndexFileError(f"{path} is missing or unreadable: {err}") from err
    if size != info["size"]:
        raise IndexFileError(f"{path} has {size} bytes, its sidecar says {info['size']} (truncated?)")
    if file_sha256(path) != info["sha256"]:
        raise IndexFileError(f"{path} does not match the checksum in its sidecar (corrupt)")


def save_atomically(
    path: Path, write_data: Callable[[Path], None], sidecar: dict[str, Any]
) -> None:
    """Write the data file and its sidecar with temp files + os.replace; files are 0600."""
    path = Path(path)
    side = sidecar_path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp_side = side.with_name(f".{side.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write_data(tmp)
        os.chmod(tmp, 0o600)
        fsync_path(tmp)
        sidecar = {**sidecar, "size": tmp.stat().st_size, "sha256": file_sha256(tmp)}
        fd = os.open(tmp_side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(sidecar, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        # Remove the old sidecar first: a crash between the two renames leaves no sidecar
        # (load fails and the caller rebuilds) rather than a sidecar describing other data.
        side.unlink(missing_ok=True)
        os.replace(tmp, path)
        os.replace(tmp_side, side)
        fsync_path(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)


def make_sidecar(kind: str, dim: int, count: int, meta: Mapping[str, Any] | None, **extra: Any) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "kind": kind,
        "dim": dim,
        "count": count,
        "meta": dict(meta or {}),
        **extra,
    }
