"""The vision encoder (+ projector) on ONNX Runtime: pixel values -> image embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilevlm.runtime.ort.providers import create_session

PIXEL_VALUES = "pixel_values"  # fixed by mobilevlm.export.onnx_vision


class OnnxVisionEncoder:
    def __init__(
        self,
        path: str | Path,
        providers: list[tuple[str, dict[str, str]]],
        threads: int | None = None,
    ) -> None:
        self.session = create_session(path, providers, threads)

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """(3, S, S) float32 -> (num_image_tokens, hidden) float32."""
        feed = {PIXEL_VALUES: np.ascontiguousarray(pixel_values[None], dtype=np.float32)}
        return self.session.run(None, feed)[0][0]
