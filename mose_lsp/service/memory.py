"""Keeping a long-lived server's memory flat.

glibc's malloc gives each thread that allocates its own arena (up to 8 per core) and returns
freed memory to the system only from the top of an arena. A server whose worker threads
take turns at large, short-lived allocations (onnxruntime's activations, SQLite pages, numpy
batches) therefore grows in steps as new threads get new arenas and keeps what each arena
reached. :func:`limit_allocator_arenas` caps the arenas at two, so freed blocks are reused
across threads; it is what ``MALLOC_ARENA_MAX=2`` does, applied by the server itself so that
nobody has to know the variable. :func:`trim` hands free memory at the top of the arenas back
to the system (``malloc_trim``), for idle moments.

Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_allocator_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (unless the user set ``MALLOC_ARENA_MAX``); call it first
    thing in a server, before its threads start. Returns whether it applied."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX, %d) was refused", arenas)
    return ok


def trim() -> bool:
    """Give free heap memory back to the system (glibc ``malloc_trim(0)``)."""
    libc = _libc()
    return bool(libc.malloc_trim(ctypes.c_size_t(0))) if libc is not None else False
