"""The token embedding table, read from its file row by row: none of it is resident.

A memory-mapped table becomes resident by more than the rows a prompt reads:
the kernel maps read-around pages, and a file the page cache holds in large
folios (one just exported, say) is mapped a whole folio at a time, so 300
random rows made 40 of the built-in model's 54 MiB resident even with
``MADV_RANDOM``. Reading each distinct row with one positioned read costs a
system call per token (microseconds against a decode step's milliseconds) and
leaves the file in the page cache, which the process's resident memory does
not count.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mobilevlm.errors import BundleError, at

READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class EmbeddingTable:
    """A (vocab, hidden) ``.npy`` table; ``table[token]`` and ``table[ids]`` read rows."""

    def __init__(self, path: str | Path, shape: tuple[int, int]) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
            version = np.lib.format.read_magic(self._file)
            if version not in READERS:
                raise ValueError(f".npy format version {version} is not supported")
            found, fortran, dtype = READERS[version](self._file)
            self._offset = self._file.tell()
            size = os.fstat(self._file.fileno()).st_size
        except (OSError, ValueError) as exc:
            raise BundleError(at(self.path, f"not a .npy embedding table ({exc})")) from exc
        if tuple(found) != tuple(shape) or fortran or dtype.kind != "f":
            raise BundleError(at(self.path, f"shape {tuple(found)} {dtype}, expected {shape}"))
        self.shape, self.dtype = tuple(shape), dtype
        self._row_bytes = shape[1] * dtype.itemsize
        if size < self._offset + shape[0] * self._row_bytes:
            raise BundleError(at(self.path, "truncated: fewer rows than its header declares"))
        self._lock = threading.Lock()  # seek + read is one step on platforms without pread

    def _read(self, token: int) -> bytes:
        if not 0 <= token < self.shape[0]:
            raise IndexError(f"token {token} outside the vocabulary of {self.shape[0]}")
        where = self._offset + token * self._row_bytes
        if hasattr(os, "pread"):
            return os.pread(self._file.fileno(), self._row_bytes, where)
        with self._lock:
            self._file.seek(where)
            return self._file.read(self._row_bytes)

    def __getitem__(self, tokens: int | Sequence[int]) -> np.ndarray:
        """Row ``tokens`` (hidden,) or rows (len(tokens), hidden), float32."""
        if isinstance(tokens, int | np.integer):
            return np.frombuffer(self._read(int(tokens)), self.dtype).astype(np.float32)
        tokens = [int(t) for t in tokens]
        unique = sorted(set(tokens))
        rows = np.frombuffer(b"".join(self._read(t) for t in unique), self.dtype)
        rows = rows.reshape(len(unique), self.shape[1]).astype(np.float32)
        where = {t: i for i, t in enumerate(unique)}
        return rows[[where[t] for t in tokens]] if tokens else rows

    def close(self) -> None:
        self._file.close()
