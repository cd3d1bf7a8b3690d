"""Image preprocessing: any image -> normalized, channel-first float32 pixel values.

One implementation (numpy + Pillow, torch-free) used by the torch reference,
the export checks and the runtime, so every path sees the same numbers. It
reproduces MobileVLM's pipeline: ``expand2square`` with the mean color, then
CLIPImageProcessor's bicubic resize (Pillow on uint8), rescale by 1/255 and
mean/std normalization.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mobilevlm.config import PreprocessConfig
from mobilevlm.errors import ImageError, at

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
_ALPHA_BACKGROUND = (255, 255, 255)
EXIF_ORIENTATION = 0x0112  # 1: upright; exif_transpose removes the tag once applied


# the largest image decoded (a 64-megapixel photo); Pillow's own bomb check is at 89M
MAX_IMAGE_PIXELS = 64_000_000
MAX_PAD_SIDE = 4096  # the square an image is padded to, at most (50 MB of RGB)


def load_image(image: ImageInput) -> Image.Image:
    """Open ``image`` as an upright RGB Pillow image.

    Accepts a path, encoded bytes, a Pillow image or an HxW / HxWxC uint8
    array. EXIF orientation is applied; transparent images are composited on
    white; 16-bit grayscale is scaled to 8 bits.
    """
    if isinstance(image, Image.Image):
        if image.mode == "RGB" and image.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return image  # upright RGB already (what this function returns): no copy
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, bytes | bytearray):
        return _open(io.BytesIO(image), "<bytes>")
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            found = path.is_file()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte in it
            raise ImageError(at(path, f"not a usable path ({exc})")) from None
        if not found:
            raise ImageError(at(path, "no such image file"))
        return _open(path, path)
    raise ImageError(f"unsupported image input of type {type(image).__name__}")


def _open(source, name) -> Image.Image:
    try:
        with Image.open(source) as img:
            width, height = img.size  # from the header: refused before anything is decoded
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    at(name, f"{width}x{height} is over the {MAX_IMAGE_PIXELS:,}-pixel limit")
                )
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as exc:
        why = (
            "not an image format this runtime reads"  # Pillow's message names a file object
            if isinstance(exc, UnidentifiedImageError)
            else f"{exc.__class__.__name__}: {exc}"
        )
        raise ImageError(at(name, f"cannot read image ({why})")) from exc


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageError(f"image arrays must be uint8 (HxW or HxWxC), got {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return _to_rgb(Image.fromarray(array, "RGB" if array.shape[2] == 3 else "RGBA"))
    raise ImageError(f"image arrays must be HxW, HxWx3 or HxWx4, got shape {array.shape}")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((arr >> 8 if arr.max() > 255 else arr).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad the short side symmetrically (extra pixel at the end), as MobileVLM's expand2square."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    square = Image.new(img.mode, (side, side), fill)
    square.paste(img, ((side - width) // 2, (side - height) // 2))
    return square


def _resize_shortest_edge_and_crop(img: Image.Image, size: int, resample) -> Image.Image:
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    img = img.resize((new_w, new_h), resample=resample)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return img.crop((left, top, left + size, top + size))


def _bounded(img: Image.Image, resample: int) -> Image.Image:
    """``img`` with its long side at most MAX_PAD_SIDE: padding a panorama to a square of
    its long side would allocate that side squared (62,765 x 30 pixels: 11 GB). Images
    within the bound, every photo, are padded exactly as the reference pads them."""
    width, height = img.size
    long = max(width, height)
    if long <= MAX_PAD_SIDE:
        return img
    scale = MAX_PAD_SIDE / long
    return img.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample)


def preprocess(image: ImageInput, config: PreprocessConfig) -> np.ndarray:
    """Pixel values of one image: float32 array of shape (3, image_size, image_size)."""
    return preprocess_image(load_image(image), config)


def preprocess_image(img: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """:func:`preprocess` of an image :func:`load_image` has decoded (upright RGB)."""
    size = config.image_size
    try:
        resample = _RESAMPLE[config.resample]
    except KeyError:
        raise ImageError(f"unknown resample filter {config.resample!r}") from None
    if config.aspect == "pad":
        fill = tuple(int(m * 255) for m in config.mean)
        img = expand_to_square(_bounded(img, resample), fill).resize((size, size), resample)
    elif config.aspect == "crop":
        img = _resize_shortest_edge_and_crop(img, size, resample)
    elif config.aspect == "resize":
        img = img.resize((size, size), resample=resample)
    else:
        raise ImageError(f"unknown aspect mode {config.aspect!r} (expected pad, crop or resize)")
    pixels = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))
