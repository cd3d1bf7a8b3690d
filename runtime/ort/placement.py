"""Which nodes of a bundle's graphs an accelerator takes, and which op types it leaves.

Each graph is loaded once on the providers asked for with CPU fallback allowed,
and onnxruntime's record of the assignment (after its own fusions) is
counted: the same partitioning a real run gets, so the answer for the vision
graph is what ``run --provider qnn`` will do, and the answer for the decoder
is the finding for an NPU decoder (which op types would need another form).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.options import LoadOptions
from mobilevlm.runtime.ort.providers import Providers, create_session, placement, refused_nodes
from mobilevlm.runtime.ort.select import EPCONTEXT
from mobilevlm.runtime.ort.vision import vision_providers


@dataclass(frozen=True)
class GraphPlacement:
    component: str
    precision: str
    path: str
    provider: str  # the accelerator asked for
    nodes: dict[str, int]  # nodes per provider
    # op type -> nodes left to the CPU: refused, or offloaded by choice (QNN quantizes the
    # graph's input and dequantizes its output on the CPU unless told otherwise)
    cpu_ops: dict[str, int] = field(default_factory=dict)

    @property
    def taken(self) -> int:
        return self.nodes.get(self.provider, 0)

    @property
    def total(self) -> int:
        return sum(self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "taken": self.taken, "total": self.total}

    def describe(self) -> str:
        others = ", ".join(f"{op} x{n}" for op, n in self.cpu_ops.items())
        line = f"{self.component:<8}{self.precision:<7}{self.path:<24}{self.taken}/{self.total}"
        return line + (f"; on the CPU: {others}" if others else " (whole graph)")


def graph_placement(
    root: Path, component: str, precision: str, path: str, providers: Providers
) -> GraphPlacement:
    session = create_session(root / path, providers)
    name = providers[0][0]
    left = Counter(op for _, op in refused_nodes(session, name))
    nodes = placement(session) or {session.get_providers()[0]: 0}
    return GraphPlacement(component, precision, path, name, nodes, dict(left.most_common()))


def bundle_placement(
    root: str | Path, manifest: BundleManifest, options: LoadOptions, decoder: str | None
) -> list[GraphPlacement]:
    """Every ONNX vision graph of the bundle, the ``decoder`` precision's graph and the LLM's
    NPU graphs, on the providers ``options`` name (QNN made for the SoC the bundle's
    context was compiled for)."""
    root = Path(root)
    context = next((a for a in manifest.of("vision") if a.format == EPCONTEXT), None)
    providers, _ = vision_providers(context, options)
    graphs = [a for a in manifest.of("vision") if a.format == "onnx"]
    if decoder is not None and manifest.find("decoder", decoder) is not None:
        graphs.append(manifest.find("decoder", decoder))
    graphs += [a for part in ("prefill", "decode") for a in manifest.of(part) if a.format == "onnx"]
    return [graph_placement(root, a.component, a.precision, a.path, providers) for a in graphs]
