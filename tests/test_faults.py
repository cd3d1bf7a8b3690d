"""Fault injection: a killed or starved export, damaged artefacts, broken caches and
interrupted generations leave nothing half-done and raise typed errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import REPO

from mobilevlm.errors import BundleError
from mobilevlm.export.bundle_export import export_bundle
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.loader import open_bundle
from mobilevlm.runtime.pipeline import Pipeline

EXPORT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from tiny_models import build_tiny_model
    from mobilevlm.export.bundle_export import export_bundle
    export_bundle(build_tiny_model(), sys.argv[1], ["fp32", "int8", "int4"], check_parity=False)
    """
).format(tests=str(REPO / "tests"))


def _bundle_state(target) -> str:
    """'absent', or 'whole' when every file verifies; anything else fails the test."""
    if not target.exists():
        return "absent"
    open_bundle(target, verify="full")  # raises if anything is missing or changed
    return "whole"


def _export(target, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", EXPORT, str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_an_export_killed_at_random_points_leaves_no_bundle_or_a_whole_one(tmp_path):
    """SIGKILL at seeded random moments (torch import, graphs, quantization, the rename);
    then one export that runs to the end over whatever was left."""
    rng = random.Random(20261203)
    target = tmp_path / "b"
    seen = []
    for delay in sorted(rng.uniform(1.0, 9.0) for _ in range(4)):
        proc = _export(target)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        seen.append(_bundle_state(target))
        visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
        assert visible in ([], ["b"])  # nothing half-written under a visible name
    proc = _export(target)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert _bundle_state(target) == "whole"
    # the killed writers' temporary directories were cleared by the export that finished
    assert [p.name for p in tmp_path.iterdir()] == ["b"], seen


def test_an_export_under_a_file_size_limit_fails_in_one_line_and_leaves_nothing(
    tmp_path, tiny_models
):
    import resource

    from mobilevlm.reference.checkpoint import save_checkpoint

    checkpoint = tmp_path / "ckpt"
    save_checkpoint(tiny_models(), checkpoint)

    def limit() -> None:  # the stand-in for a full disk: writes past 64 KiB fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    target = tmp_path / "b"
    proc = subprocess.run(
        [sys.executable, "-m", "mobilevlm.cli", "export", str(checkpoint), "-o", str(target),
         "--precisions", "fp32", "--no-parity"],
        capture_output=True, text=True, preexec_fn=limit, timeout=300,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if "random weights" not in line]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("mobilevlm: error:") and "File too large" in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "b"
    export_bundle(tiny_models(), path, ["fp32"], check_parity=False)
    return path


def _copy(bundle, tmp_path):
    import shutil

    shutil.copytree(bundle, tmp_path / "b")
    return tmp_path / "b"


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "swapped"])
def test_damaged_artefacts_are_refused_naming_the_file(exported, tmp_path, damage):
    bundle = _copy(exported, tmp_path)
    manifest = BundleManifest.read(bundle)
    vision = bundle / manifest.find("vision", "fp32").path
    data = bytearray(vision.read_bytes())
    if damage == "truncated":
        vision.write_bytes(data[: len(data) // 2])
    elif damage == "bit-flipped":
        data[len(data) // 2] ^= 0x10
        vision.write_bytes(data)
    else:  # two files of the bundle swapped under each other's names
        table = bundle / manifest.find("embeddings", "fp32").path
        swapped = table.read_bytes()
        table.write_bytes(bytes(data))
        vision.write_bytes(swapped)
    with pytest.raises(BundleError, match=r"vision\.onnx|embeddings_fp32\.npy"):
        open_bundle(bundle, verify="full")


def test_a_broken_cache_directory_is_no_traceback(exported, tmp_path, monkeypatch):
    """The verified-files record: unreadable JSON is rebuilt; a cache path that cannot be a
    directory only costs the record."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "verified-files.json").write_text("{not json")
    monkeypatch.setenv("MOBILEVLM_CACHE", str(cache))
    open_bundle(exported)  # verify=auto: hashes, rewrites the record
    assert json.loads((cache / "verified-files.json").read_text())
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("MOBILEVLM_CACHE", str(blocked / "cache"))  # under a regular file
    open_bundle(exported)


def test_cancels_and_abandoned_streams_leave_the_pipeline_usable(exported):
    vlm = Pipeline.load(exported, precision="fp32")
    expected = vlm.generate(None, "hi", max_new_tokens=6).text
    for i in range(20):
        if i % 2:
            stream = vlm.stream(None, "hi", max_new_tokens=50)
            next(iter(stream), None)
            stream.close()  # left unfinished
        else:
            threading.Timer(0.001, vlm.cancel).start()  # from another thread, mid-answer
            vlm.generate(None, "hello there", max_new_tokens=200)
    assert vlm.generate(None, "hi", max_new_tokens=6).text == expected
    assert not vlm.busy


def test_ctrl_c_mid_answer_exits_130_and_prints_no_traceback(exported):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mobilevlm.cli", "run", "--bundle", str(exported),
         "--prompt", "hi", "--max-new-tokens", "100000", "--context", "256"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ,
    )  # fmt: skip
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130) and "Traceback" not in err, err


def test_a_damaged_or_unwritable_embeddings_cache_is_encoded_again(exported, tmp_path, rgb_image):
    vlm = Pipeline.load(exported, precision="fp32", embeddings_dir=tmp_path / "cache")
    expected = vlm.encode_image(rgb_image)
    (stored,) = (tmp_path / "cache").rglob("*.npy")
    for damage in (b"garbage", stored.read_bytes()[:100]):
        stored.write_bytes(damage)
        again = Pipeline.load(exported, precision="fp32", embeddings_dir=tmp_path / "cache")
        assert (again.encode_image(rgb_image) == expected).all() and again.cache_misses == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    unwritable = Pipeline.load(exported, precision="fp32", embeddings_dir=blocked / "cache")
    assert (unwritable.encode_image(rgb_image) == expected).all()
