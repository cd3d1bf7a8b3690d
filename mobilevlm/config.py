"""Model configuration: torch-free dataclasses shared by the reference, export and runtime.

A config describes geometry only (no weights). Each dataclass has
``from_dict`` that ignores unknown keys, so a checkpoint's JSON maps onto it
without ceremony, and ``to_dict`` for the project's own checkpoint layout and
the bundle manifest. The vision tower is a typed, pluggable part: its ``type``
selects the dataclass (``clip_vit`` for MobileVLM checkpoints).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mobilevlm.errors import ConfigError, UnsupportedModelError

PROJECTOR_TYPES = ("ldpnet", "ldpnetv2", "mlp2x_gelu", "linear")
SELECT_FEATURES = ("patch", "cls_patch")
ASPECTS = ("pad", "crop", "resize")
MAX_IMAGE_SIZE = 4096  # the vision input side, in pixels


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it is of the annotated type (int, float, str, bool, a tuple of them, or
    one of these or None); ConfigError naming ``name`` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, not {type(value).__name__}")
        if args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{name} must have {len(args)} entries, got {len(value)}")
        item = args[0] if args else Any
        return tuple(_checked(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        return value
    if not ok:
        raise ConfigError(f"{name} must be {hint.__name__}, got {value!r:.40}")
    return value


def _to_dict(obj) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


class DictConfig:
    """``from_dict`` / ``to_dict`` for a flat config dataclass, written once: unknown keys
    are ignored (a checkpoint's config.json maps onto it as it is), tuples become lists, and
    a class with a ``type`` tag writes it first."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """``cls`` from ``data``, each known field checked against its annotation
        (:class:`ConfigError` names the field)."""
        name = cls.__name__
        if not isinstance(data, dict):
            raise ConfigError(f"{name} must be an object, not {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        values = {
            f.name: _checked(f"{name}.{f.name}", data[f.name], hints[f.name])
            for f in dataclasses.fields(cls)
            if f.init and f.name in data
        }
        try:
            return cls(**values)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        tag = getattr(self.__class__, "type", None)
        return ({"type": tag} if tag else {}) | _to_dict(self)


@dataclass(frozen=True)
class ClipVisionConfig(DictConfig):
    """A CLIP vision transformer (the tower of MobileVLM checkpoints).

    ``select_layer`` indexes the encoder's hidden states as the original does
    (``hidden_states[select_layer]``, where index 0 is the embedding output),
    so -2 is the output of the second-to-last block.
    """

    type: ClassVar[str] = "clip_vit"
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    select_layer: int = -2
    select_feature: str = "patch"

    def __post_init__(self) -> None:
        if self.select_feature not in SELECT_FEATURES:
            raise UnsupportedModelError(
                f"mm_vision_select_feature {self.select_feature!r} is not supported "
                f"(expected one of {', '.join(SELECT_FEATURES)})"
            )
        n = self.num_hidden_layers
        if not (-n - 1 <= self.select_layer <= n):
            raise UnsupportedModelError(
                f"mm_vision_select_layer {self.select_layer} is outside the {n} layers of the tower"
            )

    @property
    def grid_size(self) -> int:
        """Patches per side of the square patch grid."""
        return self.image_size // self.patch_size

    @property
    def output_dim(self) -> int:
        return self.hidden_size

    @property
    def num_output_tokens(self) -> int:
        """Feature tokens handed to the projector (patches, plus the class token for cls_patch)."""
        return self.grid_size**2 + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def num_layers_used(self) -> int:
        """Blocks that must run to produce ``hidden_states[select_layer]``."""
        return self.select_layer % (self.num_hidden_layers + 1)

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], select_layer: int, select_feature: str):
        """Build from a transformers CLIP ``config.json`` (a CLIPConfig or a CLIPVisionConfig)."""
        vision = data.get("vision_config", data) if data.get("model_type") == "clip" else data
        # transformers' CLIPVisionConfig defaults, for keys a minimal config omits
        defaults = {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        }
        merged = {
            **defaults,
            **vision,
            "select_layer": select_layer,
            "select_feature": select_feature,
        }
        return cls.from_dict(merged)

    def to_hf_dict(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers.CLIPVisionConfig``."""
        d = _to_dict(self)
        d.pop("select_layer")
        d.pop("select_feature")
        return d


# EfficientNet-Lite0's stages as in TensorFlow's efficientnet_lite_builder:
# (repeats, kernel, stride, expand ratio, output channels); the stem has 32 channels
EFFICIENTNET_LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
EFFICIENTNET_FEATURES = ("head", "blocks")


@dataclass(frozen=True)
class EfficientNetLiteConfig(DictConfig):
    """EfficientNet-Lite0, a mobile CNN (the default model's tower).

    ``feature``: ``head`` is the 1280-channel map after the final 1x1 conv
    (stride 32); ``blocks`` the 320-channel output of the last block, same
    grid. The map is flattened row-major into grid**2 feature tokens.
    """

    type: ClassVar[str] = "efficientnet_lite"
    variant: str = "lite0"
    image_size: int = 384
    feature: str = "head"
    batch_norm_eps: float = 1e-3
    head_channels: int = 1280

    def __post_init__(self) -> None:
        if self.variant != "lite0":
            raise UnsupportedModelError(
                f"EfficientNet variant {self.variant!r} is not supported (expected 'lite0')"
            )
        if self.feature not in EFFICIENTNET_FEATURES:
            raise UnsupportedModelError(
                f"EfficientNet feature {self.feature!r} is not supported "
                f"(expected one of {', '.join(EFFICIENTNET_FEATURES)})"
            )
        if self.image_size % 32:
            raise UnsupportedModelError(
                f"EfficientNet-Lite input size {self.image_size} is not a multiple of its stride 32"
            )

    @property
    def stages(self) -> tuple[tuple[int, int, int, int, int], ...]:
        return EFFICIENTNET_LITE0_STAGES

    @property
    def grid_size(self) -> int:
        return self.image_size // 32

    @property
    def output_dim(self) -> int:
        return self.head_channels if self.feature == "head" else self.stages[-1][-1]

    @property
    def num_output_tokens(self) -> int:
        return self.grid_size**2


VISION_CONFIGS: dict[str, type] = {
    ClipVisionConfig.type: ClipVisionConfig,
    EfficientNetLiteConfig.type: EfficientNetLiteConfig,
}

VisionConfig = ClipVisionConfig | EfficientNetLiteConfig  # VISION_CONFIGS' classes


def vision_config_from_dict(data: dict[str, Any]) -> VisionConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"the vision config must be an object, not {type(data).__name__}")
    kind = data.get("type", ClipVisionConfig.type)
    if kind not in VISION_CONFIGS:
        raise UnsupportedModelError(
            f"vision tower type {kind!r} is not supported "
            f"(expected one of {', '.join(VISION_CONFIGS)})"
        )
    return VISION_CONFIGS[kind].from_dict(data)


