"""The LLM of a checkpoint as a plain Hugging Face LLaMA directory: what the GenAI peers convert.

ONNX Runtime GenAI's model builder and optimum-intel both start from a
``LlamaForCausalLM`` folder (config.json, safetensors, a fast tokenizer). The
runtime's own bundles hold the same weights in other forms, so this folder is
written from the torch reference once per bundle and kept beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mobilevlm.reference.checkpoint import atomic_directory
from mobilevlm.reference.model import MobileVLM

CONFIG_FILE = "config.json"


def save_hf_llm(model: MobileVLM, tokenizer_json: Path, target: Path) -> Path:
    """Write ``model``'s language model and its tokenizer to ``target`` (atomically)."""
    llm = model.language_model
    with atomic_directory(target) as tmp:
        llm.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        eos = model.config.llm.eos_token_ids
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.config.llm.max_position_embeddings,
            "clean_up_tokenization_spaces": False,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        generation = {"eos_token_id": list(eos), "do_sample": False}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return target


def hf_llm_dir(checkpoint: str, tokenizer_json: Path, target: Path) -> Path:
    """``target`` holding the checkpoint's LLM, written on first use."""
    if (target / CONFIG_FILE).is_file():
        return target
    from mobilevlm.default_model.assemble import assemble
    from mobilevlm.manifest import DEFAULT_MODEL_SOURCE
    from mobilevlm.reference import load_reference

    if checkpoint == DEFAULT_MODEL_SOURCE:
        checkpoint = str(assemble())
    return save_hf_llm(load_reference(checkpoint), tokenizer_json, target)
