"""Tensors written to an ONNX graph's external data file as they are made.

A graph whose weights sit in one file beside it, each at a page-aligned offset (so
ONNX Runtime can memory-map them), lets the exporter hold one weight at a time: the
decoder is emitted, and then quantized, without a second copy of the model in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

MIN_BYTES = 1024  # smaller tensors stay inside the graph
ALIGNMENT = 4096


def data_file_name(graph: str) -> str:
    """The external data file of the graph file named ``graph``."""
    return f"{graph}.data"


class ExternalData:
    """Appends tensors to ``file`` (open for binary writing), known to the graph as
    ``location``, and turns them into references to it."""

    def __init__(self, file: BinaryIO, location: str) -> None:
        self.file, self.location = file, location

    def array(self, name: str, array: np.ndarray) -> TensorProto:
        """A tensor named ``name`` holding ``array``: written out unless it is small."""
        array = np.ascontiguousarray(array)
        if array.nbytes < MIN_BYTES:
            return onnx.numpy_helper.from_array(array, name)
        tensor = TensorProto(name=name, dims=array.shape)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        self._refer(tensor, self._write(array))
        return tensor

    def spill(self, tensor: TensorProto) -> None:
        """Move ``tensor``'s in-memory bytes to the file, unless it is small."""
        if uses_external_data(tensor) or len(tensor.raw_data) < MIN_BYTES:
            return
        offset = self._write(tensor.raw_data)
        tensor.ClearField("raw_data")
        self._refer(tensor, offset)

    def _write(self, data: np.ndarray | bytes) -> int:
        offset = -self.file.tell() % ALIGNMENT + self.file.tell()
        self.file.seek(offset)
        self.file.write(data)  # not ndarray.tofile: a full disk is then "File too large"
        return offset

    def _refer(self, tensor: TensorProto, offset: int) -> None:
        """``tensor`` made a reference to the bytes from ``offset`` to the file's end."""
        length = self.file.tell() - offset
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", self.location), ("offset", offset), ("length", length)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)


def detached(tensor: TensorProto) -> TensorProto:
    """A copy of ``tensor`` that is a message of its own (protobuf frees a message's memory
    only with the message it belongs to)."""
    copy = TensorProto()
    copy.CopyFrom(tensor)
    return copy


def load_tensor(into: TensorProto, tensor: TensorProto, base_dir: Path) -> TensorProto:
    """``into`` made a copy of ``tensor`` with its external bytes (from ``base_dir``) read
    in; returns ``into``."""
    into.CopyFrom(tensor)
    if uses_external_data(into):
        load_external_data_for_tensor(into, str(base_dir))
        into.data_location = TensorProto.DEFAULT
        del into.external_data[:]
    return into
