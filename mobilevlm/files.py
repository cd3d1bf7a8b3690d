"""File helpers shared by checkpoints, the default model and bundles."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (GGUFs and ONNX weights are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """``$MOBILEVLM_CACHE``, else ``$XDG_CACHE_HOME/mobilevlm``, else ``~/.cache/mobilevlm``."""
    if os.environ.get("MOBILEVLM_CACHE"):
        return Path(os.environ["MOBILEVLM_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mobilevlm"
