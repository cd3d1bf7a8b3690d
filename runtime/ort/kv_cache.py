"""The decoder's KV cache: one preallocated buffer per layer and role, updated in place.

Buffers are ONNX Runtime values sized to the context once, at load. The
decoder graph's GroupQueryAttention writes the new positions into them
directly when each ``present`` output is bound to its ``past`` buffer, so a
decode step allocates and copies nothing, and resetting is just length 0.
"""

from __future__ import annotations

import numpy as np

from mobilevlm.config import LLMConfig


class KVCache:
    def __init__(self, config: LLMConfig, capacity: int, dtype=np.float32) -> None:
        import onnxruntime

        self.capacity = capacity
        # positions written since they were last zeroed (a static graph reads them all)
        self.written = 0
        self.length = 0  # positions filled
        shape = (1, config.num_key_value_heads, capacity, config.head_dim)

        def buffer():
            # allocated by onnxruntime, not numpy: numpy advises huge pages for large arrays,
            # so the first positions written made whole 2 MiB pages of every head resident
            # (a 100-token prompt at 8,192 positions of capacity: 250 MiB, not 4)
            return onnxruntime.OrtValue.ortvalue_from_shape_and_type(shape, dtype)

        self.keys = [buffer() for _ in range(config.num_hidden_layers)]
        self.values = [buffer() for _ in range(config.num_hidden_layers)]
        self.nbytes = 2 * config.num_hidden_layers * int(np.prod(shape)) * np.dtype(dtype).itemsize

    @property
    def length(self) -> int:
        return self._length

    @length.setter
    def length(self, value: int) -> None:
        self._length = value
        self.written = max(self.written, value)

    @property
    def free(self) -> int:
        return self.capacity - self.length

    def reset(self) -> None:
        self.length = 0  # attention reads only the first `length` positions
