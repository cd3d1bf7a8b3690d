"""The process's heap: giving freed memory back to the operating system, reading its size.

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


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, whose high-water mark belongs to
    the current program (``ru_maxrss`` keeps the forking parent's across exec, so a child
    of a large process would report the parent's peak); ``ru_maxrss`` where there is no
    /proc."""
    try:
        return _status_bytes("VmHWM:")
    except OSError:
        import resource
        import sys

        unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


def current_rss() -> int:
    """This process's resident memory now, in bytes (Linux's /proc)."""
    return _status_bytes("VmRSS:")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")
