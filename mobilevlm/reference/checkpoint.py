"""Checkpoint loading and saving: two layouts in, one :class:`MobileVLM` out.

- ``original``: MobileVLM / LLaVA as published: a LLaMA ``config.json`` with
  ``mm_*`` keys, weights under ``model.*`` / ``lm_head.*`` /
  ``model.mm_projector.*`` (safetensors, or pickled ``.bin`` read with
  ``weights_only=True``), and the CLIP vision tower in a separate local
  directory (``mm_vision_tower`` when it is a path, or ``vision_tower=``).
- ``own``: one self-contained directory: ``config.json`` (format marker and
  :class:`ModelConfig`), ``model.safetensors`` with every part under the
  project's names, ``tokenizer.json``.

All knowledge of the original key names is :data:`ORIGINAL_PREFIXES` and
:data:`CLIP_PREFIXES`; it is used in both directions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mobilevlm.config import (
    ClipVisionConfig,
    LLMConfig,
    ModelConfig,
    PreprocessConfig,
    ProjectorConfig,
)
from mobilevlm.errors import (
    CheckpointError,
    MobileVLMError,
    TokenizerError,
    UnsupportedModelError,
    at,
)
from mobilevlm.generation.tokenizer import Tokenizer
from mobilevlm.reference.model import MobileVLM

log = logging.getLogger(__name__)

OWN_FORMAT = "mobilevlm-checkpoint"
OWN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"

# (original prefix, own prefix) pairs; the first match wins, so the longest comes first
LDP_PROJECTOR = ("model.mm_projector.model.", "projector.")  # ldpnet wraps its block in `.model`
PROJECTOR = ("model.mm_projector.", "projector.")
LLM_PREFIXES = (("model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))
ORIGINAL_PREFIXES: tuple[tuple[str, str], ...] = (
    LDP_PROJECTOR,
    PROJECTOR,
    ("model.vision_tower.vision_tower.", "vision_tower."),  # present when the tower was saved
    *LLM_PREFIXES,
)
CLIP_PREFIXES: tuple[tuple[str, str], ...] = (("vision_model.", "vision_tower.vision_model."),)


def rename(key: str, prefixes: tuple[tuple[str, str], ...], reverse: bool = False) -> str | None:
    """Map ``key`` through the first matching prefix pair; None when none matches."""
    for original, own in prefixes:
        src, dst = (own, original) if reverse else (original, own)
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def original_key(own_key: str, projector_type: str) -> str:
    """The original checkpoint's name of one of :class:`MobileVLM`'s parameters."""
    if own_key.startswith("vision_tower."):  # published towers live in their own CLIP directory
        return rename(own_key, CLIP_PREFIXES, reverse=True)
    projector = LDP_PROJECTOR if projector_type == "ldpnet" else PROJECTOR
    return rename(own_key, (projector, *LLM_PREFIXES), reverse=True)


# ---------------------------------------------------------------- reading files


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(at(path, "missing"))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(at(path, f"not valid JSON ({exc})")) from exc


def _weight_files(directory: Path) -> list[Path]:
    """Weight files of a transformers-style directory: sharded or not, safetensors first."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise CheckpointError(
                    at(directory / missing[0], f"shard listed in {index_name} is missing")
                )
            return [directory / s for s in shards]
    for pattern in ("*.safetensors", "pytorch_model*.bin", "*.bin"):
        files = sorted(directory.glob(pattern))
        if files:
            return files
    raise CheckpointError(at(directory, "no weights found (*.safetensors or pytorch_model*.bin)"))


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a directory. Pickles are read with ``weights_only=True``."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for path in _weight_files(directory):
        try:
            if path.suffix == ".safetensors":
                weights.update(load_file(str(path)))
            else:
                weights.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:  # safetensors and torch raise assorted types on corrupt files
            raise CheckpointError(
                at(path, f"cannot read weights ({exc.__class__.__name__}: {exc})")
            ) from exc
    return weights


