"""The on-device runtime (torch-free): bundle loading, backends, sampling, the CLI.

Nothing here imports torch or transformers; the base install (numpy, pillow,
onnxruntime, tokenizers, safetensors) is all it needs. The CLI reaches the
torch reference and the exporter only through lazy imports of the
``mobilevlm`` modules that define them, so it still starts without torch.
"""


def __getattr__(name: str):
    """``from mobilevlm.runtime import Pipeline``: the embedded API, imported on first use."""
    if name in ("Pipeline", "Conversation", "Streaming"):
        from mobilevlm.runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
