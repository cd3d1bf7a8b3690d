"""`mobilevlm bench` and `mobilevlm eval --variants`: every variant in a process of its own,
side by side with the peers, and the relations the project promises between them."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mobilevlm.cli import main
from mobilevlm.reference.checkpoint import save_checkpoint

pytest.importorskip("llama_cpp")

VARIANTS = "torch,fp32,int8,int8/int8-vision,f16,f16/mtmd,transformers,llama-cpp-python"


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    """A 336 px CLIP checkpoint (llama.cpp's 24x24 grid, so it has an mmproj) exported to
    ONNX fp32/int8 and GGUF f16."""
    root = tmp_path_factory.mktemp("bench")
    model = tiny_models(projector="ldpnetv2", image_size=336, template="chatml")
    ckpt = save_checkpoint(model, root / "ckpt", extra={"random_weights": True})
    argv = ["export", ckpt, "-o", root / "bundle", "--formats", "onnx,gguf"]
    argv += ["--precisions", "fp32,int8,f16", "--no-parity"]
    assert main([str(a) for a in argv]) == 0
    return root / "bundle"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_measures_every_variant_and_peer_side_by_side(bundle, capsys, tmp_path):
    argv = ["bench", bundle, "--variants", VARIANTS, "--repeats", "2", "--decode-tokens", "5"]
    code, out, _ = cli(capsys, *argv, "--json", "--report", tmp_path / "report")
    assert code == 0
    data = json.loads(out)
    rows = {r["name"]: r for r in data["results"]}
    assert list(rows) == VARIANTS.replace("f16,", "f16/hybrid,").split(",")
    assert data["baseline"] == "torch" and data["machine"] and data["versions"]["onnxruntime"]
    for name, row in rows.items():
        assert row["skipped"] is None, (name, row["skipped"])
        assert row["decode_tokens"] == 5, name  # EOS ignored: every variant decodes as many
        metrics = row["metrics"]
        assert len(metrics["decode_tokens_per_s"]["samples"]) == 2
        assert metrics["peak_rss_mib"]["median"] > 20 and row["disk_bytes"] > 0
        assert metrics["ttft_ms"]["median"] > 0 and metrics["load_s"]["median"] > 0
    # llama-cpp-python's chat encodes the image inside its first token: no split to report
    assert "image_encode_ms" not in rows["llama-cpp-python"]["metrics"]
    assert rows["f16/mtmd"]["metrics"]["image_encode_ms"]["median"] > 0
    assert rows["int8"]["estimate_bytes"] > 0 and rows["torch"]["estimate_bytes"] is None
    for name in ("report.md", "bench.json", "latency.png", "throughput.png", "memory.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    for chart in ("latency.png", "throughput.png", "memory.png"):
        assert Image.open(tmp_path / "report" / chart).size[0] >= 1000
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert all(f"`{name}`" in markdown for name in rows)


def test_bench_table_names_the_machine_and_why_a_variant_did_not_run(exported_tiny, capsys):
    """A 56 px CLIP has no mmproj (llama.cpp's ldpnetv2 graph needs a 24x24 grid)."""
    argv = ["bench", exported_tiny, "--variants", "fp32,q4_k_m/mtmd,llama-cpp-python"]
    code, out, _ = cli(capsys, *argv, "--repeats", "1", "--decode-tokens", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("machine: ")
    skipped = [line for line in lines if "skipped:" in line]
    assert len(skipped) == 2 and all("needs an mmproj" in line for line in skipped)
    assert any(line.startswith("fp32 ") for line in lines)


@pytest.fixture(scope="module")
def exported_tiny(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-tiny")
    ckpt = save_checkpoint(tiny_models(), root / "ckpt", extra={"random_weights": True})
    argv = ["export", ckpt, "-o", root / "bundle", "--formats", "onnx,gguf"]
    assert main([str(a) for a in argv + ["--precisions", "fp32,q4_k_m", "--no-parity"]]) == 0
    return root / "bundle"


def test_fp32_onnx_and_transformers_answer_with_the_torch_reference_s_tokens(
    bundle, capsys, tmp_path
):
    """The comparison the export promises: same greedy tokens, hence the same accuracy."""
    argv = ["eval", "--bundle", bundle, "--n", "6", "--variants", "torch,fp32,transformers"]
    code, out, _ = cli(capsys, *argv, "--json", "--report", tmp_path / "eval")
    assert code == 0
    rows = {r["run"]: r for r in json.loads(out)}
    assert rows["fp32"]["agreement"] == 1.0 and rows["transformers"]["agreement"] == 1.0
    assert rows["fp32"]["accuracy"] == rows["torch"]["accuracy"]
    assert all(r["peak_rss"] > 0 and r["ms_per_question"] > 0 for r in rows.values())
    records = (tmp_path / "eval" / "records.jsonl").read_text().splitlines()
    assert len(records) == 18 and json.loads(records[0])["token_ids"]
    assert Image.open(tmp_path / "eval" / "tradeoff.png").size[0] >= 1000
    assert "| `fp32` |" in (tmp_path / "eval" / "eval.md").read_text()


def test_a_variant_the_bundle_cannot_run_is_refused_before_anything_runs(bundle, capsys):
    argv = ["eval", "--bundle", bundle, "--n", "2", "--variants", "fp32,q4_k_m"]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.strip().endswith("cannot evaluate q4_k_m/hybrid: no q4_k_m LLM in the bundle")
    code, _, err = cli(capsys, "bench", bundle, "--variants", "int3")
    assert code == 2 and "unknown variant 'int3'" in err
    code, _, err = cli(capsys, "bench", bundle, "--variants", "fp32", "--baseline", "f16")
    assert code == 2 and "--baseline f16 is not among the variants measured" in err
