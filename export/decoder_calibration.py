"""What the 4-bit decoder is calibrated on: real sequences through the fp32 graph.

Activation-aware scaling (:mod:`mobilevlm.export.activation_scaling`) needs, for
every weight, how large each of its input channels is and a sample of real
inputs to measure a candidate quantization's output error on. Both come from
running the exported fp32 decoder graph, with its MatMuls' inputs added as
outputs, over sequences like the ones the runtime will see: for the default
model, Shapes-VQA training scenes with their question and answer (image
embeddings spliced in) and plain-text prompts; for a checkpoint, its
calibration images with a description prompt, and the same text prompts.
Held-out questions, on which accuracy is measured, are never used.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mobilevlm import shapes_vqa
from mobilevlm.default_model.text_prompts import TRAIN_PROMPTS
from mobilevlm.export.external_data import data_file_name
from mobilevlm.generation.backend import LanguageBackend
from mobilevlm.generation.decode_loop import conversation_ids
from mobilevlm.generation.splice import splice
from mobilevlm.runtime.heap import give_back
from mobilevlm.runtime.ort import graph_io

VQA_SEQUENCES = 64
TEXT_SEQUENCES = 16
# what the output error is measured on, all MatMul inputs together: their Gram matrices
# (float32) where they fit, the 135M model's 323 MiB; else input rows, float16, as many as
# fit: 950 of a 1.4B LLM's calibration tokens. On 1,000 held-out questions the 135M model's
# clipped int4 answered as fp32 on 97.4% with 1,024 sampled rows, 98.0% with 2,700 of its
# 5,672 tokens, 98.2% with 97% of them (issue 35)
SAMPLED_ROWS_BYTES = 512 << 20
DESCRIBE = "Describe the image."


def large_model_counts() -> dict[str, int]:
    """Fewer sequences for a billion-parameter LLM: each image costs seconds in the torch
    reference, each token tens of milliseconds in the fp32 graph."""
    return {"vqa": 16, "text": 8}


@dataclass
class InputStatistics:
    """One MatMul's input X over the calibration sequences: what a candidate quantization's
    output error ``||X (W - W_q)||^2`` is measured with, either exactly, on the Gram matrix
    ``X^T X`` of every calibration token, or on a uniform sample of X's rows, where the
    Gram matrices of all inputs would not fit the budget (a 1.4B LLM's: 4.2 GiB)."""

    mean_abs: np.ndarray  # (K,) mean |x| per input channel
    rows: np.ndarray | None = None  # (n, K) float16, sampled rows
    gram: np.ndarray | None = None  # (K, K) float32, X^T X

    def scaled(self, s: np.ndarray) -> InputStatistics:
        """The statistics of ``X / s`` (input channel k divided by ``s[k]``)."""
        if self.gram is not None:
            return InputStatistics(self.mean_abs / s, gram=self.gram / np.outer(s, s))
        return InputStatistics(self.mean_abs / s, rows=(self.rows / s).astype(np.float32))

    def output_error(self, delta: np.ndarray) -> float:
        """``||X delta||^2`` for a weight error ``delta`` (K, N)."""
        if self.gram is not None:
            return float((delta * (self.gram @ delta)).sum())
        return float(np.square(self.rows.astype(np.float32) @ delta).sum())

    def gram_matrix(self) -> np.ndarray:
        """``X^T X`` (K, K): exact, or of the sampled rows."""
        if self.gram is not None:
            return self.gram
        x = self.rows.astype(np.float32)
        return x.T @ x


def calibration_sequences(
    backend: LanguageBackend,
    images: Sequence | None = None,
    vqa: int = VQA_SEQUENCES,
    text: int = TEXT_SEQUENCES,
) -> list[np.ndarray]:
    """Input embeddings, (T, hidden) each: ``vqa`` Shapes-VQA training scenes asked and
    answered, or, given ``images`` (a checkpoint's calibration images), each with a
    description prompt; then ``text`` text-only prompts."""
    sequences = []
    end = _end_of_answer(backend)
    if images is None:
        for index in range(vqa):
            sample = shapes_vqa.sample("train", index)
            ids = conversation_ids(backend.config, backend.tokenizer, sample.question.question)
            ids = ids + backend.tokenizer.encode(sample.question.answer) + end
            sequences.append(
                splice(ids, backend.encode_image(sample.image()), backend.embed_tokens)
            )
    else:
        ids = conversation_ids(backend.config, backend.tokenizer, DESCRIBE)
        for image in images[:vqa]:
            sequences.append(splice(ids, backend.encode_image(image), backend.embed_tokens))
    for prompt in TRAIN_PROMPTS[:text]:
        ids = conversation_ids(backend.config, backend.tokenizer, prompt, with_image=False)
        sequences.append(splice(ids, None, backend.embed_tokens))
    return sequences


def heldout_sequences(backend: LanguageBackend, count: int) -> list[np.ndarray]:
    """Input embeddings of held-out Shapes-VQA questions (the export's parity prompts),
    prompts only: what an NPU graph's parity is measured on."""
    from mobilevlm.export.parity import parity_prompts

    sequences = []
    for image, question in parity_prompts(count):
        ids = conversation_ids(backend.config, backend.tokenizer, question)
        sequences.append(splice(ids, backend.encode_image(image), backend.embed_tokens))
    return sequences


def _end_of_answer(backend: LanguageBackend) -> list[int]:
    """The token that ends an assistant turn in the model's template (its EOS without one)."""
    for text in ("<|im_end|>", "</s>"):
        token = backend.tokenizer.token_to_id(text)
        if token is not None:
            return [token]
    return list(backend.config.llm.eos_token_ids[:1])


def input_statistics(
    fp32_graph: Path,
    sequences: Sequence[np.ndarray],
    weights: Sequence[str],
    budget: int = SAMPLED_ROWS_BYTES,
    seed: int = 0,
) -> dict[str, InputStatistics]:
    """The inputs of the MatMuls whose weights are named in ``weights``, keyed by weight.

    The graph is copied with those inputs as extra outputs into a scratch folder beside it
    (onnxruntime reads external data only from the model's own folder; a hard link keeps
    the weights on disk once)."""
    import onnxruntime

    model = onnx.load(str(fp32_graph), load_external_data=False)
    widths = {t.name: t.dims[0] for t in model.graph.initializer}
    inputs: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            inputs.setdefault(node.input[0], []).append(node.input[1])
    names = list(inputs)
    if not names:  # nothing to measure (every weight 8-bit); run() would return all outputs
        return {}
    for name in names:
        model.graph.output.add().name = name
    sums = {name: 0.0 for name in names}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    total = sum(len(s) for s in sequences)
    exact = 4 * sum(widths[consumers[0]] ** 2 for consumers in inputs.values()) <= budget
    grams = {name: 0.0 for name in names} if exact else {}
    row_bytes = 2 * sum(widths[consumers[0]] for consumers in inputs.values())
    keep = 0.0 if exact else min(1.0, budget / max(row_bytes * total, 1))
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(dir=fp32_graph.parent) as scratch:
        graph = Path(scratch) / fp32_graph.name
        os.link(
            fp32_graph.parent / data_file_name(fp32_graph.name),
            Path(scratch) / data_file_name(graph.name),
        )
        onnx.save_model(model, str(graph))
        del model
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(graph), options, ["CPUExecutionProvider"])
        empty = _empty_cache(session)
        for embeds in sequences:
            length = len(embeds)
            feed = {
                graph_io.INPUT_EMBEDS: embeds[None].astype(np.float32),
                graph_io.SEQLENS_K: np.array([length - 1], np.int32),
                graph_io.TOTAL_SEQUENCE_LENGTH: np.array(length, np.int32),
            } | empty
            chosen = rng.random(length) < keep
            for name, x in zip(names, session.run(names, feed), strict=True):
                x = x.reshape(length, -1)
                sums[name] = sums[name] + np.abs(x).sum(0, dtype=np.float64)
                if exact:
                    grams[name] = grams[name] + x.T @ x
                else:
                    samples[name].append(x[chosen].astype(np.float16))
        del session
    stats = {}
    for name, consumers in inputs.items():
        mean_abs = (sums[name] / total).astype(np.float32)
        if exact:
            found = InputStatistics(mean_abs, gram=grams.pop(name))
        else:
            # popped: each input's chunks go as its array is made, not after the last one
            found = InputStatistics(mean_abs, rows=np.concatenate(samples.pop(name)))
        stats |= {weight: found for weight in consumers}
    give_back()  # the rows' chunks, small and many: glibc would keep them (475 MiB, 135M model)
    return stats


def _empty_cache(session) -> dict[str, np.ndarray]:
    """Zero-length past K/V for every layer: each sequence is one prefill."""
    feed = {}
    for arg in session.get_inputs():
        if arg.name.startswith("past_"):
            _, heads, _, head_dim = arg.shape
            feed[arg.name] = np.zeros((1, heads, 0, head_dim), np.float32)
    return feed
