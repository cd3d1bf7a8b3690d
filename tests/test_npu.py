"""The vision graph on Qualcomm's HTP (the x86-64 simulator in onnxruntime-qnn), whole.

Tiny EfficientNet-Lite and CLIP bundles are exported with ``npu="qnn"`` and run
with CPU fallback disabled (``qnn!``): every node on the NPU, from the
precompiled EPContext model, with outputs close to the same QDQ graph on the
CPU and to fp32.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from mobilevlm.errors import BundleError, ProviderError
from mobilevlm.export.bundle_export import check_request, export_bundle
from mobilevlm.export.parity import cosine
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.options import LoadOptions
from mobilevlm.runtime.ort import qnn
from mobilevlm.runtime.ort.model import OnnxVLM
from mobilevlm.runtime.ort.placement import bundle_placement
from mobilevlm.runtime.ort.providers import (
    CPU,
    QNN,
    create_session,
    placement,
    resolve_providers,
)
from mobilevlm.runtime.ort.select import EPCONTEXT, npu_vision

needs_htp = pytest.mark.skipif(
    not qnn.plugin_devices(),
    reason=f"no {qnn.PLUGIN_PACKAGE} wheel for this platform ({qnn.INSTALL_NPU_EXTRA})",
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Ten structured pictures: the last two held out by the export, the rest calibrate."""
    return _calibration_images(tmp_path_factory.mktemp("calibration"))


def _calibration_images(directory):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96]
    for i in range(10):
        base = np.stack([xx * (i + 1), yy * (10 - i), (xx + yy) * 2], axis=-1) % 256
        noise = rng.integers(-30, 30, size=base.shape)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(directory / f"{i}.png")
    return directory


@pytest.fixture(scope="module")
def npu_bundles(tiny_models, images, tmp_path_factory):
    if not qnn.plugin_devices():
        pytest.skip(f"no {qnn.PLUGIN_PACKAGE} wheel for this platform")
    root = tmp_path_factory.mktemp("npu")
    from tiny_models import build_tiny_efficientnet_model

    models = {
        "clip": tiny_models(projector="ldpnetv2"),
        "efficientnet": build_tiny_efficientnet_model(),
    }
    parts = {"clip": ["vision"], "efficientnet": None}  # None: the LLM's graphs too
    for name, model in models.items():
        export_bundle(
            model, root / name, ["fp32"], calibration_dir=images, check_parity=False, npu="qnn",
            npu_parts=parts[name],
        )  # fmt: skip
    return {name: (models[name], root / name) for name in models}


@needs_htp
@pytest.mark.parametrize("tower", ["clip", "efficientnet"])
def test_vision_graph_runs_whole_on_the_npu_from_its_precompiled_context(
    npu_bundles, tower, rgb_image
):
    _, bundle = npu_bundles[tower]
    on_npu = OnnxVLM.load(bundle, precision="fp32", providers=("qnn!",))
    info = on_npu.runtime_info()
    llm = CPU if tower == "clip" else QNN  # the clip bundle has no NPU form of the LLM
    assert info["vision_provider"] == QNN
    assert info["prefill_provider"] == info["decoder_provider"] == llm
    assert info["vision_source"] == "epcontext" and set(info["vision_nodes"]) == {QNN}
    precision = info["vision_precision"]
    assert precision in ("w8a8", "w8a16")

    qdq_on_cpu = OnnxVLM.load(bundle, precision="fp32", vision_precision=precision)
    fp32 = OnnxVLM.load(bundle, precision="fp32")
    assert qdq_on_cpu.vision_provider == CPU and fp32.runtime_info()["vision_precision"] == "fp32"
    got = on_npu.encode_image(rgb_image)
    assert cosine(got, qdq_on_cpu.encode_image(rgb_image)).min() > 0.99
    assert cosine(got, fp32.encode_image(rgb_image)).min() > 0.97


