"""The memory budget planner: sizes, plans, refusals, and the measured-RSS guarantee."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO
from mobilevlm.export.bundle_export import export_bundle
from mobilevlm.runtime import cli
from mobilevlm.runtime.memory import MIB, parse_size, plan_memory

from mobilevlm.bundle import BundleManifest
from mobilevlm.errors import BudgetError, MobileVLMError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("512MB", 512 * 10**6),
        ("1.5GB", 1_500_000_000),
        ("800MiB", 800 * 2**20),
        ("2G", 2 * 2**30),
        ("300000000", 300_000_000),
        (" 64 kib ", 64 * 1024),
    ],
)
def test_sizes_parse_with_si_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "12 parsecs", "", "-5MB"])
def test_a_bad_size_is_a_user_error(text):
    with pytest.raises(MobileVLMError, match="not a memory size"):
        parse_size(text)


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    model = tiny_models(projector="ldpnetv2", template="chatml")
    path = tmp_path_factory.mktemp("memory") / "bundle"
    export_bundle(model, path, None, formats=["onnx", "gguf"], check_parity=False)
    return path


def _scaled(manifest: BundleManifest, weights: float, vision: float, positions: int):
    """The tiny bundle with default-model-like sizes: the planner reads only sizes."""

    def scale(a):
        factor = vision if a.component == "vision" else weights
        files = tuple(dataclasses.replace(f, bytes=int(f.bytes * factor)) for f in a.files)
        return dataclasses.replace(a, files=files)

    llm = dataclasses.replace(
        manifest.model.llm, max_position_embeddings=positions, num_hidden_layers=30
    )
    model = dataclasses.replace(manifest.model, llm=llm)
    return dataclasses.replace(
        manifest, model=model, artefacts=tuple(map(scale, manifest.artefacts))
    )


def test_more_memory_buys_a_more_accurate_precision_or_a_longer_context(bundle):
    manifest = _scaled(BundleManifest.read(bundle), weights=1500, vision=20, positions=8192)
    order = ["int4", "int8", "fp32"]
    previous = None
    for mib in (400, 500, 700, 1000, 1400, 2000):
        plan = plan_memory(manifest, mib * MIB)
        assert plan.total <= plan.budget
        if previous is not None:
            better = order.index(plan.precision) > order.index(previous.precision)
            assert better or (
                plan.precision == previous.precision and plan.context >= previous.context
            )
        previous = plan
    assert previous.precision == "fp32" and previous.context == 8192


def test_an_explicit_precision_backend_or_context_is_honoured(bundle):
    manifest = BundleManifest.read(bundle)
    plan = plan_memory(manifest, 2 * 10**9, precision="q8_0")
    assert (plan.backend, plan.precision, plan.mmap_weights) == ("llama.cpp", "q8_0", True)
    plan = plan_memory(manifest, 2 * 10**9, backend="llama.cpp")
    assert plan.precision == "f16"
    assert plan_memory(manifest, 2 * 10**9, context=100).context == 100


def test_the_vision_encoder_is_released_when_that_buys_context(bundle):
    manifest = _scaled(BundleManifest.read(bundle), weights=300, vision=3000, positions=8192)
    roomy = plan_memory(manifest, 2 * 10**9, backend="onnxruntime", precision="int4")
    assert roomy.vision_resident
    kv = dict(roomy.lines)["KV cache (8192 positions)"]
    budget = roomy.total - kv + kv // 8  # with the encoder resident, about 1024 positions
    tight = plan_memory(manifest, budget, backend="onnxruntime", precision="int4")
    assert not tight.vision_resident and tight.total <= budget and tight.context > 2048
    assert "until the image prefill" in tight.describe()


def test_a_budget_nothing_fits_names_the_smallest_that_works(bundle):
    manifest = BundleManifest.read(bundle)
    with pytest.raises(BudgetError, match=r"too small .* smallest that works is") as caught:
        plan_memory(manifest, 50 * MIB)
    smallest = int(str(caught.value).split("(")[1].split(" bytes")[0].replace(",", ""))
    assert plan_memory(manifest, smallest).total <= smallest


def test_info_prints_the_plan_and_refuses_a_small_budget(bundle, capsys):
    assert cli.main(["info", str(bundle), "--memory-budget", "1GB"]) == 0
    out = capsys.readouterr().out
    assert "precision fp32" in out and "KV cache" in out and "total" in out
    assert cli.main(["info", str(bundle), "--memory-budget", "1GB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["total"] == sum(line["bytes"] for line in plan["lines"])
    assert cli.main(["info", str(bundle), "--memory-budget", "20MB"]) == 2
    assert "smallest that works" in capsys.readouterr().err
    argv = ["run", "--bundle", str(bundle), "--prompt", "hi", "--memory-budget", "20MB"]
    assert cli.main(argv) == 2


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from mobilevlm.runtime import Pipeline
    from mobilevlm.runtime.memory import peak_rss
    bundle, budget, turns, tokens, image, precision = sys.argv[1:7]
    vlm = Pipeline.load(bundle, memory_budget=budget, precision=precision or None, threads=2)
    chat = vlm.conversation(image)
    words = " ".join(["red circle blue square green triangle"] * int(sys.argv[7]))
    for i in range(int(turns)):  # fill the context, as a long conversation does
        text = f"Part {i}: {words}. Go on."
        needed = len(chat._input_ids(text)) + vlm.model.config.num_image_tokens + int(tokens)
        if needed > vlm.model.context_length:
            break
        chat.ask(text, max_new_tokens=int(tokens), stop_strings=("@@",))
    print(json.dumps({"peak": peak_rss(), "plan": vlm.plan.to_dict(), "positions": len(chat._ids)}))
    """
)


def _peak_under(
    bundle, budget: str, turns: int, tokens: int, precision: str = "", words: int = 15
) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(bundle), budget, str(turns), str(tokens)]
        + [str(REPO / "examples" / "shapes.png"), precision, str(words)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("extra_mib", [0, 60])
def test_peak_rss_stays_under_the_budget_tiny(bundle, extra_mib):
    with pytest.raises(BudgetError) as caught:
        plan_memory(BundleManifest.read(bundle), 10 * MIB)
    smallest = int(str(caught.value).split("(")[1].split(" bytes")[0].replace(",", ""))
    budget = smallest + extra_mib * MIB
    run = _peak_under(bundle, str(budget), turns=8, tokens=24, words=2)
    assert run["peak"] <= budget, (run["peak"], budget, run["plan"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "budget, precision",
    [("340MB", ""), ("420MB", ""), ("600MB", ""), ("900MB", ""), ("420MB", "q4_k_m")],
)
def test_peak_rss_stays_under_the_budget_default_model(budget, precision):
    """The default model exported to ONNX and GGUF (`make bench` builds it): each budget
    gets its plan, a conversation fills the context, and the process stays under it."""
    bundle = REPO / ".cache" / "bundles" / "default"
    if not (bundle / "bundle.json").is_file():
        pytest.skip("run `make bench` first to export the default bundle")
    run = _peak_under(bundle, budget, turns=60, tokens=64, precision=precision)
    assert run["positions"] > run["plan"]["context"] - 400  # the context was nearly filled
    assert run["peak"] <= parse_size(budget), run
