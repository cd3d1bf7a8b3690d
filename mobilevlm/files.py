"""File helpers shared by checkpoints, the default model and bundles."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# in the cache directory: each file hashed once, by resolved path: its size, mtime, sha256
HASHES_FILE = "verified-files.json"


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


def read_hashes() -> dict:
    """The record of files already hashed (empty when there is none or it is damaged)."""
    try:
        record = json.loads((cache_root() / HASHES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_hashes(record: dict) -> None:
    """Replace the record atomically; a read-only cache only costs a hash next time."""
    path = cache_root() / HASHES_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(record, indent=1), encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        log.warning("cannot record hashed files in %s: %s", path, exc)


def file_stamp(stat: os.stat_result, sha256: str) -> dict:
    """What the record keeps of a file: it is unchanged while size and mtime are."""
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def remembered_sha256(path: str | Path) -> str:
    """:func:`sha256_file` of ``path``, from the record while the file's size and mtime are
    those it was hashed at (a 15 MB file costs 40 ms a hash: too much for every start of
    a command)."""
    path = Path(path).resolve()
    stat = path.stat()
    record = read_hashes()
    seen = record.get(str(path))
    if isinstance(seen, dict) and seen == file_stamp(stat, seen.get("sha256", "")):
        return seen["sha256"]
    digest = sha256_file(path)
    record[str(path)] = file_stamp(stat, digest)
    write_hashes(record)
    return digest
