"""The Android app's plain-Java core (android_demo/core) agrees with the Python runtime on
inputs nobody chose for its golden files: hypothesis' strings (any Unicode) tokenize to the
same ids and random lossless images of random modes, sizes and orientations preprocess to the
same pixels, through the jar's command line; its errors are one line on stderr and exit code 2.

The jar is built with ``make android-core`` when a JDK is there; without one these tests skip.
Each case list runs in one JVM (a start costs about half a second).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mobilevlm.generation.preprocess import preprocess
from mobilevlm.generation.prompts import Turn, get_template
from mobilevlm.generation.tokenizer import Tokenizer
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.loader import default_bundle
from mobilevlm.runtime.options import LoadOptions

JAR = REPO / "android_demo" / "core" / "build" / "mobilevlm-core.jar"
ENV = {**os.environ, "LC_ALL": "C.UTF-8"}  # the JVM decodes its arguments by the locale
SLOW_OK = settings(
    deadline=None,
    max_examples=3,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def jar():
    if not (shutil.which("javac") and shutil.which("java")):
        pytest.skip("no JDK (javac and java) found: `make jdk-deps` installs default-jdk-headless")
    build = subprocess.run(["make", "--no-print-directory", "android-core"], cwd=REPO,
                           capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    return JAR


@pytest.fixture(scope="module")
def bundle(torch_threads):
    """The built-in model's bundle (exported into the shared cache once if missing)."""
    return default_bundle(LoadOptions(), progress=False)


@pytest.fixture(scope="module")
def tokenizer(bundle):
    return Tokenizer.from_file(bundle / "tokenizer.json")


def java(jar, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    argv = ["java", "-jar", str(jar), *map(str, args)]
    return subprocess.run(argv, input=stdin, env=ENV, capture_output=True, encoding="utf-8",
                          timeout=120)  # fmt: skip


@SLOW_OK
@given(st.lists(st.text(max_size=60), min_size=40, max_size=40))
def test_tokenize_gives_the_python_ids_for_any_text(jar, bundle, tokenizer, texts):
    run = java(jar, "tokenize", "--tokenizer", bundle / "tokenizer.json", "--batch",
               stdin=json.dumps(texts))  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(texts) + 1
    for text, line in zip(texts, lines, strict=False):
        assert line == " ".join(map(str, tokenizer.encode(text))), repr(text)


@settings(SLOW_OK, max_examples=2)
@given(st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=30))
def test_tokenize_reads_its_text_argument_as_unicode(jar, bundle, tokenizer, text):
    run = java(jar, "tokenize", "--tokenizer", bundle / "tokenizer.json", text)
    assert run.returncode == 0, run.stderr
    assert run.stdout == " ".join(map(str, tokenizer.encode(text))) + "\n"


MODES = ("L", "LA", "RGB", "RGBA", "P", "P+trns", "I;16", "1")


def _image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
    if mode in bands:
        data = rng.integers(0, 256, size=(height, width, bands[mode]), dtype=np.uint8)
        return Image.fromarray(data[..., 0] if mode == "L" else data, mode)
    if mode == "I;16":
        top = int(rng.choice([255, 4095, 65535]))  # at most 8 bits used, or more
        return Image.fromarray(rng.integers(0, top + 1, size=(height, width)).astype(np.uint16))
    if mode == "1":
        return Image.fromarray(rng.integers(0, 256, size=(height, width), dtype=np.uint8)).convert(
            "1"
        )
    im = Image.fromarray(rng.integers(0, 256, size=(height, width), dtype=np.uint8), "P")
    im.putpalette(rng.integers(0, 256, size=768, dtype=np.uint8).tolist())
    if mode == "P+trns":
        im.info["transparency"] = bytes(rng.integers(0, 256, size=256, dtype=np.uint8).tolist())
    return im


images = st.lists(
    st.tuples(
        st.sampled_from(MODES),
        st.integers(1, 300),
        st.integers(1, 300),
        st.integers(0, 2**32 - 1),
        st.integers(1, 8),  # EXIF orientation
        st.sampled_from(["png", "png", "png", "bmp"]),
    ),
    min_size=16,
    max_size=16,
)


@SLOW_OK
@given(images)
def test_preprocess_gives_the_python_pixels_for_random_lossless_images(
    jar, bundle, tmp_path, cases
):
    config = BundleManifest.read(bundle).model.preprocess
    args, expected = [], []
    for k, (mode, width, height, seed, orientation, fmt) in enumerate(cases):
        im = _image(mode, width, height, seed)
        if fmt == "bmp" and mode not in ("L", "RGB"):
            fmt = "png"  # BMP holds 8-bit gray and RGB losslessly
        path = tmp_path / f"{k}.{fmt}"
        save = {"transparency": im.info["transparency"]} if "transparency" in im.info else {}
        if fmt == "png" and orientation > 1:
            exif = Image.Exif()
            exif[0x0112] = orientation
            save["exif"] = exif
        im.save(path, **save)
        args += ["--image", path, "--out", tmp_path / f"{k}.npy"]
        expected.append(preprocess(path, config))
    run = java(jar, "preprocess", "--bundle", bundle, *args)
    assert run.returncode == 0, run.stderr
    for k, (want, case) in enumerate(zip(expected, cases, strict=True)):
        got = np.load(tmp_path / f"{k}.npy")
        assert got.dtype == np.float32 and got.shape == want.shape, case
        assert np.abs(got - want).max() <= 1e-5, case


def test_template_renders_the_python_prompt(jar, bundle):
    manifest = BundleManifest.read(bundle)
    prompt = "Was ist das? 你好 👍🏽\n\nzwei Zeilen"
    run = java(jar, "template", "--bundle", bundle, "--prompt", prompt)
    assert run.returncode == 0, run.stderr
    want = get_template(manifest.model.template).render(
        [Turn(prompt)], system=manifest.model.system_prompt
    )
    assert run.stdout == want


def test_help_lists_the_commands(jar):
    run = java(jar, "--help")
    assert run.returncode == 0
    assert all(c in run.stdout for c in ("tokenize", "preprocess", "template"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tokenize", "--tokenizer", "{tmp}/none.json", "x"], "{tmp}/none.json: no such tokenizer"),
        (["preprocess", "--bundle", "{tmp}/nowhere", "--image", "a.png", "--out", "a.npy"],
         "{tmp}/nowhere: no such bundle directory"),
        (["preprocess", "--bundle", "{bundle}", "--image", "{tmp}/bad.png", "--out", "{tmp}/o.npy"],
         "{tmp}/bad.png: cannot read image"),
        (["preprocess", "--bundle", "{bundle}", "--image", "{tmp}/bad.png"], "--out"),
        (["template", "--bundle", "{tmp}", "--prompt", "hi"], "{tmp}/bundle.json: missing"),
        (["frobnicate"], "unknown command frobnicate"),
    ],
)  # fmt: skip
def test_errors_are_one_line_on_stderr_and_exit_code_2(jar, bundle, tmp_path, argv, message):
    (tmp_path / "bad.png").write_text("not an image")
    fill = {"tmp": str(tmp_path), "bundle": str(bundle)}
    run = java(jar, *[a.format(**fill) for a in argv])
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mobilevlm-core: error: "), run.stderr
    assert message.format(**fill) in lines[0]
    assert not (tmp_path / "o.npy").exists()
