"""LoadOptions: every load option checked once, when the options are made."""

from __future__ import annotations

import pytest

from mobilevlm.errors import MobileVLMError, OptionsError
from mobilevlm.runtime.options import LLAMA_CPP, ONNXRUNTIME, LoadOptions


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"mode": "mtmd", "backend": ONNXRUNTIME}, "mode mtmd is llama.cpp's"),
        ({"mode": "mtmd", "precision": "int4"}, "mode mtmd is llama.cpp's"),
        ({"precision": "f16", "backend": ONNXRUNTIME}, "f16 is a precision of llama.cpp"),
        ({"precision": "int9"}, "unknown precision 'int9'"),
        ({"context": 1}, "context must be at least 2"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"memory_budget": "lots"}, "not a memory size"),
        ({"verify": "never"}, "unknown verify 'never'"),
    ],
)
def test_bad_options_are_refused_when_made(fields, needle):
    error = MobileVLMError if "memory_budget" in fields else OptionsError  # parse_size's
    with pytest.raises(error, match=needle):
        LoadOptions(**fields)


def test_the_precision_or_the_mode_names_the_engine():
    assert LoadOptions(precision="int4").implied_backend == ONNXRUNTIME
    assert LoadOptions(precision="q4_k_m").implied_backend == LLAMA_CPP
    assert LoadOptions(mode="mtmd").implied_backend == LLAMA_CPP
    assert LoadOptions().implied_backend is None
    options = LoadOptions.of(LoadOptions(precision="int8"), memory_budget="512MB", providers="qnn")
    assert options.memory_budget == 512_000_000 and options.providers == ("qnn",)
