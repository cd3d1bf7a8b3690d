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
        self.length = 0  # positions filled
        shape = (1, config.num_key_value_heads, capacity, config.head_dim)
        self.keys = [
            onnxruntime.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype))
            for _ in range(config.num_hidden_layers)
        ]
        self.values = [
            onnxruntime.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype))
            for _ in range(config.num_hidden_layers)
        ]
        self.nbytes = 2 * config.num_hidden_layers * int(np.prod(shape)) * np.dtype(dtype).itemsize

    @property
    def free(self) -> int:
        return self.capacity - self.length

    def reset(self) -> None:
        self.length = 0  # attention reads only the first `length` positions
