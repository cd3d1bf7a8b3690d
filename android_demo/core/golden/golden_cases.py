"""The inputs of the golden files: what make_golden.py runs through the Python runtime.

Chosen to reach every rule the Java core reproduces: each pre-tokenizer class and special token,
each image mode and EXIF orientation, each sampler filter, each manifest check.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
from PIL import Image

# ---------------------------------------------------------------- tokenizer

CORPUS = [
    "",
    "Hello world",
    "What color is the circle?",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\r\nand\n\n\nruns   of    spaces",
    " \n \t\u3000 \u00a0\u2003 unicode spaces\u2028line\u2029para\u0085",
    "digits 0123456789 3.14159 1,000,000 -42 +7e10 x2 2x",
    "Arabic-Indic \u0663\u0664\u0665, fullwidth \uff11\uff12",
    "circled \u2460\u2461, roman \u216b, x\u00b2",
    "def f(x):\n    return x**2 + 1  # square\n\nprint(f(3))",
    'if (a && b) { c[i] = "s" + d->e; } // <tag attr="v"/>',
    "don't I'll we've they're she's it'd I'm DON'T 'quoted'",
    "café naïve Ångström résumé Zürich façade coöperate",
    "e\u0301 combining a\u0308 marks",
    "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ、ひらがな",
    "한국어 문장입니다",
    "Привет, мир! Ελληνικά και עברית و العربية",
    "हिन्दी पाठ और தமிழ்",
    "emoji 👍 👍🏽 🇫🇷 👨‍👩‍👧 😀😃😄 ❤️ ✨",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|im_start|><|im_end|><|endoftext|>",
    "half <|im_ and <|im_end and im_end|>",
    "<|im_end|>glued<|im_start|>",
    "<image>\nWhat is this?",
    "a\u200bzero\u200dwidth\ufeffbom",
    "math: ∑ ∫ √ ≤ ≥ ≠ ∞ π",
    "mixed123abc456 x1y2z3",
    "!!!??? ... --- *** ###",
    "\x00\x01 control \x7f chars",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚 astral",
]
TOKEN_NAMES = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "</s>", "Hello", "Ġthe", "nope!!"]
PROMPT_TEXTS = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
    "What color is the circle?<|im_end|>\n<|im_start|>assistant\n",
    "<image>\nfirst",
    "no image here",
    "a<image>b<image>c",
    "<image>",
]
STREAMS = [
    ("The answer is red.", []),
    ("The answer is red.\n\nUSER: next", ["\n\n"]),
    ("Stop at END please ENDING", ["END"]),
    ("emoji 👍🏽 then 🙂 stop", ["🙂"]),
    ("partial ### marker", ["####"]),
    ("café 你好 done", ["好 d"]),
    ("two stops: first ## then !!", ["!!", "##"]),
]

# ---------------------------------------------------------------- prompts

CONVERSATION = [["What color is the circle?", "Red."], ["And the square?", None]]
PROMPTS = [
    ("chatml", [["What color is the circle?", None]], None, True),
    ("chatml", [["What color is the circle?", None]], None, False),
    ("chatml", CONVERSATION, None, True),
    ("chatml", CONVERSATION, "", True),
    ("chatml", CONVERSATION, "Answer in one word.", False),
    ("v1", [["Describe the image.", None]], None, True),
    ("v1", CONVERSATION, None, True),
    ("v1", CONVERSATION, "Be brief.", False),
    ("chatml", [["unicode: 你好 👍🏽\n\nnew lines", None]], None, True),
    ("chatml", [["where is the <image> tag?", None]], None, True),
    ("chatml", [["answered", "already"]], None, True),
    ("chatml", [], None, True),
    ("llama3", [["hi", None]], None, True),
]

# ---------------------------------------------------------------- images


def _noise(rng, h, w, c):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 7 + yy * 3 + 40 * k) % 256 for k in range(c)], axis=-1)
    return np.clip(base + rng.integers(-60, 60, size=base.shape), 0, 255).astype(np.uint8)


def _saver(array_or_image, mode=None, **save):
    def make(path):
        im = array_or_image
        if isinstance(im, np.ndarray):
            im = Image.fromarray(im, mode) if mode else Image.fromarray(im)
        im.save(path, **save)

    return make


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def images(rng):
    """(file name, writer, changes to the bundle's preprocess config) of each golden image."""
    rgb = _noise(rng, 90, 140, 3)
    out = [
        ("rgb_wide.png", _saver(rgb), {}),
        ("rgb_tall.png", _saver(_noise(rng, 101, 37, 3)), {}),
        ("rgb_square_exact.png", _saver(_noise(rng, 384, 384, 3)), {}),
        ("rgb_up.png", _saver(_noise(rng, 20, 20, 3)), {}),
        ("rgb_large.png", _saver(_noise(rng, 700, 1000, 3)), {}),
        ("panorama.png", _saver(_noise(rng, 30, 5000, 3)), {}),
        ("tiny_1x1.png", _saver(_noise(rng, 1, 1, 3)), {}),
        ("tiny_2x3.png", _saver(_noise(rng, 3, 2, 3)), {}),
        ("tiny_1x50.png", _saver(_noise(rng, 50, 1, 3)), {}),
        ("gray.png", _saver(_noise(rng, 64, 48, 1)[..., 0], "L"), {}),
        ("gray_trns.png", _saver(_noise(rng, 40, 30, 1)[..., 0], "L", transparency=100), {}),
        ("rgb_trns.png", _saver(rgb, transparency=(10, 20, 30)), {}),
        ("bilevel.png", _saver(Image.fromarray(_noise(rng, 33, 45, 1)[..., 0]).convert("1")), {}),
        ("gray_alpha.png", _saver(_noise(rng, 50, 70, 2), "LA"), {}),
        ("rgba.png", _saver(_noise(rng, 77, 55, 4), "RGBA"), {}),
        ("rgba_extremes.png", _saver(_rgba_extremes(rng), "RGBA"), {}),
        ("gray16_high.png", _saver(_gray16(rng, 65535)), {}),
        ("gray16_low.png", _saver(_gray16(rng, 255)), {}),
    ]
    palette_image = Image.fromarray(rng.integers(0, 200, size=(60, 80), dtype=np.uint8), "P")
    palette_image.putpalette(rng.integers(0, 256, size=600, dtype=np.uint8).tolist())
    out.append(("palette.png", _saver(palette_image), {}))
    out.append(("palette_index_trns.png", _saver(palette_image, transparency=7), {}))
    alphas = bytes(rng.integers(0, 256, size=150, dtype=np.uint8).tolist())
    out.append(("palette_alpha_trns.png", _saver(palette_image, transparency=alphas), {}))
    small_palette = Image.fromarray(rng.integers(0, 4, size=(25, 31), dtype=np.uint8), "P")
    small_palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    out.append(("palette_2bit.png", _saver(small_palette, bits=2), {}))
    for orientation in range(2, 9):
        out.append((f"exif_{orientation}.png", _saver(rgb, exif=_exif(orientation)), {}))
    out.append(("exif_6_rgba.png", _saver(_noise(rng, 30, 50, 4), "RGBA", exif=_exif(6)), {}))
    out.append(("rgb.bmp", _saver(_noise(rng, 41, 67, 3)), {}))
    out.append(("crop_wide.png", _saver(rgb), {"aspect": "crop"}))
    out.append(("crop_tall.png", _saver(_noise(rng, 101, 37, 3)), {"aspect": "crop"}))
    out.append(("resize_bilinear.png", _saver(rgb), {"aspect": "resize", "resample": "bilinear"}))
    out.append(("pad_lanczos.png", _saver(rgb), {"resample": "lanczos"}))
    out.append(("clip_small.png", _saver(rgb), {"image_size": 224,
                "mean": [0.48145466, 0.4578275, 0.40821073],
                "std": [0.26862954, 0.26130258, 0.27577711]}))  # fmt: skip
    return out


def _rgba_extremes(rng):
    a = _noise(rng, 40, 64, 4)
    a[::3, :, 3] = 0
    a[1::3, :, 3] = 255
    a[:, ::5, 3] = 1
    return a


def _gray16(rng, top):
    return Image.fromarray(rng.integers(0, top + 1, size=(45, 60)).astype(np.uint16))


# ---------------------------------------------------------------- sampler

SAMPLER_CASES = [
    (50, {"temperature": 0.0}, ()),
    (50, {"temperature": 0.0, "repetition_penalty": 1.3}, (3, 7, 7, 49, 60, -200)),
    (50, {"temperature": 1.0}, ()),
    (50, {"temperature": 0.7, "top_k": 5}, ()),
    (50, {"temperature": 1.3, "top_p": 0.8}, ()),
    (50, {"temperature": 0.9, "top_k": 10, "top_p": 0.9, "repetition_penalty": 1.2}, (1, 2, 3)),
    (50, {"temperature": 2.0, "top_p": 0.05}, ()),
    (50, {"temperature": 0.5, "top_k": 1}, ()),
    (50, {"temperature": 1.0, "top_k": 49}, ()),
    (50, {"temperature": 1.0, "repetition_penalty": 0.7}, tuple(range(0, 50, 2))),
    (50, {"temperature": 1e-39}, ()),  # a temperature near 0: the argmax, never NaN
    (
        49152,
        {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.1},
        (100, 2000, 30000),
    ),
    (49152, {"temperature": 1.0}, ()),
    (49152, {"temperature": 0.6, "top_p": 0.5}, ()),
]

# ---------------------------------------------------------------- generation

SAMPLED_SEED = 20261203
GENERATION_RUNS = [
    (
        "greedy",
        {"max_new_tokens": 24},
        ["What color is the circle?", "What shape is blue?", "Describe the image."],
        True,
    ),
    (
        "sampled",
        {
            "max_new_tokens": 24,
            "temperature": 0.9,
            "top_k": 40,
            "top_p": 0.95,
            "repetition_penalty": 1.1,
        },
        ["What color is the circle?", "Describe the image."],
        True,
    ),  # fmt: skip
    ("text_only", {"max_new_tokens": 12}, ["What is two plus three?", "Write a poem."], False),
]

# ---------------------------------------------------------------- JSON

JSON_TEXTS = [
    '"\\u12g4"', '"ab\\u12"', '"\\', "[1 2]", '{"a":1 "b":2}', "01", "-", "1.", "1e", "[",
    "  ", "tru", '"\\ud83d\\ude00 \\u00e9"', '{"a": NaN, "b": -Infinity, "c": Infinity}',
    "1.5e+3", "-0.0", "123456789012345678901234567890", "1E400", '{"k": 1, "k": 2}',
    '[true, false, null, "x\\ny", 2.5, -7, {}, []]', "\n\t [ ] \r", '{"a"}', '{"a":}',
    '{1: 2}', "[,]", '"tab\there"', '"\\/\\b\\f\\r"', "nulll", "0.1e-2", "1e05",
]  # fmt: skip

# ---------------------------------------------------------------- bundle errors

PAYLOAD = b"not really an onnx graph, but bytes with a size and a sha256\n"


def bundle_cases(manifest_text: str):
    """(case name, bundle.json text or None, files to write, verify?) of each bundle case."""
    real = json.loads(manifest_text)
    base = {key: real[key] for key in ("format", "format_version", "model", "num_image_tokens",
                                       "template", "tokenizer", "exporter")}  # fmt: skip
    base["artefacts"] = [
        {"component": "vision", "precision": "fp32", "format": "onnx", "details": {},
         "files": [{"path": "vision.onnx", "bytes": len(PAYLOAD),
                    "sha256": hashlib.sha256(PAYLOAD).hexdigest()}]}
    ]  # fmt: skip
    files = {"vision.onnx": PAYLOAD, "tokenizer.json": b"{}"}
    cases = []

    def case(name, change=None, text=None, files=files, verify=False):
        data = copy.deepcopy(base)
        if change:
            change(data)
        cases.append((name, text if text is not None else json.dumps(data, indent=1), files,
                      verify))  # fmt: skip

    def setter(*path_and_value, delete=False):
        *path, value = path_and_value

        def change(data):
            target = data
            for key in path[:-1]:
                target = target[key]
            if delete:
                del target[path[-1]]
            else:
                target[path[-1]] = value

        return change

    case("valid", verify=True)
    cases.append(("no_manifest", None, files, False))
    for k, text in enumerate(
        [
            "",
            "{",
            "[1,]",
            '{"a" 1}',
            '{"a": 1,}',
            "nul",
            '{"a": 1} x',
            '"\x01"',
            '{"a": "\\q"}',
            '{\n  "format": \n}',
            "\ufeff{}",
        ]
    ):
        case(f"json_{k}", text=text)
    case("not_an_object", text="[]")
    case("foreign", setter("format", "other"))
    for name, value in [
        ("v2", 2),
        ("v_str", "1"),
        ("v_null", None),
        ("v_float", 1.0),
        ("v_true", True),
        ("v_list", [1]),
    ]:
        case(f"version_{name}", setter("format_version", value))
    case("version_missing", setter("format_version", None, delete=True))
    case("no_artefacts", setter("artefacts", None, delete=True))
    case("artefacts_object", setter("artefacts", {}))
    case("exporter_list", setter("exporter", []))
    for k, value in enumerate(
        ["../tok.json", "/abs/tok.json", "", "a\\b.json", 5, "x" * 300, "a/../../b"]
    ):
        case(f"tokenizer_path_{k}", setter("tokenizer", value))
    case("no_model", setter("model", None, delete=True))
    case("model_list", setter("model", []))
    case("template_int", setter("model", "template", 3))
    case("no_vision", setter("model", "vision", None, delete=True))
    case("vision_type", setter("model", "vision", "type", "resnet"))
    case("projector_type", setter("model", "projector", "type", "qformer"))
    case("no_llm", setter("model", "llm", None, delete=True))
    case("llm_vocab_str", setter("model", "llm", "vocab_size", "x"))
    case("llm_vocab_float", setter("model", "llm", "vocab_size", 4.5))
    case("llm_eos_list", setter("model", "llm", "eos_token_id", [1, 2]))
    case("llm_eps_str", setter("model", "llm", "rms_norm_eps", "tiny"))
    case("llm_bias_int", setter("model", "llm", "attention_bias", 1))
    case("size_zero", setter("model", "preprocess", "image_size", 0))
    case("size_bool", setter("model", "preprocess", "image_size", True))
    case("mean_short", setter("model", "preprocess", "mean", [0.5, 0.5]))
    case("mean_str", setter("model", "preprocess", "mean", "gray"))
    case("mean_item", setter("model", "preprocess", "mean", [0.5, "x", 0.5]))
    case("std_zero", setter("model", "preprocess", "std", [0.2, 0, 0.2]))
    case("aspect", setter("model", "preprocess", "aspect", "fill"))
    case("artefact_list", setter("artefacts", [[]]))
    case("no_component", setter("artefacts", 0, "component", None, delete=True))
    case("component_int", setter("artefacts", 0, "component", 7))
    case("files_empty", setter("artefacts", 0, "files", []))
    case("files_object", setter("artefacts", 0, "files", {}))
    case("details_list", setter("artefacts", 0, "details", []))
    case("file_outside", setter("artefacts", 0, "files", 0, "path", "../vision.onnx"))
    case("file_no_path", setter("artefacts", 0, "files", 0, "path", None, delete=True))
    case("bytes_negative", setter("artefacts", 0, "files", 0, "bytes", -1))
    case("bytes_float", setter("artefacts", 0, "files", 0, "bytes", 1.5))
    case("bytes_bool", setter("artefacts", 0, "files", 0, "bytes", True))
    case("sha_short", setter("artefacts", 0, "files", 0, "sha256", "abc"))
    case("sha_upper", setter("artefacts", 0, "files", 0, "sha256", "A" * 64))
    case("missing_file", files={"tokenizer.json": b"{}"}, verify=True)
    case("truncated_file", files={**files, "vision.onnx": PAYLOAD[:-3]}, verify=True)
    case("corrupted_file", files={**files, "vision.onnx": PAYLOAD.upper()}, verify=True)
    return cases
