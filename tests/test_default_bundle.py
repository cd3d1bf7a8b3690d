"""The main job runs the product: with neither --model nor --bundle, the commands run the
built-in model's bundle on the runtime, exported once into the cache, with every runtime
option applying to it; --json says what ran."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO
from test_layout import BLOCK_TORCH

from mobilevlm import shapes_vqa
from mobilevlm.cli import main
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.loader import default_bundle, default_bundle_dir, needed_precisions
from mobilevlm.runtime.options import LoadOptions

IMAGE = REPO / "examples" / "shapes.png"
QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def built_in(torch_threads):
    """The built-in model's bundle in the shared cache (exported here once if missing)."""
    return default_bundle(LoadOptions(), progress=False)


def cli_json(capsys, *argv) -> dict:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_the_built_in_bundle_holds_what_the_default_choice_needs(built_in):
    manifest = BundleManifest.read(built_in)
    assert built_in == default_bundle_dir()
    assert "int4" in manifest.precisions and manifest.find("vision", "fp32")
    assert needed_precisions(LoadOptions()) == ["int4"]
    assert needed_precisions(LoadOptions(backend="llama.cpp")) == ["q4_k_m"]
    assert needed_precisions(LoadOptions(precision="int8")) == ["int8"]


def test_run_without_a_bundle_answers_on_onnx_runtime_and_says_so(capsys, built_in):
    data = cli_json(capsys, "run", "--image", IMAGE, "--prompt", QUESTION, "--precision", "int4",
                    "--json")  # fmt: skip
    assert shapes_vqa.is_correct(data["text"], "red", "color"), data["text"]
    runtime = data["runtime"]
    assert runtime["backend"] == "onnxruntime" and runtime["precision"] == "int4"
    assert runtime["vision_provider"] == "CPUExecutionProvider"
    assert runtime["decoder_provider"] == "CPUExecutionProvider"
    assert "memory_plan" not in runtime
    assert data["stats"]["image_encode_ms"] > 0  # measured, not 0 for a cached-in-pipeline image
    assert data["stats"]["time_to_first_token_ms"] > data["stats"]["prefill_ms"]


def test_run_under_a_memory_budget_without_a_bundle_stays_under_it(built_in):
    """The planner's choice for the built-in model, and the peak RSS of the whole process
    (a fresh interpreter that only runs the command) under the budget."""
    code = textwrap.dedent(
        f"""
        import json, resource, subprocess, sys
        proc = subprocess.run(
            [sys.executable, "-m", "mobilevlm.cli", "run", "--image", {str(IMAGE)!r},
             "--prompt", {QUESTION!r}, "--memory-budget", "400MB", "--json"],
            capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(json.dumps({{"code": proc.returncode, "out": proc.stdout, "err": proc.stderr,
                          "peak": peak}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)  # fmt: skip
    measured = json.loads(proc.stdout)
    assert measured["code"] == 0, measured["err"]
    data = json.loads(measured["out"])
    plan = data["runtime"]["memory_plan"]
    assert plan["budget"] == 400_000_000 and plan["total"] <= plan["budget"]
    assert data["runtime"]["backend"] == "onnxruntime"
    assert shapes_vqa.is_correct(data["text"], "red", "color"), data["text"]
    assert measured["peak"] <= 400_000_000, measured["peak"] / 2**20


def test_run_answers_with_torch_unimportable_once_the_bundle_exists(built_in):
    script = BLOCK_TORCH + textwrap.dedent(
        f"""
        from mobilevlm.cli import main
        code = main(["run", "--image", {str(IMAGE)!r}, "--prompt", {QUESTION!r}, "--json"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print("HEAVY", heavy)
        sys.exit(code)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answer, heavy = proc.stdout.strip().splitlines()
    assert heavy == "HEAVY []"
    assert json.loads(answer)["runtime"]["backend"] == "onnxruntime"


def test_info_and_the_chat_stats_say_what_runs(capsys, built_in):
    data = cli_json(capsys, "info", "--json")
    assert data["runtime"]["backend"] == "onnxruntime" and data["runtime"]["precision"] == "int4"
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "runs as [onnxruntime int4; vision fp32 on CPUExecutionProvider;" in out


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--precision", "int4"], "--precision does not apply to --model"),
        (["--memory-budget", "1GB"], "--memory-budget does not apply to --model"),
        (["--provider", "qnn"], "--provider does not apply to --model"),
        (["--mode", "mtmd"], "--mode does not apply to --model"),
    ],
)
def test_runtime_options_with_model_are_refused(capsys, tmp_path, options, needle):
    code = main(["run", "--model", str(tmp_path), "--prompt", "hi", *options])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert needle in err


def test_vision_tower_without_model_is_refused(capsys, tmp_path):
    code = main(["run", "--vision-tower", str(tmp_path), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and "--vision-tower applies to --model" in err
