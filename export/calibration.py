"""Sample images for static quantization, preprocessed exactly as the runtime will."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilevlm import shapes_vqa
from mobilevlm.config import PreprocessConfig
from mobilevlm.errors import ImageError, at
from mobilevlm.generation.preprocess import preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_COUNT = 32


def calibration_images(
    config: PreprocessConfig, directory: str | Path | None = None, limit: int = DEFAULT_COUNT
) -> list[np.ndarray]:
    """Up to ``limit`` preprocessed images from ``directory`` (sorted by name), or, without
    one, from the Shapes-VQA train split (the default model's domain)."""
    if directory is None:
        return [preprocess(shapes_vqa.sample("train", i).image(), config) for i in range(limit)]
    directory = Path(directory)
    if not directory.is_dir():
        raise ImageError(at(directory, "no such calibration image directory"))
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(
            at(directory, f"no calibration images (looked for {', '.join(IMAGE_SUFFIXES)})")
        )
    return [preprocess(p, config) for p in files[:limit]]