@needs_htp
def test_manifest_records_the_npu_graph_its_context_and_their_parity(npu_bundles):
    _, bundle = npu_bundles["clip"]
    manifest = BundleManifest.read(bundle)
    graph = npu_vision(manifest)
    context = manifest.find("vision", graph.precision, EPCONTEXT)
    assert graph.details["npu"] == "qnn" and graph.details["shapes"] == "static, batch 1"
    assert graph.details["calibration_images"] == 8  # ten images, two held out
    parity = graph.details["parity"]
    assert parity["heldout_images"] == 2
    cosines = parity["token_cosine_min"]
    assert cosines[f"{graph.precision} qnn context"] > 0.97 and "w8a16 cpu" in cosines
    assert context.details["soc"] == qnn.DEFAULT_SOC and context.details["htp_arch"] == 75
    assert [f.path for f in context.files] == ["vision_qnn_ctx.onnx", "vision_qnn_ctx_qnn.bin"]
    # one image per call, QDQ nodes, none of the CPU path's fused contrib ops (QNN's
    # preprocessing fuses Gelu into the com.microsoft op the HTP has)
    nodes = onnx.load(str(bundle / graph.path)).graph
    assert nodes.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert {n.op_type for n in nodes.node if n.domain} <= {"Gelu"}
    assert "QuantizeLinear" in {n.op_type for n in nodes.node}


@needs_htp
def test_placement_counts_npu_nodes_and_names_the_decoders_refused_ops(npu_bundles):
    _, bundle = npu_bundles["clip"]
    manifest = BundleManifest.read(bundle)
    graphs = bundle_placement(bundle, manifest, LoadOptions(providers=("qnn",)), "fp32")
    by_path = {g.path: g for g in graphs}
    npu_graph = by_path["vision_qnn.onnx"]
    # all but the graph input's quantization and output's dequantization, which QNN leaves
    # to the CPU when it may (offload_graph_io_quantization; `qnn!` keeps them on the NPU)
    assert npu_graph.taken == npu_graph.total - 2 > 0
    assert npu_graph.cpu_ops == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    decoder = by_path["decoder.onnx"]
    assert decoder.taken < decoder.total and "GroupQueryAttention" in decoder.cpu_ops


