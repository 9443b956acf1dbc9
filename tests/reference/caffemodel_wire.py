"""A tiny, independent protobuf wire-format reader for .caffemodel files.

It knows just enough of caffe.proto to pull out parameter blobs:

- NetParameter:      layer = 100 (LayerParameter), legacy layers = 2 (V1LayerParameter)
- LayerParameter:    name = 1, type = 2 (string), blobs = 7
- V1LayerParameter:  name = 4, type = 5 (enum), blobs = 6
- BlobProto:         num = 1, channels = 2, height = 3, width = 4 (legacy dims),
                     data = 5 (float), shape = 7 (BlobShape: dim = 1, int64),
                     double_data = 8
Every other field is skipped.  Repeated numeric fields are accepted packed or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["read_caffemodel", "read_caffemodel_layers", "V1_TYPE_ENUM"]

# V1LayerParameter.LayerType numbers (caffe.proto) -> enum names.
V1_TYPE_ENUM = {
    0: "NONE", 1: "ACCURACY", 2: "BNLL", 3: "CONCAT", 4: "CONVOLUTION", 5: "DATA",
    6: "DROPOUT", 7: "EUCLIDEAN_LOSS", 8: "FLATTEN", 9: "HDF5_DATA", 10: "HDF5_OUTPUT",
    11: "IM2COL", 12: "IMAGE_DATA", 13: "INFOGAIN_LOSS", 14: "INNER_PRODUCT", 15: "LRN",
    16: "MULTINOMIAL_LOGISTIC_LOSS", 17: "POOLING", 18: "RELU", 19: "SIGMOID",
    20: "SOFTMAX", 21: "SOFTMAX_LOSS", 22: "SPLIT", 23: "TANH", 24: "WINDOW_DATA",
    25: "ELTWISE", 26: "POWER", 27: "SIGMOID_CROSS_ENTROPY_LOSS", 28: "HINGE_LOSS",
    29: "MEMORY_DATA", 30: "ARGMAX", 31: "THRESHOLD", 32: "DUMMY_DATA", 33: "SLICE",
    34: "MVN", 35: "ABSVAL", 36: "SILENCE", 37: "CONTRASTIVE_LOSS", 38: "EXP",
    39: "DECONVOLUTION",
}

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Raised for bytes that are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; return (value, next position)."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) for each field of one message.

    Varints come back as int, everything else as the raw bytes (memoryview).
    """
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _FIXED64:
            value, pos = buf[pos: pos + 8], pos + 8
        elif wire == _FIXED32:
            value, pos = buf[pos: pos + 4], pos + 4
        elif wire == _BYTES:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos: pos + length], pos + length
        else:
            raise WireError(f"unsupported wire type {wire} (field {field})")
        if pos > len(buf):
            raise WireError(f"field {field} runs past the end of its message")
        yield field, wire, value


def _packed_varints(data: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        out.append(value - (1 << 64) if value >= 1 << 63 else value)  # int64 two's complement
    return out


def _blob(buf: memoryview) -> np.ndarray:
    """Decode a BlobProto into an array shaped like Caffe's Blob::FromProto does."""
    legacy = {}
    dims: list[int] = []
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for field, wire, value in _fields(buf):
        if field in (1, 2, 3, 4) and wire == _VARINT:
            legacy[field] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 5:
            floats.append(np.frombuffer(value, dtype="<f4"))
        elif field == 8:
            doubles.append(np.frombuffer(value, dtype="<f8"))
        elif field == 7 and wire == _BYTES:
            for f, w, v in _fields(value):
                if f == 1:
                    dims.extend(_packed_varints(v) if w == _BYTES else [v])
    data = np.concatenate(doubles) if doubles else (
        np.concatenate(floats) if floats else np.zeros(0, dtype=np.float32))
    # Legacy blobs (any of num/channels/height/width set) are 4-D; defaults are 0.
    shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)) if legacy else tuple(dims)
    if int(np.prod(shape)) != data.size:
        raise WireError(f"blob shape {shape} does not match {data.size} values")
    return data.reshape(shape).copy()


def _layer(buf: memoryview, v1: bool) -> tuple[str, str, list[np.ndarray]]:
    name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
    name, kind, blobs = "", "", []
    for field, wire, value in _fields(buf):
        if field == name_f and wire == _BYTES:
            name = bytes(value).decode("utf-8")
        elif field == type_f:
            kind = V1_TYPE_ENUM.get(value, str(value)) if v1 else bytes(value).decode("utf-8")
        elif field == blobs_f and wire == _BYTES:
            blobs.append(_blob(value))
    return name, kind, blobs


def read_caffemodel_layers(path: str | Path) -> list[tuple[str, str, list[np.ndarray]]]:
    """Return (name, type, blobs) for every layer of a .caffemodel, in file order.

    V1 types are reported as their enum names (e.g. ``CONVOLUTION``); blobs keep
    their stored shapes (legacy blobs are 4-D num x channels x height x width).
    """
    buf = memoryview(Path(path).read_bytes())
    out = []
    for field, wire, value in _fields(buf):
        if field == 100 and wire == _BYTES:
            out.append(_layer(value, v1=False))
        elif field == 2 and wire == _BYTES:
            out.append(_layer(value, v1=True))
    return out


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Return {layer name: parameter blobs} for layers that carry blobs.

    As in Caffe's CopyTrainedLayersFrom, a later layer of the same name wins.
    """
    return {name: blobs for name, _, blobs in read_caffemodel_layers(path) if blobs}