def detect_layout(path: str | Path) -> str:
    """``own`` or ``original``; raises CheckpointError for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(at(path, "no such checkpoint directory"))
    config = _read_json(path / CONFIG_FILE)
    if config.get("format") == OWN_FORMAT:
        return "own"
    if "mm_projector_type" in config or "mm_vision_tower" in config:
        return "original"
    raise CheckpointError(
        at(path / CONFIG_FILE, "not a MobileVLM checkpoint (no `format` marker and no mm_* keys)")
    )


# ---------------------------------------------------------------- configs


def resolve_vision_tower_dir(
    checkpoint: Path, config: dict[str, Any], override: str | Path | None
) -> Path:
    if override is not None:
        directory = Path(override)
        if not directory.is_dir():
            raise CheckpointError(at(directory, "vision tower directory does not exist"))
        return directory
    name = config.get("mm_vision_tower") or config.get("vision_tower")
    if not name:
        raise CheckpointError(
            at(checkpoint / CONFIG_FILE, "has no mm_vision_tower; pass the CLIP directory")
        )
    for candidate in (Path(name), checkpoint / name):
        if candidate.is_dir():
            return candidate
    raise CheckpointError(
        at(
            checkpoint / CONFIG_FILE,
            f"mm_vision_tower {name!r} is not a local directory; pass the CLIP vision tower "
            "directory with --vision-tower DIR (nothing is downloaded)",
        )
    )


def original_model_config(checkpoint: Path, vision_dir: Path) -> ModelConfig:
    """ModelConfig of an original-layout checkpoint (torch-free: reads JSON only)."""
    config_path = checkpoint / CONFIG_FILE
    config = _read_json(config_path)
    clip = _read_json(vision_dir / CONFIG_FILE)
    proc_path = vision_dir / "preprocessor_config.json"
    proc = _read_json(proc_path) if proc_path.is_file() else {}
    try:
        if config.get("mm_use_im_start_end"):
            raise UnsupportedModelError("mm_use_im_start_end=true is not supported")
        tower_type = config.get("vision_tower_type", "clip")
        if tower_type != "clip":
            raise UnsupportedModelError(f"vision_tower_type {tower_type!r} is not supported")
        vision = ClipVisionConfig.from_hf_dict(
            clip,
            select_layer=config.get("mm_vision_select_layer", -2),
            select_feature=config.get("mm_vision_select_feature", "patch"),
        )
        projector = ProjectorConfig(
            type=config.get("mm_projector_type", "linear"),
            input_dim=config.get("mm_hidden_size", vision.hidden_size),
            output_dim=config["hidden_size"],
        )
        return ModelConfig(
            vision=vision,
            projector=projector,
            llm=LLMConfig.from_dict(config),
            preprocess=_clip_preprocess(proc, vision, config.get("image_aspect_ratio")),
            template="v1",
        )
    except MobileVLMError as exc:
        raise UnsupportedModelError(at(config_path, str(exc))) from exc
    except KeyError as exc:
        raise CheckpointError(at(config_path, f"missing key {exc}")) from exc


def _clip_preprocess(
    proc: dict[str, Any], vision: ClipVisionConfig, aspect_ratio: str | None
) -> PreprocessConfig:
    """From a CLIP preprocessor_config.json; MobileVLM pads to square when image_aspect_ratio
    is ``pad``, otherwise CLIPImageProcessor resizes the short side and center-crops."""
    defaults = PreprocessConfig()
    return PreprocessConfig(
        image_size=vision.image_size,
        mean=tuple(proc.get("image_mean", defaults.mean)),
        std=tuple(proc.get("image_std", defaults.std)),
        aspect="pad" if aspect_ratio == "pad" else "crop",
        resample="bicubic",
    )


def read_model_config(path: str | Path, vision_tower: str | Path | None = None) -> ModelConfig:
    """The ModelConfig of a checkpoint of either layout, without loading weights."""
    path = Path(path)
    if detect_layout(path) == "own":
        return _own_model_config(path)
    config = _read_json(path / CONFIG_FILE)
    return original_model_config(path, resolve_vision_tower_dir(path, config, vision_tower))


def _own_model_config(path: Path) -> ModelConfig:
    config_path = path / CONFIG_FILE
    data = _read_json(config_path)
    if data.get("format_version") != OWN_FORMAT_VERSION:
        raise CheckpointError(
            at(
                config_path,
                f"format_version {data.get('format_version')!r} is not {OWN_FORMAT_VERSION}",
            )
        )
    try:
        return ModelConfig.from_dict(data["model"])
    except KeyError as exc:
        raise CheckpointError(at(config_path, f"missing key {exc}")) from exc
    except MobileVLMError as exc:
        raise UnsupportedModelError(at(config_path, str(exc))) from exc


# ---------------------------------------------------------------- tokenizers


def _original_tokenizer(checkpoint: Path) -> Tokenizer:
    if (checkpoint / TOKENIZER_FILE).is_file():
        return Tokenizer.from_file(checkpoint / TOKENIZER_FILE)
    if not (checkpoint / "tokenizer.model").is_file():
        raise TokenizerError(at(checkpoint, "has neither tokenizer.json nor tokenizer.model"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:  # converts the SentencePiece model into a tokenizers pipeline
        fast = AutoTokenizer.from_pretrained(str(checkpoint), use_fast=True)
    except Exception as exc:
        raise TokenizerError(at(checkpoint / "tokenizer.model", f"cannot convert ({exc})")) from exc
    return Tokenizer(fast.backend_tokenizer, str(checkpoint / "tokenizer.model"))


# ---------------------------------------------------------------- weights into a model


def _load_state(model: MobileVLM, state: dict[str, torch.Tensor], source: Path) -> MobileVLM:
    expected = model.state_dict()
    tied = model.config.llm.tie_word_embeddings
    missing = [
        k for k in expected if k not in state and not (tied and k.endswith("lm_head.weight"))
    ]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise CheckpointError(at(source, f"missing {len(missing)} tensors: {shown}"))
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        log.debug(
            "%s: ignoring %d tensors not used by the model: %s",
            source,
            len(unexpected),
            unexpected[:5],
        )
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                at(
                    source,
                    f"tensor {key} has shape {tuple(value.shape)}, "
                    f"the config implies {tuple(expected[key].shape)}",
                )
            )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    if tied:
        model.language_model.tie_weights()
    return model.eval()


def load_checkpoint(
    path: str | Path, vision_tower: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> MobileVLM:
    """Load a checkpoint of either layout into one :class:`MobileVLM` (eval mode, ``dtype``)."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "own":
        config = _own_model_config(path)
        tokenizer = Tokenizer.from_file(path / TOKENIZER_FILE)
        state = read_weights(path)
    else:
        raw = _read_json(path / CONFIG_FILE)
        vision_dir = resolve_vision_tower_dir(path, raw, vision_tower)
        config = original_model_config(path, vision_dir)
        tokenizer = _original_tokenizer(path)
        state = {}
        for key, value in read_weights(vision_dir).items():
            if (own := rename(key, CLIP_PREFIXES)) is not None:
                state[own] = value
        for key, value in read_weights(path).items():  # a saved tower here takes precedence
            if (own := rename(key, ORIGINAL_PREFIXES)) is not None:
                state[own] = value
    if tokenizer.vocab_size > config.llm.vocab_size:
        raise CheckpointError(
            at(
                tokenizer.source,
                f"tokenizer has {tokenizer.vocab_size} tokens, "
                f"the LLM only {config.llm.vocab_size}",
            )
        )
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():  # skip random initialisation: every weight is loaded right after
        model = MobileVLM(config, tokenizer)
    model = _load_state(model, state, path)
    return model.to(dtype)


