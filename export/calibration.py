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
HELDOUT_COUNT = 4  # images the NPU graph's parity is measured on, never calibrated on


def calibration_images(
    config: PreprocessConfig, directory: str | Path | None = None, limit: int = DEFAULT_COUNT
) -> list[np.ndarray]:
    """Up to ``limit`` preprocessed images from ``directory`` (sorted by name), or, without
    one, from the Shapes-VQA train split (the default model's domain)."""
    if directory is None:
        return [preprocess(shapes_vqa.sample("train", i).image(), config) for i in range(limit)]
    return [preprocess(p, config) for p in image_files(directory)[:limit]]


def calibration_split(
    config: PreprocessConfig, directory: str | Path | None = None, limit: int = DEFAULT_COUNT
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images to calibrate on and held-out ones to measure the result on: without
    ``directory``, Shapes-VQA's train and held-out splits; with it, its last images (a fifth,
    1 to 4 of them) held out, the rest (up to ``limit``) for calibration."""
    if directory is None:
        heldout = [shapes_vqa.sample("heldout", i).image() for i in range(HELDOUT_COUNT)]
        return calibration_images(config, None, limit), [preprocess(i, config) for i in heldout]
    files = image_files(directory)
    if len(files) < 2:
        raise ImageError(at(directory, "needs at least 2 images (calibration and held-out)"))
    held = max(1, min(HELDOUT_COUNT, len(files) // 5))
    calibration = [preprocess(p, config) for p in files[:-held][:limit]]
    return calibration, [preprocess(p, config) for p in files[-held:]]


def image_files(directory: str | Path) -> list[Path]:
    """The images in ``directory``, sorted by name; an ImageError when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ImageError(at(directory, "no such calibration image directory"))
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(
            at(directory, f"no calibration images (looked for {', '.join(IMAGE_SUFFIXES)})")
        )
    return files