@dataclass(frozen=True)
class ProjectorConfig(DictConfig):
    """The vision-to-language projector (``mm_projector_type`` in MobileVLM)."""

    type: str = "ldpnetv2"
    input_dim: int = 1024  # mm_hidden_size: the vision tower's feature width
    output_dim: int = 2048  # the LLM's hidden size
    # ldpnetv2 only: label tokens that say where its output tokens lie (empty: none, as in
    # MobileVLM). The output grid is cut into k x k square cells (k*k entries, row-major);
    # cell c becomes cell_labels[c] label tokens followed by its own grid tokens. A ViT's
    # tokens carry their position; a CNN's translation-equivariant map does not, and
    # LDPv2's PEG only knows the borders. The labels are learned constants (the default
    # model's are the LLM's words naming each cell), so the image reads like
    # "top left <tokens> top <tokens> ...".
    cell_labels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in PROJECTOR_TYPES:
            raise UnsupportedModelError(
                f"projector type {self.type!r} is not supported "
                f"(expected one of {', '.join(PROJECTOR_TYPES)})"
            )
        object.__setattr__(self, "cell_labels", tuple(int(n) for n in self.cell_labels))
        if self.cell_labels and self.type != "ldpnetv2":
            raise UnsupportedModelError(f"cell_labels need ldpnetv2, not {self.type!r}")
        if self.cell_labels and (
            math.isqrt(len(self.cell_labels)) ** 2 != len(self.cell_labels)
            or min(self.cell_labels) < 0
        ):
            raise UnsupportedModelError(
                f"cell_labels must give a label count >= 0 for each of k x k cells, "
                f"got {list(self.cell_labels)}"
            )

    def output_tokens(self, input_tokens: int) -> int:
        """Image tokens the LLM sees for ``input_tokens`` feature tokens.

        LDP's stride-2 block gives ceil(g/2) per side; LDPv2 pools to exactly
        half the grid, so its grid must be even.
        """
        if self.type in ("mlp2x_gelu", "linear"):
            return input_tokens
        grid = _square_side(input_tokens, self.type)
        if self.type == "ldpnet":
            return ((grid + 1) // 2) ** 2
        if grid % 2:
            raise UnsupportedModelError(
                f"ldpnetv2 pools the patch grid by 2 and needs an even grid, got {grid}x{grid}"
            )
        cells = math.isqrt(len(self.cell_labels))
        if cells and (grid // 2) % cells:
            raise UnsupportedModelError(
                f"ldpnetv2's {grid // 2}x{grid // 2} output grid does not split into "
                f"{cells}x{cells} labelled cells"
            )
        return (grid // 2) ** 2 + sum(self.cell_labels)


def _square_side(tokens: int, projector: str) -> int:
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise UnsupportedModelError(
            f"{projector} reshapes image tokens to a square grid; {tokens} tokens is not a square "
            "(use mm_vision_select_feature 'patch')"
        )
    return side


@dataclass(frozen=True)
class LLMConfig(DictConfig):
    """A LLaMA-architecture causal LM (the keys of transformers' LlamaConfig)."""

    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, list | tuple) else (eos,)

    @property
    def parameters(self) -> int:
        """Weights of the layers, the lm_head and (untied) the embedding table."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attention = 2 * h * self.num_attention_heads * self.head_dim + 2 * h * kv
        layer = attention + 3 * h * self.intermediate_size + 2 * h
        tables = (1 if self.tie_word_embeddings else 2) * self.vocab_size * h
        return self.num_hidden_layers * layer + tables + h

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 4) -> int:
        """Memory of one position of the K and V caches over all layers."""
        per_layer = 2 * self.num_key_value_heads * self.head_dim * bytes_per_value
        return per_layer * self.num_hidden_layers


@dataclass(frozen=True)
class PreprocessConfig(DictConfig):
    """How an image becomes pixel values; see :mod:`mobilevlm.generation.preprocess`.

    ``aspect``: ``pad`` (expand to a square with the mean color, then resize:
    MobileVLM's ``image_aspect_ratio: pad``), ``crop`` (resize the shortest
    edge, center-crop: CLIPImageProcessor's default) or ``resize`` (squash).
    """

    image_size: int = 336
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    aspect: str = "pad"
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"image_size must be 1 to {MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.aspect not in ASPECTS:
            raise ConfigError(f"aspect must be one of {', '.join(ASPECTS)}, got {self.aspect!r}")
        if any(x <= 0 for x in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")


@dataclass(frozen=True)
class ModelConfig:
    """A whole MobileVLM: vision tower, projector, LLM, preprocessing and prompt template."""

    vision: VisionConfig
    projector: ProjectorConfig
    llm: LLMConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    template: str = "v1"
    system_prompt: str | None = None  # None: the template's own system message

    def __post_init__(self) -> None:
        if self.projector.input_dim != self.vision.output_dim:
            raise UnsupportedModelError(
                f"projector input width {self.projector.input_dim} does not match "
                f"the vision tower's feature width {self.vision.output_dim}"
            )
        if self.projector.output_dim != self.llm.hidden_size:
            raise UnsupportedModelError(
                f"projector output width {self.projector.output_dim} does not match "
                f"the LLM hidden size {self.llm.hidden_size}"
            )
        self.projector.output_tokens(self.vision.num_output_tokens)  # raises on a bad grid

    @property
    def num_image_tokens(self) -> int:
        """Embeddings one image contributes to the LLM's input sequence."""
        return self.projector.output_tokens(self.vision.num_output_tokens)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"the model config must be an object, not {type(data).__name__}")
        template, system = data.get("template", "v1"), data.get("system_prompt")
        if not isinstance(template, str) or not (system is None or isinstance(system, str)):
            raise ConfigError("the model's template and system_prompt must be strings")
        return cls(
            vision=vision_config_from_dict(data["vision"]),
            projector=ProjectorConfig.from_dict(data["projector"]),
            llm=LLMConfig.from_dict(data["llm"]),
            preprocess=PreprocessConfig.from_dict(data.get("preprocess", {})),
            template=template,
            system_prompt=system,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "vision": self.vision.to_dict(),
            "projector": self.projector.to_dict(),
            "llm": self.llm.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "template": self.template,
            "system_prompt": self.system_prompt,
        }
