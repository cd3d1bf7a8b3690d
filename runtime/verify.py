"""File checks of a bundle: every file the chosen artefacts need, by size and sha256.

Every load checks that each file exists with the size the manifest records.
Checksums cost a read of every byte, so they run on request (``"full"``) or
the first time a file is seen (``"auto"``): the verified (size, mtime, sha256)
is remembered in the cache directory and a later load re-hashes only a file
that changed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mobilevlm.errors import BundleError, at
from mobilevlm.files import file_stamp, read_hashes, sha256_file, write_hashes
from mobilevlm.manifest import Artefact

log = logging.getLogger(__name__)

VERIFY_MODES = ("auto", "full", "size")


def verify_files(root: Path, artefacts: tuple[Artefact, ...], mode: str = "auto") -> None:
    """Raise :class:`BundleError` naming the first missing, truncated or corrupted file."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    record = read_hashes() if mode == "auto" else {}
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
            stamp = file_stamp(stat, entry.sha256)
            if seen == stamp:
                continue
            log.info("checking sha256 of %s", file)
            if sha256_file(file) != entry.sha256:
                raise BundleError(at(file, "sha256 differs from the manifest (corrupted)"))
            record[key], changed = stamp, True
    if changed and mode == "auto":
        write_hashes(record)
