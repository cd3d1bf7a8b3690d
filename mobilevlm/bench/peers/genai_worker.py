"""One GenAI peer measurement in a process of its own, run by the peers' Python (not this
project's: it imports nothing of it, as that environment does not have it installed).

    .cache/peers-venv/bin/python genai_worker.py '{"engine": "openvino-genai", "model": DIR,
        "prompt": [ids], "decode_tokens": 128, "threads": null}'

It loads the model (timed), warms up on the job's ``warmup`` sizes, then
prefills the prompt and decodes ``decode_tokens`` greedy tokens with the
peer's own generation loop, EOS ignored, and prints one JSON line: ``{"result":
{load_s, prefill_tokens_per_s, decode_tokens_per_s, peak_rss, versions}}``, or
``{"error": "..."}``. The same protocol and timing points as the runtime's
``--llm-only`` worker: the prefill ends when the first token is chosen.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from importlib import metadata

ORT_GENAI = "onnxruntime-genai"
OPENVINO = "openvino-genai"
VERSIONS = {
    ORT_GENAI: ("onnxruntime-genai", "onnxruntime"),
    OPENVINO: ("openvino-genai", "openvino", "openvino-tokenizers"),
}


def ort_genai(model_dir: str, threads: int | None):
    import onnxruntime_genai as og

    config = og.Config(model_dir)
    if threads:
        options = {"session_options": {"intra_op_num_threads": threads}}
        config.overlay(json.dumps({"model": {"decoder": options}}))
    model = og.Model(config)

    def run(prompt: list[int], steps: int) -> tuple[float, float]:
        params = og.GeneratorParams(model)
        length = len(prompt) + steps + 1
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = og.Generator(model, params)
        t0 = time.perf_counter()
        generator.append_tokens(prompt)  # the prefill
        generator.generate_next_token()  # the first token, chosen from the prefill's logits
        t1 = time.perf_counter()
        for _ in range(steps):
            generator.generate_next_token()  # one decoder step, then the choice
        t2 = time.perf_counter()
        return len(prompt) / (t1 - t0), steps / (t2 - t1)

    return run


def openvino_genai(model_dir: str, threads: int | None):
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    properties = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    pipe = ov_genai.LLMPipeline(model_dir, "CPU", **properties)

    class Clock(ov_genai.StreamerBase):
        """Notes when each token arrives; the first marks the end of the prefill."""

        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def write(self, token):
            now = time.perf_counter()
            self.times += [now] * (len(token) if isinstance(token, list) else 1)
            return ov_genai.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    def run(prompt: list[int], steps: int) -> tuple[float, float]:
        config = ov_genai.GenerationConfig()
        config.max_new_tokens = steps + 1
        config.min_new_tokens = steps + 1
        config.ignore_eos = True
        config.do_sample = False
        ids = ov.Tensor(np.asarray([prompt], dtype=np.int64))
        clock = Clock()
        t0 = time.perf_counter()
        pipe.generate(ids, config, clock)
        first, last = clock.times[0], clock.times[-1]
        decoded = len(clock.times) - 1
        if decoded != steps:
            raise RuntimeError(f"openvino-genai decoded {decoded} tokens, not {steps}")
        return len(prompt) / (first - t0), steps / (last - first)

    return run


LOADERS = {ORT_GENAI: ort_genai, OPENVINO: openvino_genai}
OPENVINO_VISION = "openvino-vision"  # a vision ONNX graph as it is, on OpenVINO's CPU plugin


def openvino_vision(job: dict) -> dict:
    """Milliseconds per encode of the job's pixels (a .npy file, batch first), after one
    warm-up. ``"compress": "int8"`` compresses the graph's weights with NNCF first, the way
    OpenVINO's users make an int8 model of a float one (data-free, asymmetric per channel)."""
    import numpy as np
    import openvino as ov

    threads = job.get("threads")
    properties = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    t0 = time.perf_counter()
    core = ov.Core()
    model = core.read_model(job["model"])
    if job.get("compress") == "int8":
        import nncf

        model = nncf.compress_weights(model)
    compiled = core.compile_model(model, "CPU", properties)
    load_s = time.perf_counter() - t0
    request = compiled.create_infer_request()
    pixels = np.load(job["pixels"])
    request.infer([pixels])
    times = []
    for _ in range(job["repeats"]):
        time.sleep(0.25)
        t0 = time.perf_counter()
        request.infer([pixels])
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"load_s": load_s, "times_ms": times, "peak_rss": peak_rss()}


def peak_rss() -> int:
    """VmHWM, as the runtime's own workers report it: ``ru_maxrss`` keeps the forking
    parent's peak across exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(job: dict) -> dict:
    engine = job["engine"]
    if engine == OPENVINO_VISION:
        return openvino_vision(job) | {"versions": versions_of(OPENVINO)}
    t0 = time.perf_counter()
    run = LOADERS[engine](job["model"], job.get("threads"))
    load_s = time.perf_counter() - t0
    prompt, (warm_ids, warm_steps) = job["prompt"], job["warmup"]
    run(prompt[:warm_ids], warm_steps)  # first touch of weights, thread pools
    prefill, decode = run(prompt, job["decode_tokens"])
    return {
        "load_s": load_s,
        "prefill_tokens_per_s": prefill,
        "decode_tokens_per_s": decode,
        "peak_rss": peak_rss(),
        "versions": versions_of(engine),
    }


def versions_of(engine: str) -> dict[str, str]:
    found = {}
    for name in VERSIONS[engine]:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # stdout carries the one JSON line; what libraries print (NNCF's progress) goes aside
        with contextlib.redirect_stdout(sys.stderr):
            row = {"result": measure(json.loads(argv[0]))}
    except Exception as exc:  # one line for the parent to show, whatever went wrong
        row = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(row), flush=True)
    return 0 if "result" in row else 1


if __name__ == "__main__":
    raise SystemExit(main())
