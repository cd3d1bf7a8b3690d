"""Giving freed memory back to the operating system.

glibc keeps what a process frees in its heap for later allocations, so a released
vision session or KV cache would stay in the resident set (57 of the default model's
65 MiB vision session did) and a memory budget could not count on its release.
``malloc_trim(0)`` hands the free pages back; elsewhere (musl, macOS, Windows) this
is a no-op and the planner's constants are this machine's, measured with glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def give_back() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
