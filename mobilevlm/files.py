"""File helpers shared by checkpoints, the default model and bundles."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

HASHES_FILE = "file-hashes.json"  # in the cache directory: (size, mtime) -> sha256


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


def remembered_sha256(path: str | Path) -> str:
    """:func:`sha256_file` of ``path``, read from a record in the cache directory while the
    file's size and mtime are those it was hashed at (a 15 MB file costs 40 ms a hash:
    too much for every start of a command)."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    record_path = cache_root() / HASHES_FILE
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        seen = record.get(str(path)) if isinstance(record, dict) else None
    except (OSError, ValueError):
        record, seen = {}, None
    if isinstance(seen, dict) and seen.get("stamp") == stamp:
        return seen["sha256"]
    digest = sha256_file(path)
    record = record if isinstance(record, dict) else {}
    record[str(path)] = {"stamp": stamp, "sha256": digest}
    temporary = record_path.with_name(f".{HASHES_FILE}.{os.getpid()}")
    try:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(record, indent=1), encoding="utf-8")
        temporary.replace(record_path)
    except OSError:  # a read-only cache only costs the hash next time
        pass
    return digest
