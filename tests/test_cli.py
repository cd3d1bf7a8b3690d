"""The `mobilevlm` command: answers, JSON output and one-line user errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from PIL import Image
from tiny_models import write_original

from mobilevlm.cli import main
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.reference.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_models, tmp_path_factory):
    return save_checkpoint(
        tiny_models(projector="ldpnetv2"),
        tmp_path_factory.mktemp("ck") / "tiny",
        extra={"random_weights": True},
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "shapes.png"
    Image.new("RGB", (120, 90), (211, 211, 211)).save(path)
    return path


def run_args(model, image, prompt, *options):
    return ["run", "--model", model, "--image", image, "--prompt", prompt, *options]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_has_text_and_stats_equal_to_the_api(capsys, checkpoint, image, tiny_models):
    args = run_args(checkpoint, image, "What color is the circle?", "--max-new-tokens", "6")
    code, out, _ = run_cli(capsys, *args, "--json")
    assert code == 0
    data = json.loads(out)
    expected = tiny_models(projector="ldpnetv2").generate(
        image, "What color is the circle?", GenerationConfig(max_new_tokens=6)
    )
    assert data["text"] == expected.text and data["token_ids"] == expected.token_ids
    stats = data["stats"]
    assert stats["generated_tokens"] == len(expected.token_ids)
    assert stats["image_tokens"] == 4 and stats["prompt_tokens"] == expected.stats.prompt_tokens
    for key in ("image_encode_ms", "prefill_ms", "decode_ms", "total_ms", "load_ms"):
        assert stats[key] >= 0
    assert stats["image_encode_ms"] > 0  # the reference's real encode time
    runtime = data["runtime"]
    assert runtime["backend"] == "torch" and runtime["precision"] == "fp32"
    assert runtime["vision_provider"] == runtime["decoder_provider"] == "torch (CPU)"


def test_streamed_answer_matches_json_and_warns_about_random_weights(capsys, checkpoint, image):
    options = ["--max-new-tokens", "8", "--temperature", "0.7", "--seed", "3"]
    args = run_args(checkpoint, image, "Where is the star?", *options)
    code, streamed, err = run_cli(capsys, *args)
    assert code == 0 and "random weights" in err
    _, out, _ = run_cli(capsys, *args, "--json")
    assert streamed == json.loads(out)["text"] + "\n"


def test_original_layout_with_explicit_vision_tower(capsys, tiny_models, tmp_path, image):
    ckpt, clip = write_original(tiny_models(projector="ldpnet"), tmp_path / "orig")
    options = ["--vision-tower", clip, "--max-new-tokens", "2", "--json"]
    code, out, _ = run_cli(capsys, *run_args(ckpt, image, "hi", *options))
    assert code == 0 and len(json.loads(out)["token_ids"]) <= 2


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing_model", "no such checkpoint directory"),
        ("missing_image", "no such image file"),
        ("broken_image", "cannot read image"),
        ("unknown_projector", "projector type 'qformer' is not supported"),
        ("bad_top_p", "top_p must be in (0, 1]"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    capsys, checkpoint, image, tiny_models, tmp_path, case, needle
):
    model, img, extra = checkpoint, image, []
    if case == "missing_model":
        model = tmp_path / "nope"
    elif case == "missing_image":
        img = tmp_path / "nope.png"
    elif case == "broken_image":
        img = tmp_path / "broken.jpg"
        img.write_bytes(b"\xff\xd8garbage")
    elif case == "unknown_projector":
        model, _ = write_original(tiny_models(projector="ldpnetv2"), tmp_path / "q")
        config = json.loads((model / "config.json").read_text())
        config["mm_projector_type"] = "qformer"
        (model / "config.json").write_text(json.dumps(config))
    elif case == "bad_top_p":
        extra = ["--top-p", "1.5"]
    code, out, err = run_cli(capsys, *run_args(model, img, "hi", *extra))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mobilevlm: error: ") and needle in lines[0]


def test_console_script_exit_code_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobilevlm.cli",
            "run",
            "--model",
            str(tmp_path / "x"),
            "--prompt",
            "hi",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"mobilevlm: error: {tmp_path / 'x'}: no such checkpoint directory"
    )
    help_text = subprocess.run(
        [sys.executable, "-m", "mobilevlm.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for option in (
        "--model",
        "--vision-tower",
        "--image",
        "--prompt",
        "--max-new-tokens",
        "--temperature",
        "--seed",
        "--json",
    ):
        assert option in help_text


def test_eval_reports_accuracy_per_question_kind(capsys, checkpoint):
    code, out, err = run_cli(capsys, "eval", "--model", checkpoint, "--n", "6", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "shapes-vqa" and report["n"] == 6
    assert sum(k["n"] for k in report["per_kind"].values()) == 6
    assert set(report["per_kind"]) <= {
        "color",
        "shape",
        "count",
        "count_color",
        "position",
        "exists",
    }
    assert 0.0 <= report["accuracy"] <= 1.0
    code, out, _ = run_cli(capsys, "eval", "--model", checkpoint, "--n", "2")
    assert code == 0 and out.splitlines()[0].split() == ["kind", "n", "accuracy"]
    assert out.splitlines()[-1].split()[:2] == ["overall", "2"]


def test_eval_on_a_jsonl_file_reads_images_relative_to_it(capsys, checkpoint, image, tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [
        {"image": str(image), "question": "What color is it?", "answer": "gray"},
        {"image": str(image), "question": "How many?", "answer": "0", "kind": "count_color"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, err = run_cli(capsys, "eval", "--model", checkpoint, "--dataset", data, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["n"] == 2 and set(report["per_kind"]) == {"all", "count_color"}


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "cannot read"),
        ("not json\n", "line 1 is not an image/question/answer object"),
        ('{"image": "a.png"}\n', "line 1 is not an image/question/answer object"),
    ],
)
def test_eval_refuses_a_bad_dataset_before_loading_the_model(capsys, tmp_path, content, needle):
    data = tmp_path / "qa.jsonl"
    if content is not None:
        data.write_text(content)
    code, out, err = run_cli(capsys, "eval", "--model", tmp_path / "absent", "--dataset", data)
    assert code == 2 and out == ""
    assert err.strip() == f"mobilevlm: error: {data}: {needle}" or (
        err.startswith(f"mobilevlm: error: {data}: {needle}") and len(err.splitlines()) == 1
    )
