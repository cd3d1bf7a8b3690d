"""`bench --llm-only` against ONNX Runtime GenAI and OpenVINO GenAI on a tiny random LLaMA.

The peers run from their own environment (``make peers``; ``make test`` installs
it): their models are converted from the tiny checkpoint's weights, then each
measurement is a fresh process of that environment's Python.
"""

from __future__ import annotations

import json

import pytest
from test_cli_bundle import cli, exported  # noqa: F401  (the module's tiny bundle)

from mobilevlm.bench.peers import genai

needs_peers = pytest.mark.skipif(
    genai.missing() is not None, reason=genai.missing() or "the GenAI peers are installed"
)


@needs_peers
def test_llm_only_measures_the_genai_peers_on_the_same_weights(exported, capsys):  # noqa: F811
    ckpt, bundle, _ = exported
    argv = ["bench", bundle, "--llm-only", "--precisions", "int4", "--no-llama-cpp"]
    argv += ["--prompt-tokens", "16", "--decode-tokens", "8", "--repeats", "2", "--json"]
    code, out, _ = cli(capsys, *argv)
    assert code == 0
    data = json.loads(out)
    rows = {r["backend"]: r for r in data["results"]}
    assert list(rows) == ["onnxruntime int4", *(p.name for p in genai.PEERS)]
    for row in rows.values():
        assert row["skipped"] is None, row
        assert len(row["decode_tokens_per_s"]) == 2 and row["decode_median"] > 0
        assert row["prefill_median"] > 0 and row["peak_rss_mib_median"] > 0
    assert {"onnxruntime-genai", "openvino-genai", "openvino"} <= set(data["versions"])
    # converted once from the checkpoint's LLM, beside the bundle
    peers = bundle.parent / f"{bundle.name}-peers"
    config = json.loads((peers / "hf-llm" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (peers / "onnxruntime-genai-int4" / "genai_config.json").is_file()
    assert (peers / "openvino-genai-int4" / "openvino_model.xml").is_file()


def test_a_missing_peer_environment_is_one_line_per_peer(exported, capsys, monkeypatch, tmp_path):  # noqa: F811
    _, bundle, _ = exported
    monkeypatch.setattr(genai, "PEERS_VENV", tmp_path / "nowhere")
    argv = ["bench", bundle, "--llm-only", "--precisions", "int4", "--no-llama-cpp"]
    code, out, _ = cli(
        capsys, *argv, "--prompt-tokens", "8", "--decode-tokens", "4", "--repeats", "1"
    )
    assert code == 0
    skipped = [line for line in out.splitlines() if "skipped:" in line]
    assert len(skipped) == len(genai.PEERS)
    assert all("make peers" in line and "nowhere" in line for line in skipped)
    assert any(line.startswith("onnxruntime int4 ") for line in out.splitlines())
