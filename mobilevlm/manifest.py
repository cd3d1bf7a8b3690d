"""The bundle manifest: the only contract between export and runtime (torch-free).

A bundle is a directory with ``bundle.json`` and the artefacts it lists.
``bundle.json`` holds the format version, the model geometry
(:class:`~mobilevlm.config.ModelConfig`, which carries preprocessing,
template and system prompt), the image token count, the tokenizer file, and
every artefact with its component, precision and files (path, bytes, sha256).
An artefact may span several files (an ONNX graph and its external data).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mobilevlm.config import ModelConfig
from mobilevlm.errors import BundleError, ConfigError, UnsupportedModelError, at
from mobilevlm.files import sha256_file

BUNDLE_FORMAT = "mobilevlm-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_FILE = "bundle.json"
TOKENIZER_FILE = "tokenizer.json"

# prefill, decode: the LLM's static NPU graphs (N rows and one row over a fixed past)
COMPONENTS = ("vision", "embeddings", "decoder", "llm", "mmproj", "prefill", "decode")
PRECISIONS = ("fp32", "fp16", "int8", "int4")  # ONNX artefacts
# the vision graph in an NPU's form: static shapes, QDQ with 8-bit weights and 8- or 16-bit
# activations (QNN's HTP)
NPU_VISION_PRECISIONS = ("w8a8", "w8a16")
NPUS = ("qnn",)  # the NPUs `export --npu` writes graphs for
NPU_PARTS = ("vision", "prefill", "decode")  # what can run there (`--npu-parts`)
VISION_PRECISIONS = PRECISIONS + NPU_VISION_PRECISIONS
GGUF_PRECISIONS = ("f16", "q8_0", "q4_k_m")  # llama.cpp's names, for GGUF artefacts
DEFAULT_MODEL_SOURCE = "default model"
MAX_PATH = 255  # characters of an artefact's path in the bundle
SHA256 = re.compile(r"[0-9a-f]{64}")  # exporter.source of the built-in model's bundles


def check_relative_path(path: Any) -> None:
    """A file named in a manifest: a short relative path that stays inside the bundle."""
    if not isinstance(path, str) or not path or "\x00" in path or len(path) > MAX_PATH:
        raise BundleError(f"a file path in a bundle must be a short non-empty string: {path!r:.60}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or "\\" in path or ".." in pure.parts:
        raise BundleError(f"file {path!r:.60} is not inside the bundle directory")


@dataclass(frozen=True)
class BundleFile:
    path: str  # relative to the bundle directory, inside it
    bytes: int
    sha256: str

    def __post_init__(self) -> None:
        path = self.path
        check_relative_path(path)
        if isinstance(self.bytes, bool) or not isinstance(self.bytes, int) or self.bytes < 0:
            raise BundleError(f"{path}: bytes must be a whole number >= 0, got {self.bytes!r:.40}")
        if not isinstance(self.sha256, str) or not SHA256.fullmatch(self.sha256):
            raise BundleError(f"{path}: sha256 must be 64 hex digits, got {self.sha256!r:.70}")

    @classmethod
    def describe(cls, root: Path, relative: str) -> BundleFile:
        file = root / relative
        return cls(relative, file.stat().st_size, sha256_file(file))


@dataclass(frozen=True)
class Artefact:
    """One component at one precision. ``files[0]`` is what a backend opens."""

    component: str  # vision | embeddings | decoder (ONNX Runtime) | llm | mmproj (llama.cpp)
    precision: str
    format: str  # onnx | npy | gguf | epcontext (an ONNX model wrapping an NPU context binary)
    files: tuple[BundleFile, ...]
    details: dict[str, Any] = field(default_factory=dict)  # how it was made (quantization, ...)

    @property
    def path(self) -> str:
        return self.files[0].path

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "precision": self.precision,
            "format": self.format,
            "bytes": self.bytes,
            "files": [vars(f) for f in self.files],
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artefact:
        if not isinstance(data, dict):
            raise BundleError(f"an artefact must be an object, not {type(data).__name__}")
        names = {k: data[k] for k in ("component", "precision", "format")}
        bad = [k for k, v in names.items() if not isinstance(v, str)]
        if bad:
            raise BundleError(f"an artefact's {bad[0]} must be a string, got {names[bad[0]]!r:.40}")
        files, details = data["files"], data.get("details", {})
        if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
            raise BundleError(
                f"the {names['component']} artefact's files must be a list of objects"
            )
        if not isinstance(details, dict):
            raise BundleError(f"the {names['component']} artefact's details must be an object")
        known = ("path", "bytes", "sha256")
        return cls(**names, files=tuple(BundleFile(**{k: f.get(k) for k in known}) for f in files),
                   details=details)  # fmt: skip


@dataclass(frozen=True)
class BundleManifest:
    model: ModelConfig
    artefacts: tuple[Artefact, ...]
    tokenizer: str = TOKENIZER_FILE
    exporter: dict[str, Any] = field(default_factory=dict)  # versions, source, parity measured

    @property
    def num_image_tokens(self) -> int:
        return self.model.num_image_tokens

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions a full ONNX Runtime pipeline can run at: those with a decoder graph."""
        return tuple(a.precision for a in self.artefacts if a.component == "decoder")

    @property
    def gguf_precisions(self) -> tuple[str, ...]:
        """Precisions of the LLM as GGUF, for the llama.cpp backend."""
        return tuple(a.precision for a in self.artefacts if a.component == "llm")

    def find(self, component: str, precision: str, format: str | None = None) -> Artefact | None:
        """The artefact of ``component`` at ``precision`` (in ``format``, when given; else the
        first listed, which for a vision graph is its plain ONNX form)."""
        for a in self.artefacts:
            if a.component == component and a.precision == precision:
                if format is None or a.format == format:
                    return a
        return None

    def of(self, component: str) -> list[Artefact]:
        return [a for a in self.artefacts if a.component == component]

    def npu_vision_form(self) -> str | None:
        """The NPU (one of :data:`NPUS`) the bundle holds a vision graph for, if any."""
        return next((a.details["npu"] for a in self.of("vision") if a.details.get("npu")), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "model": self.model.to_dict(),
            "num_image_tokens": self.num_image_tokens,
            "template": self.model.template,
            "tokenizer": self.tokenizer,
            "exporter": self.exporter,
            "artefacts": [a.to_dict() for a in self.artefacts],
        }

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> BundleManifest:
        """Parse ``bundle.json``; a missing, foreign or newer manifest is a :class:`BundleError`."""
        path = Path(directory) / MANIFEST_FILE
        if not Path(directory).is_dir():
            raise BundleError(at(directory, "no such bundle directory"))
        if not path.is_file():
            raise BundleError(at(path, "missing: not a bundle (run `mobilevlm export` first)"))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(at(path, f"not valid JSON ({exc})")) from exc
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise BundleError(at(path, f"not a {BUNDLE_FORMAT} manifest"))
        version = data.get("format_version")
        if version != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                at(
                    path,
                    f"format version {version} is not supported (this runtime reads "
                    f"version {BUNDLE_FORMAT_VERSION}); re-export the bundle",
                )
            )
        try:
            artefacts = data["artefacts"]
            tokenizer = data.get("tokenizer", TOKENIZER_FILE)
            exporter = data.get("exporter", {})
            if not isinstance(artefacts, list):
                raise BundleError("artefacts must be a list")
            if not isinstance(exporter, dict):
                raise BundleError("exporter must be an object")
            check_relative_path(tokenizer)
            return cls(
                model=ModelConfig.from_dict(data["model"]),
                artefacts=tuple(Artefact.from_dict(a) for a in artefacts),
                tokenizer=tokenizer,
                exporter=exporter,
            )
        except KeyError as exc:
            raise BundleError(at(path, f"malformed manifest (missing {exc})")) from None
        except (BundleError, ConfigError, UnsupportedModelError) as exc:
            raise BundleError(at(path, f"malformed manifest: {exc}")) from None
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise BundleError(at(path, f"malformed manifest ({exc})")) from None
