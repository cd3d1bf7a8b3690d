"""Image preprocessing matches MobileVLM's pipeline (expand2square + CLIPImageProcessor)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mobilevlm.config import PreprocessConfig
from mobilevlm.errors import ImageError
from mobilevlm.generation.preprocess import load_image, preprocess

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_processor(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        resample=3,
    )


def llava_expand2square(img: Image.Image, background) -> Image.Image:
    """MobileVLM's utils.expand2square, restated."""
    width, height = img.size
    if width == height:
        return img
    if width > height:
        result = Image.new(img.mode, (width, width), background)
        result.paste(img, (0, (width - height) // 2))
        return result
    result = Image.new(img.mode, (height, height), background)
    result.paste(img, ((height - width) // 2, 0))
    return result


@pytest.mark.parametrize("size", [336, 56])
@pytest.mark.parametrize("transpose", [False, True], ids=["wide", "tall"])
def test_pad_matches_clip_image_processor(rgb_image, size, transpose):
    array = rgb_image.transpose(1, 0, 2).copy() if transpose else rgb_image
    pil = Image.fromarray(array)
    background = tuple(int(m * 255) for m in CLIP_MEAN)
    expected = clip_processor(size)(
        images=llava_expand2square(pil, background), return_tensors="np"
    )["pixel_values"][0]
    ours = preprocess(pil, PreprocessConfig(image_size=size, aspect="pad"))
    assert ours.shape == expected.shape == (3, size, size)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("transpose", [False, True], ids=["wide", "tall"])
def test_crop_matches_clip_image_processor(rgb_image, transpose):
    array = rgb_image.transpose(1, 0, 2).copy() if transpose else rgb_image
    expected = clip_processor(64)(images=Image.fromarray(array), return_tensors="np")[
        "pixel_values"
    ][0]
    ours = preprocess(array, PreprocessConfig(image_size=64, aspect="crop"))
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_resize_squashes_to_square_channel_first_float32(rgb_image):
    config = PreprocessConfig(
        image_size=48, aspect="resize", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    out = preprocess(rgb_image, config)
    assert out.dtype == np.float32 and out.shape == (3, 48, 48) and out.flags.c_contiguous
    resized = np.asarray(Image.fromarray(rgb_image).resize((48, 48), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(out, (resized / 255.0 - 0.5).transpose(2, 0, 1) / 0.5, atol=1e-6)


def test_all_input_kinds_give_the_same_pixels(rgb_image, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(rgb_image).save(path)
    config = PreprocessConfig(image_size=56)
    outs = [
        preprocess(x, config)
        for x in (path, str(path), path.read_bytes(), Image.fromarray(rgb_image), rgb_image)
    ]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


def test_exif_orientation_is_applied(rgb_image):
    img = Image.fromarray(rgb_image)  # 140 wide, 90 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after rotating 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    loaded = load_image(buf.getvalue())
    assert loaded.size == (90, 140)
    raw = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(loaded), np.rot90(raw, k=-1))


def test_transparent_pixels_become_white_and_gray_becomes_rgb():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4, :, :] = (200, 10, 10, 255)
    out = np.asarray(load_image(rgba))
    assert (out[:4] == (200, 10, 10)).all() and (out[4:] == 255).all()
    gray = load_image(Image.new("L", (5, 5), 77))
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [77, 77, 77]
    cmyk = load_image(Image.new("CMYK", (5, 5), (0, 0, 0, 0)))
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[0, 0].tolist() == [255, 255, 255]


def test_palette_and_16_bit_images_are_converted():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert np.asarray(load_image(palette))[0, 0].tolist() == [10, 20, 30]
    deep = Image.fromarray(np.full((4, 4), 0x8000, dtype=np.uint16))
    assert np.asarray(load_image(deep))[0, 0].tolist() == [128, 128, 128]


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="broken.png: cannot read image"):
        load_image(bad)
    with pytest.raises(ImageError, match="missing.png: no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