def _graph_with_an_op_the_htp_lacks(path):
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("NonZero", ["c"], ["nz"], name="nz0"),
        helper.make_node("Shape", ["nz"], ["y"], name="shape0"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@needs_htp
def test_required_npu_refusing_nodes_is_an_error_naming_them(tmp_path):
    path = _graph_with_an_op_the_htp_lacks(tmp_path / "g.onnx")
    soc = qnn.soc(qnn.DEFAULT_SOC).provider_options()  # as the exports in this process
    with pytest.raises(ProviderError, match=r"g.onnx: .*refuses 2 nodes: nz0 \(NonZero\)"):
        create_session(path, resolve_providers(["qnn!"], options=soc), whole_graph=True)
    preferred = create_session(path, resolve_providers(["qnn"], options=soc))  # CPU: the rest
    assert placement(preferred) == {QNN: 3, CPU: 2}  # conv with its layout transposes


def test_npu_export_of_a_checkpoint_needs_its_own_calibration_images(tiny_models, tmp_path):
    with pytest.raises(BundleError, match="--calibration-images DIR"):
        export_bundle(tiny_models(), tmp_path / "b", ["fp32"], npu="qnn")
    assert not (tmp_path / "b").exists()


def test_unknown_npu_or_soc_is_refused_before_any_work(tmp_path):
    with pytest.raises(BundleError, match="unknown SoC 'SM9999'.*SM8650 \\(Snapdragon 8 Gen 3\\)"):
        check_request(tmp_path / "b", ["fp32"], npu="qnn", soc="SM9999")
    with pytest.raises(BundleError, match="unknown NPU 'ane'"):
        check_request(tmp_path / "b", ["fp32"], npu="ane")
    with pytest.raises(BundleError, match="needs --npu"):
        check_request(tmp_path / "b", ["fp32"], soc="SM8650")


@needs_htp
def test_cli_run_on_the_required_npu_says_so(npu_bundles, tmp_path, rgb_image, capsys):
    import json

    from mobilevlm.cli import main

    _, bundle = npu_bundles["efficientnet"]
    image = tmp_path / "image.png"
    Image.fromarray(rgb_image).save(image)
    argv = ["run", "--bundle", bundle, "--provider", "qnn!", "--image", image]
    argv += ["--prompt", "What color is the circle?", "--max-new-tokens", "4", "--json"]
    assert main([str(a) for a in argv]) == 0
    answer = json.loads(capsys.readouterr().out)  # nothing else on stdout
    runtime = answer["runtime"]
    assert runtime["vision_provider"] == QNN and runtime["vision_simulated"] is True
    assert runtime["prefill_provider"] == runtime["decoder_provider"] == QNN
    assert main([str(a) for a in argv + ["--npu-parts", "vision,prefill"]]) == 0
    split = json.loads(capsys.readouterr().out)  # the llm.npu split: tokens on the CPU
    assert split["runtime"]["prefill_provider"] == QNN
    assert split["runtime"]["decoder_provider"] == CPU
    assert split["token_ids"] == answer["token_ids"]


@needs_htp
def test_planner_counts_the_npu_session_and_the_bench_names_its_variant(npu_bundles):
    from mobilevlm.bench.variants import every_variant, parse_variant, unavailable
    from mobilevlm.runtime.memory import plan_memory
    from mobilevlm.runtime.ort.footprint import NPU_VISION_BYTES

    _, bundle = npu_bundles["clip"]
    manifest = BundleManifest.read(bundle)
    plan = plan_memory(manifest, 1 << 40, providers=("qnn!",))
    vision = next(n for what, n in plan.lines if what.startswith("vision encoder"))
    assert vision >= NPU_VISION_BYTES["epcontext"]
    variant = parse_variant("fp32/qnn-vision")
    assert variant.providers == ("qnn!",) and unavailable(variant, manifest, None) is None
    assert "fp32/qnn-vision" not in [v.name for v in every_variant(manifest)]  # quantized only


@needs_htp
def test_a_context_that_does_not_load_is_compiled_from_the_graph_and_cached(
    npu_bundles, tmp_path, rgb_image, caplog
):
    import shutil

    _, bundle = npu_bundles["efficientnet"]
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    binary = copy / "vision_qnn_ctx_qnn.bin"
    binary.write_bytes(bytes(binary.stat().st_size))  # same size, no context in it
    cache = tmp_path / "cache" / "vision_ctx.onnx"
    cache.parent.mkdir()
    options = {"ep.context_enable": "1", "ep.context_file_path": str(cache)}
    load = dict(precision="fp32", providers=("qnn!",), provider_options=options, verify="size")

    compiled = OnnxVLM.load(copy, **load)
    assert "does not load here" in caplog.text
    info = compiled.runtime_info()
    assert info["vision_source"] == "graph" and set(info["vision_nodes"]) == {QNN}
    assert cache.is_file()  # the compiled context, written where the options say
    cached = OnnxVLM.load(copy, **load)
    assert cached.runtime_info()["vision_source"] == "cache"
    reference = OnnxVLM.load(bundle, precision="fp32", providers=("qnn!",))
    expected = reference.encode_image(rgb_image)
    for model in (compiled, cached):
        assert cosine(model.encode_image(rgb_image), expected).min() > 0.999


@needs_htp
def test_run_without_a_bundle_on_the_required_npu_adds_its_graph_to_the_built_in_one(
    capsys, torch_threads
):
    """The main job on the NPU: the built-in bundle gains the NPU vision graph once (the
    LLM's NPU graphs, minutes on the simulator, are the slow test's)."""
    data = _built_in_run(capsys, ["--npu-parts", "vision"])
    assert data["runtime"]["vision_provider"] == QNN
    assert data["runtime"]["vision_source"] == "epcontext"
    assert data["runtime"]["prefill_provider"] == data["runtime"]["decoder_provider"] == CPU


@needs_htp
@pytest.mark.slow
def test_the_built_in_model_answers_with_all_of_it_on_the_npu(capsys, torch_threads):
    """The built-in bundle gains the LLM's NPU graphs; the answer is right with all three
    parts on the NPU, and with the tokens decoded on the CPU (the llm.npu split)."""
    data = _built_in_run(capsys, [])
    runtime = data["runtime"]
    assert runtime["vision_provider"] == runtime["prefill_provider"] == QNN
    assert runtime["decoder_provider"] == QNN and runtime["prefill_nodes"] == {QNN: 1}
    split = _built_in_run(capsys, ["--npu-parts", "vision,prefill"])
    assert split["runtime"]["prefill_provider"] == QNN
    assert split["runtime"]["decoder_provider"] == CPU


def _built_in_run(capsys, extra: list[str]) -> dict:
    import json

    from conftest import REPO

    from mobilevlm import shapes_vqa
    from mobilevlm.cli import main
    from mobilevlm.runtime.loader import default_bundle_dir

    argv = ["run", "--image", REPO / "examples" / "shapes.png", "--provider", "qnn!"]
    argv += ["--prompt", "What color is the circle?", "--json", *extra]
    assert main([str(a) for a in argv]) == 0
    data = json.loads(capsys.readouterr().out)
    assert shapes_vqa.is_correct(data["text"], "red", "color"), data["text"]
    assert npu_vision(BundleManifest.read(default_bundle_dir())) is not None
    return data