# ---------------------------------------------------------------- writing


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target``, on error
    it is removed, so a half-written directory never sits at ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_abandoned(target: Path) -> None:
    """Temporary siblings of ``target`` left by a writer that was killed (its pid, in the
    name, is gone), and the previous version kept while a replacement was renamed in."""
    for sibling in target.parent.glob(f".{target.name}.*"):
        owner = sibling.name[len(target.name) + 2 :].split(".")[0]
        if owner == "old":
            if target.exists():
                shutil.rmtree(sibling, ignore_errors=True)
        elif owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _own_state(model: MobileVLM) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if model.config.llm.tie_word_embeddings:  # safetensors stores shared tensors once
        state.pop("language_model.lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_checkpoint(
    model: MobileVLM, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` in the project's own layout, atomically. ``extra`` adds config keys
    (e.g. ``random_weights``)."""
    from safetensors.torch import save_file

    if model.tokenizer is None:
        raise CheckpointError(at(path, "cannot save a model without a tokenizer"))
    path = Path(path)
    if path.exists() and not (path.is_dir() and _is_own_checkpoint(path)):
        raise CheckpointError(
            at(path, "exists and is not a mobilevlm checkpoint; not replacing it")
        )
    config = {
        "format": OWN_FORMAT,
        "format_version": OWN_FORMAT_VERSION,
        **(extra or {}),
        "model": model.config.to_dict(),
    }
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(_own_state(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / TOKENIZER_FILE).write_text(model.tokenizer.to_str(), encoding="utf-8")
    return path


def _is_own_checkpoint(path: Path) -> bool:
    try:
        return detect_layout(path) == "own"
    except CheckpointError:
        return False


def read_checkpoint_extra(path: str | Path) -> dict[str, Any]:
    """Top-level keys of an own-layout config.json besides the model (empty for originals)."""
    data = _read_json(Path(path) / CONFIG_FILE)
    return (
        {k: v for k, v in data.items() if k != "model"} if data.get("format") == OWN_FORMAT else {}
    )
