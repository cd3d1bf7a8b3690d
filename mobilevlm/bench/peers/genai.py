"""ONNX Runtime GenAI and OpenVINO GenAI: where they are installed and their models built.

Both peers live in a virtual environment of their own (``make peers``,
:data:`PEERS_VENV`): optimum-intel needs optimum 2.3 and transformers 5, and
the GenAI model builder imports transformers 5 too, while this project's
exporter is pinned to transformers < 4.58 by optimum-onnx. Their models are
converted there from one Hugging Face folder of the LLM (:mod:`hf_llm`), each
the way that runtime's users would make it, and cached beside the bundle:

- ONNX Runtime GenAI: its model builder, ``-p int4 -e cpu`` with the builder's
  defaults (symmetric RTN blocks of 32, int8 activations: accuracy level 4);
- OpenVINO GenAI: ``optimum-cli export openvino`` with NNCF weight compression,
  ``int4`` (asymmetric, groups of 32: 64 and 128 do not divide SmolLM2's 576
  channels) or ``int8`` (per channel).

Each measurement runs :mod:`genai_worker` with that environment's Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mobilevlm.bench.peers.genai_worker import OPENVINO, ORT_GENAI
from mobilevlm.reference.checkpoint import atomic_directory

PEERS_VENV = Path(os.environ.get("MOBILEVLM_PEERS_VENV", ".cache/peers-venv"))
WORKER = Path(__file__).with_name("genai_worker.py")
INSTALL_HINT = "make peers"
INT4_GROUP = 32


@dataclass(frozen=True)
class GenAIPeer:
    engine: str  # ORT_GENAI or OPENVINO
    precision: str  # int4, int8

    @property
    def name(self) -> str:
        return f"{self.engine} {self.precision}"


PEERS = (GenAIPeer(ORT_GENAI, "int4"), GenAIPeer(OPENVINO, "int4"), GenAIPeer(OPENVINO, "int8"))


def peer_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def missing() -> str | None:
    """Why the GenAI peers cannot run here, or None."""
    if not peer_python().is_file():
        return f"the GenAI peers' environment {PEERS_VENV} is not installed ({INSTALL_HINT})"
    return None


def model_dir(peer: GenAIPeer, hf_dir: Path, work: Path, progress: bool = False) -> Path:
    """The peer's model of the LLM in ``hf_dir``, converted into ``work`` on first use."""
    target = work / f"{peer.engine}-{peer.precision}"
    if target.is_dir():  # written whole or not at all (atomic_directory)
        return target
    python = str(peer_python())
    print(f"converting the LLM for {peer.name} (once) ...", file=sys.stderr, flush=True)
    with atomic_directory(target) as tmp:
        if peer.engine == ORT_GENAI:
            command = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir)]
            command += ["-o", str(tmp), "-p", peer.precision, "-e", "cpu"]
            command += ["-c", str(tmp / ".hf-cache")]
        else:
            command = [python, "-m", "optimum.commands.optimum_cli", "export", "openvino"]
            command += ["--model", str(hf_dir), "--task", "text-generation-with-past"]
            command += ["--weight-format", peer.precision]
            if peer.precision == "int4":
                command += ["--group-size", str(INT4_GROUP), "--ratio", "1.0"]
            command += [str(tmp)]
        done = subprocess.run(
            command,
            stdout=None if progress else subprocess.DEVNULL,
            stderr=None if progress else subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
        )
        if done.returncode != 0:
            tail = (done.stderr or "").strip().splitlines() or [f"exit code {done.returncode}"]
            raise RuntimeError(f"converting for {peer.name} failed: {tail[-1]}")
        shutil.rmtree(tmp / ".hf-cache", ignore_errors=True)  # the builder's scratch
    return target
