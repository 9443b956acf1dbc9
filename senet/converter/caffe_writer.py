"""Writing binary .caffemodel files, blob payloads streamed straight from the arrays."""

from __future__ import annotations

import os

import numpy as np

from senet.converter import caffe_pb2 as pb
from senet.converter.caffe_reader import (
    BLOB_CHANNELS, BLOB_DATA, BLOB_HEIGHT, BLOB_NUM, BLOB_SHAPE, BLOB_WIDTH, LAYER_BLOBS,
    NET_LAYER, NET_LAYERS_V1, V1_BLOBS,
)
from senet.converter.protowire import LEN, VARINT, encode_varint, field_key
from senet.files import atomic_output


def encode_blob(array: np.ndarray, legacy_4d: bool = False) -> list[bytes]:
    """BlobProto bytes for an array, as chunks (the float payload is not copied into a new
    buffer beyond one little-endian float32 conversion)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    header = bytearray()
    if legacy_4d:
        dims = [1] * (4 - data.ndim) + list(data.shape)
        if len(dims) != 4:
            raise ValueError("legacy blobs are at most 4-D")
        for number, d in zip((BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH), dims):
            header += field_key(number, VARINT) + encode_varint(int(d))
    else:
        packed = b"".join(encode_varint(int(d)) for d in data.shape)
        shape_msg = field_key(1, LEN) + encode_varint(len(packed)) + packed if data.ndim else b""
        header += field_key(BLOB_SHAPE, LEN) + encode_varint(len(shape_msg)) + shape_msg
    payload = memoryview(data).cast("B")
    header += field_key(BLOB_DATA, LEN) + encode_varint(payload.nbytes)
    return [bytes(header), payload]


def write_caffemodel(path: str | os.PathLike, net: pb.NetParameter,
                     blobs: dict[str, list[np.ndarray]], v1: bool = False,
                     legacy_blobs: bool = False) -> None:
    """Write a .caffemodel: `net`'s layers with `blobs[layer name]` attached.

    Blob bytes are streamed straight from the arrays, to a temporary file renamed when complete. With ``v1`` the layers are written in the
    V1 `layers` format (net must then hold V1LayerParameter entries in `net.layers`).
    """
    head = pb.NetParameter()
    head.CopyFrom(net)
    head.ClearField("layer")
    head.ClearField("layers")
    entries = net.layers if v1 else net.layer
    number, blob_field = (NET_LAYERS_V1, V1_BLOBS) if v1 else (NET_LAYER, LAYER_BLOBS)
    with atomic_output(path) as tmp, open(tmp, "wb") as out:
        out.write(head.SerializeToString())
        for entry in entries:
            body = entry.SerializeToString()
            chunks = []
            for array in blobs.get(entry.name, []):
                blob_chunks = encode_blob(array, legacy_4d=legacy_blobs)
                size = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in blob_chunks)
                chunks.append(field_key(blob_field, LEN) + encode_varint(size))
                chunks.extend(blob_chunks)
            total = len(body) + sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)
            out.write(field_key(number, LEN) + encode_varint(total))
            out.write(body)
            for c in chunks:
                out.write(c)
