"""Typed exceptions for user errors.

Every error a user can cause (a wrong path, a broken image, an unsupported
checkpoint) is a subclass of :class:`MobileVLMError` whose message names the
file or the limit in one line. The CLI maps these to exit code 2 and prints
only the message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MobileVLMError(Exception):
    """Base class of user errors: bad input, not a bug in the library."""


class ImageError(MobileVLMError):
    """An image that cannot be read or decoded."""


class CheckpointError(MobileVLMError):
    """A checkpoint directory that is missing, incomplete or inconsistent."""


class UnsupportedModelError(CheckpointError):
    """A checkpoint whose architecture (projector, vision tower) is not supported."""


class TokenizerError(MobileVLMError):
    """A tokenizer file that is missing or cannot be used."""


class PromptError(MobileVLMError):
    """A prompt or template that cannot be rendered (unknown template, misplaced image)."""


class MissingDependencyError(MobileVLMError):
    """An optional extra (torch for the reference, llama-cpp-python, ...) is not installed."""


def at(path: str | Path, problem: str) -> str:
    """Format the one-line message convention: ``<path>: <problem>``."""
    return f"{path}: {problem}"


class ContextOverflowError(MobileVLMError):
    """A prompt (with its image tokens) longer than the model's context."""


class BundleError(MobileVLMError):
    """A bundle directory that is missing, incomplete, corrupted or of another format version."""


class ProviderError(MobileVLMError):
    """An execution provider that was required but is not available in this onnxruntime."""


class BudgetError(MobileVLMError):
    """A memory budget that nothing in the bundle fits in; the message names the budget and
    the smallest that works, also held as ``budget`` and ``smallest`` (bytes)."""

    def __init__(self, message: str, budget: int | None = None, smallest: int | None = None):
        super().__init__(message)
        self.budget = budget
        self.smallest = smallest


class OptionsError(MobileVLMError, ValueError):
    """A load or generation option that is unknown, of the wrong type, out of range, or does
    not apply (a ValueError too, as Python's own checks of a value are)."""


class ConfigError(MobileVLMError):
    """A configuration (a checkpoint's config.json, a manifest's model) with a field of the
    wrong type or value; the message names the field."""
