"""File checks of a bundle: every file the chosen artefacts need, by size and sha256.

Every load checks that each file exists with the size the manifest records.
Checksums cost a read of every byte, so they run on request (``"full"``) or
the first time a file is seen (``"auto"``): the verified (size, mtime, sha256)
is remembered in the cache directory and a later load re-hashes only a file
that changed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mobilevlm.errors import BundleError, at
from mobilevlm.files import cache_root, sha256_file
from mobilevlm.manifest import Artefact

log = logging.getLogger(__name__)

VERIFY_MODES = ("auto", "full", "size")
VERIFIED_FILE = "verified-files.json"


def _load_verified(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def verify_files(root: Path, artefacts: tuple[Artefact, ...], mode: str = "auto") -> None:
    """Raise :class:`BundleError` naming the first missing, truncated or corrupted file."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    record_path = cache_root() / VERIFIED_FILE
    record = _load_verified(record_path) if mode == "auto" else {}
    changed = False
    for artefact in artefacts:
        for entry in artefact.files:
            file = root / entry.path
            try:
                stat = file.stat()
            except FileNotFoundError:
                raise BundleError(at(file, "missing from the bundle")) from None
            if stat.st_size != entry.bytes:
                raise BundleError(
                    at(
                        file,
                        f"has {stat.st_size} bytes, the manifest says {entry.bytes} "
                        "(truncated or replaced; re-export the bundle)",
                    )
                )
            if mode == "size":
                continue
            key = str(file.resolve())
            seen = record.get(key)
            stamp = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": entry.sha256}
            if seen == stamp:
                continue
            log.info("checking sha256 of %s", file)
            if sha256_file(file) != entry.sha256:
                raise BundleError(at(file, "sha256 differs from the manifest (corrupted)"))
            record[key], changed = stamp, True
    if changed and mode == "auto":
        _save_verified(record_path, record)


def _save_verified(path: Path, record: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:  # a read-only cache only costs a re-hash next time
        log.warning("cannot record verified files in %s: %s", path, exc)
