"""The token embedding table, memory-mapped for random access: only the rows of tokens
actually used become resident.

A plain memory map lets the kernel read around each fault (64 to 160 KiB of
neighbouring rows), so a few hundred distinct tokens made most of a 54 MiB
table resident. Advising random access (``MADV_RANDOM``) turns read-around and
fault-around off: each distinct token then costs the one or two pages its row
lies on, which is what the memory planner counts.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from mobilevlm.errors import BundleError, at

PAGE = mmap.PAGESIZE
READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def open_table(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """The (vocab, hidden) ``.npy`` table at ``path``, read-only and memory-mapped."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in READERS:
                raise ValueError(f".npy format version {version} is not supported")
            found, fortran, dtype = READERS[version](f)
            offset = f.tell()
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise BundleError(at(path, f"not a .npy embedding table ({exc})")) from exc
    if tuple(found) != tuple(shape) or fortran:
        raise BundleError(at(path, f"shape {tuple(found)}, expected {tuple(shape)}"))
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):  # Linux, macOS
        mapped.madvise(mmap.MADV_RANDOM)
    return np.ndarray(shape, dtype=dtype, buffer=mapped, offset=offset)


def resident_bound(row_bytes: int, rows: int, table_bytes: int) -> int:
    """At most what ``rows`` distinct rows make resident under random access: the pages
    each row touches, never more than the whole table."""
    pages_per_row = -(-row_bytes // PAGE) + 1  # a row may straddle a page boundary
    return min(table_bytes, rows * pages_per_row * PAGE)
