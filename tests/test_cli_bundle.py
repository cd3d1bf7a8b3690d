"""`mobilevlm export | info | run --bundle | eval --bundle | bench` on a tiny checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO
from PIL import Image

from mobilevlm.cli import main
from mobilevlm.reference.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory):
    """A tiny checkpoint exported through the command line, and a test image."""
    root = tmp_path_factory.mktemp("cli")
    ckpt = save_checkpoint(
        tiny_models(projector="ldpnetv2"), root / "ckpt", extra={"random_weights": True}
    )
    calib = root / "calib"
    calib.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (64, 48), color).save(calib / f"{i}.png")
    bundle = root / "bundle"
    code = main(["export", str(ckpt), "-o", str(bundle), "--calibration-images", str(calib)])
    assert code == 0
    return ckpt, bundle, calib / "0.png"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_prints_the_bundle_with_measured_parity(exported, capsys):
    _, bundle, _ = exported
    code, out, _ = cli(capsys, "info", bundle, "--verify")
    assert code == 0
    assert "decoder    int4" in out and "vision     int8" in out
    fp32_row = next(line for line in out.splitlines() if line.strip().startswith("fp32 "))
    assert fp32_row.split()[-1] == "32"  # 32 greedy tokens identical to torch
    code, out, _ = cli(capsys, "info", bundle, "--json")
    assert json.loads(out)["exporter"]["parity"]["fp32"]["logits_cosine_min"] >= 0.9999


def test_export_json_is_the_manifest_alone_on_stdout(exported, capsys, tmp_path):
    ckpt, _, _ = exported
    code, out, _ = cli(
        capsys, "export", ckpt, "-o", tmp_path / "b", "--precisions", "int8", "--json"
    )
    assert code == 0
    manifest = json.loads(out)
    assert [a["precision"] for a in manifest["artefacts"] if a["component"] == "decoder"] == [
        "int8"
    ]


def test_run_on_the_bundle_answers_like_the_reference(exported, capsys):
    ckpt, bundle, image = exported
    common = ["--image", image, "--prompt", "What color?", "--max-new-tokens", "6", "--json"]
    _, ref, _ = cli(capsys, "run", "--model", ckpt, *common)
    code, out, err = cli(capsys, "run", "--bundle", bundle, "--precision", "fp32", *common)
    assert code == 0 and "random weights" in err  # carried over from the checkpoint
    got, expected = json.loads(out), json.loads(ref)
    assert got["token_ids"] == expected["token_ids"] and got["text"] == expected["text"]
    assert got["model"].endswith("(fp32)")


def test_eval_scores_precisions_side_by_side(exported, capsys):
    _, bundle, _ = exported
    code, out, _ = cli(capsys, "eval", "--bundle", bundle, "--n", "6", "--precisions", "fp32,int4")
    assert code == 0
    accuracy, costs = out.strip().split("\n\n")
    header, *rows = accuracy.splitlines()
    assert header.split()[-2:] == ["fp32", "int4"] and rows[-1].startswith("overall")
    same = costs.splitlines()[1]  # fp32 is the reference when torch is not asked for
    assert same.startswith("same as fp32") and same.split()[-2] == "100.0%"
    code, out, _ = cli(
        capsys, "eval", "--bundle", bundle, "--n", "6", "--precisions", "int8", "--json"
    )
    assert json.loads(out)["n"] == 6


def test_bench_llm_only_without_a_baseline_reports_every_precision(exported, capsys):
    _, bundle, _ = exported
    argv = ["bench", bundle, "--llm-only", "--no-llama-cpp", "--no-genai", "--prompt-tokens", "16"]
    argv += ["--decode-tokens", "8"]
    code, out, _ = cli(capsys, *argv, "--repeats", "2", "--json")
    assert code == 0
    data = json.loads(out)
    assert [r["backend"] for r in data["results"]] == [
        "onnxruntime fp32",
        "onnxruntime int8",
        "onnxruntime int4",
    ]
    assert all(
        len(r["decode_tokens_per_s"]) == 2 and r["decode_median"] > 0 for r in data["results"]
    )
    assert data["machine"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--bundle", "{tmp}/nope", "--prompt", "hi"], "nope: no such bundle directory"),
        (
            ["run", "--bundle", "{bundle}", "--precision", "fp16", "--prompt", "hi"],
            "no fp16 decoder",
        ),
        (
            ["run", "--bundle", "{bundle}", "--provider", "qnn!", "--prompt", "hi"],
            "QNNExecutionProvider is required",
        ),
        (
            ["run", "--bundle", "{bundle}", "--provider", "tpu", "--prompt", "hi"],
            "unknown execution provider",
        ),
        (["export", "{ckpt}", "-o", "{tmp}/b", "--formats", "tflite"], "formats must be among"),
        (
            ["export", "{ckpt}", "-o", "{tmp}/b", "--formats", "gguf", "--precisions", "int4"],
            "precision int4 is not one of gguf's",
        ),
        (
            ["run", "--bundle", "{bundle}", "--precision", "q4_k_m", "--prompt", "hi"],
            "no q4_k_m GGUF LLM (exported: none)",
        ),
        (
            ["export", "{ckpt}", "-o", "{tmp}/b", "--precisions", "int2"],
            "precision int2 is not one of onnx",
        ),
        (["bench", "{bundle}", "--llm-only", "--repeats", "1"], "give --gguf FILE"),
        (["info", "{tmp}"], "bundle.json: missing: not a bundle"),
    ],
)
def test_bundle_user_errors_are_one_line_and_exit_2(exported, capsys, tmp_path, argv, needle):
    ckpt, bundle, _ = exported
    argv = [a.format(tmp=tmp_path, bundle=bundle, ckpt=ckpt) for a in argv]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_a_bundle_runs_where_torch_cannot_be_imported(exported):
    _, bundle, image = exported
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError(name + " is blocked by the test")
        sys.meta_path.insert(0, Block())
        from mobilevlm.cli import main
        sys.exit(main(["run", "--bundle", {str(bundle)!r}, "--image", {str(image)!r},
                       "--prompt", "hi", "--max-new-tokens", "3", "--json"]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stats"]["generated_tokens"] <= 3


# ---------------------------------------------------------------- GGUF and llama.cpp


@pytest.fixture(scope="module")
def gguf_exported(tiny_models, tmp_path_factory):
    """A 336 px CLIP checkpoint (llama.cpp's 24x24 grid) exported to ONNX and GGUF."""
    pytest.importorskip("llama_cpp")
    root = tmp_path_factory.mktemp("cli-gguf")
    model = tiny_models(projector="ldpnetv2", image_size=336, template="chatml")  # fits 256
    ckpt = save_checkpoint(model, root / "ckpt", extra={"random_weights": True})
    bundle = root / "bundle"
    argv = ["export", ckpt, "-o", bundle, "--formats", "onnx,gguf", "--precisions", "fp32,f16"]
    assert main([str(a) for a in argv]) == 0
    image = root / "square.png"
    Image.new("RGB", (336, 336), (200, 30, 30)).save(image)
    return model, bundle, image


def test_export_writes_onnx_and_gguf_side_by_side(gguf_exported, capsys):
    _, bundle, _ = gguf_exported
    code, out, _ = cli(capsys, "info", bundle)
    assert code == 0
    for line in ("decoder    fp32", "llm        f16", "mmproj     f16", "vision     fp32"):
        assert line in out
    assert "top-1 agreement" in out
    assert re.search(r"exported in \d+ s, peak memory \d+\.\d\d GiB", out), out
    profile = json.loads((bundle / "bundle.json").read_text())["exporter"]["profile"]
    stages = {s["name"]: s for s in profile["stages"]}
    assert {"assembly", "decoder", "llm f16", "vision", "parity"} <= stages.keys()
    assert 0 < max(s["peak_mib"] for s in stages.values()) <= profile["peak_rss_mib"]


def test_run_on_llama_cpp_answers_like_onnx_runtime_in_hybrid_mode(gguf_exported, capsys):
    _, bundle, image = gguf_exported
    common = ["run", "--bundle", bundle, "--image", image, "--prompt", "What shape?", "--json"]
    code, out, _ = cli(capsys, *common, "--max-new-tokens", "8", "--precision", "fp32")
    onnx = json.loads(out)
    code, out, _ = cli(capsys, *common, "--max-new-tokens", "8", "--precision", "f16")
    assert code == 0
    llama = json.loads(out)
    assert llama["token_ids"] == onnx["token_ids"] and llama["model"].endswith("(f16/hybrid)")


def test_eval_compares_mtmd_with_hybrid_side_by_side(gguf_exported, capsys):
    _, bundle, _ = gguf_exported
    argv = ["eval", "--bundle", bundle, "--n", "3", "--precisions", "f16", "--modes", "hybrid,mtmd"]
    code, out, _ = cli(capsys, *argv)
    assert code == 0
    header = out.strip().splitlines()[0]
    assert header.split()[-2:] == ["f16/hybrid", "f16/mtmd"]


def test_backend_and_precision_that_disagree_are_one_line_errors(gguf_exported, capsys):
    _, bundle, image = gguf_exported
    argv = ["run", "--bundle", bundle, "--prompt", "hi", "--precision", "f16"]
    code, _, err = cli(capsys, *argv, "--backend", "onnxruntime")
    assert code == 2 and err.strip().endswith("f16 is a precision of llama.cpp, not of onnxruntime")
