"""`mobilevlm chat` and Ctrl-C during `run`, on a tiny bundle."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys

import pytest
from conftest import REPO
from PIL import Image

from mobilevlm import cli
from mobilevlm.cli import console
from mobilevlm.export.bundle_export import export_bundle


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    model = tiny_models(projector="ldpnetv2", template="chatml")
    export_bundle(model, root / "bundle", ["fp32"], check_parity=False)
    image = root / "red.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    return root / "bundle", image


def chat(monkeypatch, capsys, lines: str, *argv):
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code = cli.main(["chat", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_chat_reads_turns_from_stdin_and_reuses_the_cache(bundle, monkeypatch, capsys):
    path, image = bundle
    lines = "What color is it?\nAnd the shape?\n/stats\n"
    code, out, err = chat(
        monkeypatch, capsys, lines, "--bundle", path, "--image", image, "--max-new-tokens", "4"
    )
    assert code == 0
    assert len(out.splitlines()) == 2  # one line of answer per turn
    assert "from the cache" in err and "2 turns; image cache 1 hits, 1 misses" in err
    assert "[onnxruntime fp32; vision fp32 on CPUExecutionProvider; decoder on" in err


def test_chat_commands_change_image_reset_and_survive_errors(bundle, monkeypatch, capsys):
    path, image = bundle
    lines = f"/image {image.parent / 'missing.png'}\n/image {image}\nhi\n/reset\n/bogus\n/quit\nx\n"
    code, out, err = chat(monkeypatch, capsys, lines, "--bundle", path, "--max-new-tokens", "2")
    assert code == 0
    assert "missing.png: no such image file" in err
    assert "the conversation starts over" in err and "unknown command /bogus" in err
    assert len(out.splitlines()) == 1  # "hi" answered; nothing after /quit


def test_ctrl_c_during_run_keeps_what_was_generated(bundle, monkeypatch, capsys):
    """The first Ctrl-C stops the answer after the current token: the text so far is
    printed, the stats say why it stopped, and the exit code is 130."""
    path, image = bundle
    written: list[str] = []

    def write_then_interrupt(piece: str) -> None:
        written.append(piece)
        sys.stdout.write(piece)
        if len(written) == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(console, "write", write_then_interrupt)
    argv = ["run", "--bundle", path, "--image", image, "--prompt", "Go on", "--stop", "@@"]
    code = cli.main([str(a) for a in argv] + ["--max-new-tokens", "100"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_INTERRUPTED
    assert out.strip() == "".join(written).strip() and len(written) in (2, 3)
    assert "stop: cancelled" in err


def test_chat_works_as_a_real_process_with_piped_stdin(bundle):
    path, image = bundle
    proc = subprocess.run(
        [sys.executable, "-m", "mobilevlm.cli", "chat", "--bundle", str(path)]
        + ["--image", str(image), "--max-new-tokens", "3"],
        input="What color?\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1


def test_run_json_equals_the_api_result(bundle, capsys):
    from mobilevlm.runtime import Pipeline

    path, image = bundle
    code = cli.main(["run", "--bundle", str(path), "--image", str(image), "--prompt", "hi"])
    capsys.readouterr()
    code = cli.main(
        ["run", "--bundle", str(path), "--image", str(image), "--prompt", "hi", "--json"]
    )
    got = json.loads(capsys.readouterr().out)
    expected = Pipeline.load(path).generate(image, "hi", max_new_tokens=128)
    assert code == 0 and got["token_ids"] == expected.token_ids and got["text"] == expected.text
