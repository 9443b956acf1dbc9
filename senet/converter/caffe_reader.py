"""Reading binary .caffemodel files: layers and their blobs as NumPy arrays.

Binary files are walked at the wire level: each layer's parameters are parsed with our own
caffe.proto, but blob payloads are never copied through protobuf. A blob's packed floats become a
zero-copy NumPy view of the memory-mapped file, so a 440 MB SENet-154 costs one pass over the page
cache and no second copy (peers that parse everything with protobuf, or with stale pure-Python
generated code, need seconds to minutes and 3x the memory).

The types every Caffe file becomes (`CaffeFile`, `RawLayer`, `MappedFile`) live here; the
prototxt reader and the caffemodel writer share them and the field numbers below.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from senet.converter import caffe_pb2 as pb
from senet.converter.protowire import I32, I64, LEN, VARINT
from senet.errors import CaffeFormatError


# Field numbers of Caffe's caffe.proto that the reader walks and the writer streams by hand.
NET_LAYER, NET_LAYERS_V1 = 100, 2
LAYER_BLOBS, V1_BLOBS, V1_V0LAYER = 7, 6, 1
V0_BLOBS = 50
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
BLOB_RAW_TYPE, BLOB_RAW_DATA = 10, 12

_MAX_DIMS = 32
_MAX_ELEMENTS = 1 << 40


@dataclass
class RawLayer:
    """One layer as stored: its parameters (V1/V0 already upgraded) and its blobs."""

    param: pb.LayerParameter
    blobs: list[np.ndarray] = field(default_factory=list)
    # Stored shape of each blob as written (legacy 4-D or N-D); used to report mismatches.
    legacy: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class MappedFile:
    """A file mapped read-only into memory; arrays viewing it can be copied file to file."""

    path: str
    address: int
    size: int

    def offset_of(self, array: np.ndarray) -> int | None:
        """Byte offset in the file of a C-contiguous little-endian float32 array viewing the
        mapping, or None if the array is anything else."""
        if array.dtype != np.dtype("<f4") or not array.flags.c_contiguous or array.size == 0:
            return None
        start = array.__array_interface__["data"][0] - self.address
        if 0 <= start and start + array.nbytes <= self.size:
            return start
        return None


@dataclass
class CaffeFile:
    """A parsed Caffe file: net-level fields plus the ordered layers."""

    net: pb.NetParameter          # net-level fields only; layers live in `layers`
    layers: list[RawLayer]
    path: str
    format: str                   # "V2", "V1" or "V0"
    mapped: MappedFile | None = None  # set when blobs are views of the mapped file
    # Binary only: (layer name, None for the net, "Message field N") for each stored field our
    # schema lacks (a fork's).
    unknown_fields: list[tuple[str | None, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------- wire walking

def _read_varint(buf, pos: int, end: int, where: str) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise CaffeFormatError(f"truncated varint at byte {pos}", where=where,
                                   hint="the file is cut short or is not a Caffe model")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffeFormatError(f"malformed varint at byte {pos}", where=where)


def _fields(buf, start: int, end: int, where: str):
    """Yield (field_number, wire_type, value_start, value_end, varint_value) over a message."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos, end, where)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffeFormatError(f"invalid field number 0 at byte {pos}", where=where,
                                   hint="not a protobuf message")
        if wire == VARINT:
            value, new = _read_varint(buf, pos, end, where)
            yield number, wire, pos, new, value
            pos = new
        elif wire == LEN:
            length, vstart = _read_varint(buf, pos, end, where)
            vend = vstart + length
            if vend > end:
                raise CaffeFormatError(
                    f"field {number} at byte {pos} claims {length} bytes but only "
                    f"{end - vstart} remain", where=where, hint="the file is truncated")
            yield number, wire, vstart, vend, None
            pos = vend
        elif wire == I64 or wire == I32:
            size = 8 if wire == I64 else 4
            if pos + size > end:
                raise CaffeFormatError(f"truncated fixed-size field at byte {pos}", where=where)
            yield number, wire, pos, pos + size, None
            pos += size
        else:
            raise CaffeFormatError(f"unsupported wire type {wire} at byte {pos}", where=where,
                                   hint="not a Caffe model (groups or garbage bytes)")


def decode_blob(buf, start: int, end: int, where: str) -> tuple[np.ndarray, bool]:
    """One BlobProto as an array (a view of `buf` when stored as packed float32), and whether
    its shape was stored the legacy way (num/channels/height/width, not `shape`)."""
    legacy = [0, 0, 0, 0]
    legacy_seen = False
    shape: list[int] | None = None
    data = None
    loose_floats: list[tuple[int, int]] = []
    raw_type = None
    raw = None
    for number, wire, vs, ve, value in _fields(buf, start, end, where):
        if number in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH) and wire == VARINT:
            legacy[number - 1] = _as_int32(value)
            legacy_seen = True
        elif number == BLOB_SHAPE and wire == LEN:
            shape = _decode_shape(buf, vs, ve, where)
        elif number == BLOB_DATA and wire == LEN:
            if (ve - vs) % 4:
                raise CaffeFormatError(f"blob float data of {ve - vs} bytes is not a multiple of 4",
                                       where=where)
            data = np.frombuffer(buf, dtype="<f4", count=(ve - vs) // 4, offset=vs)
        elif number == BLOB_DATA and wire == I32:
            loose_floats.append((vs, ve))
        elif number == BLOB_DOUBLE_DATA and wire == LEN:
            if (ve - vs) % 8:
                raise CaffeFormatError("blob double data length is not a multiple of 8",
                                       where=where)
            data = np.frombuffer(buf, dtype="<f8", count=(ve - vs) // 8, offset=vs)
        elif number == BLOB_RAW_TYPE and wire == VARINT:
            raw_type = value
        elif number == BLOB_RAW_DATA and wire == LEN:
            raw = (vs, ve)
    if loose_floats:  # unpacked encoding: legal protobuf, rare in practice
        data = np.array([struct.unpack_from("<f", buf, s)[0] for s, _ in loose_floats], "<f4")
    if raw is not None and data is None:
        data = _decode_raw(buf, raw, raw_type, where)
    # Caffe's Blob::FromProto: any of num/channels/height/width makes the shape the legacy
    # 4-D one; otherwise it is `shape`, and a blob without either is a 0-axis scalar (what
    # Caffe writes for a scalar, e.g. Scale with num_axes 0 or a channel-shared PReLU slope).
    is_legacy = legacy_seen
    dims = legacy if legacy_seen else (shape or [])
    count = _checked_count(dims, where)
    if data is None:
        data = np.zeros(0, dtype="<f4")
    if data.size != count:
        raise CaffeFormatError(
            f"blob holds {data.size} values but its shape {list(dims)} needs {count}",
            where=where)
    return data.reshape(dims), is_legacy


def _decode_raw(buf, span, raw_type, where):
    kinds = {pb.FLOAT: "<f4", pb.FLOAT16: "<f2", pb.DOUBLE: "<f8"}
    if raw_type not in kinds:
        raise CaffeFormatError(f"blob raw_data of type {raw_type} is not a floating type",
                               where=where)
    itemsize = np.dtype(kinds[raw_type]).itemsize
    vs, ve = span
    if (ve - vs) % itemsize:
        raise CaffeFormatError("blob raw_data length does not fit its type", where=where)
    return np.frombuffer(buf, dtype=kinds[raw_type], count=(ve - vs) // itemsize, offset=vs)


def _decode_shape(buf, start, end, where) -> list[int]:
    dims: list[int] = []
    for number, wire, vs, ve, value in _fields(buf, start, end, where):
        if number != 1:
            continue
        if wire == VARINT:
            dims.append(_as_int64(value))
        elif wire == LEN:
            pos = vs
            while pos < ve:
                v, pos = _read_varint(buf, pos, ve, where)
                dims.append(_as_int64(v))
    if len(dims) > _MAX_DIMS:
        raise CaffeFormatError(f"blob shape has {len(dims)} axes", where=where)
    return dims


def _checked_count(dims, where) -> int:
    count = 1
    for d in dims:
        if d < 0:
            raise CaffeFormatError(f"blob shape {list(dims)} has a negative dimension",
                                   where=where)
        count *= d
        if count > _MAX_ELEMENTS:
            raise CaffeFormatError(f"blob shape {list(dims)} is impossibly large", where=where)
    return count


def _as_int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _as_int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _split_message(buf, start, end, blob_field, where):
    """Bytes of a layer message without its blob fields, and the blob spans."""
    kept = bytearray()
    blob_spans = []
    nested_v0 = None
    pos = start
    for number, wire, vs, ve, _ in _fields(buf, start, end, where):
        if number == blob_field and wire == LEN:
            blob_spans.append((vs, ve))
        else:
            if blob_field == V1_BLOBS and number == V1_V0LAYER and wire == LEN:
                nested_v0 = (vs, ve)
            kept += buf[pos:ve]
        pos = ve
    return bytes(kept), blob_spans, nested_v0


# ----------------------------------------------------------------------------- reading

def read_caffemodel(path: str | os.PathLike) -> CaffeFile:
    """Read a binary .caffemodel (V2 `layer`, V1 `layers`, or V0 nested layers)."""
    path = str(path)
    try:
        fd = open(path, "rb")
    except FileNotFoundError:
        raise CaffeFormatError("file not found", where=path) from None
    except OSError as exc:
        raise CaffeFormatError(f"cannot open: {exc.strerror}", where=path) from None
    with fd:
        size = os.fstat(fd.fileno()).st_size
        if size == 0:
            raise CaffeFormatError("file is empty", where=path)
        buf = mmap.mmap(fd.fileno(), 0, access=mmap.ACCESS_READ)
    parsed = parse_caffemodel_bytes(buf, path)
    address = np.frombuffer(buf, dtype=np.uint8, count=1).__array_interface__["data"][0]
    parsed.mapped = MappedFile(path=path, address=address, size=size)
    return parsed


def parse_caffemodel_bytes(buf, path: str = "<bytes>") -> CaffeFile:
    """Parse caffemodel bytes (bytes, bytearray or mmap); blobs may be views of `buf`."""
    _reject_hdf5(buf[:8], path)
    try:
        return _parse_net(buf, path)
    except CaffeFormatError:
        # Only bytes that are no binary net are sniffed for text: a binary net can start
        # like text (a name of 35 bytes is stored as "\n#<name>").
        from senet.converter.prototxt import looks_like_prototxt
        if looks_like_prototxt(buf[:64]):
            raise CaffeFormatError("a text prototxt, not a binary .caffemodel: it holds no "
                                   "weights to convert", where=path,
                                   hint="pass it with --prototxt beside the .caffemodel; "
                                        "--inspect reads a prototxt alone") from None
        raise


def _parse_net(buf, path: str) -> CaffeFile:
    net_rest = bytearray()
    layers: list[RawLayer] = []
    formats = set()
    pos = 0
    for number, wire, vs, ve, _ in _fields(buf, 0, len(buf), path):
        if number == NET_LAYER and wire == LEN:
            formats.add("V2")
            layers.append(_read_layer(buf, vs, ve, path, len(layers)))
        elif number == NET_LAYERS_V1 and wire == LEN:
            layers.append(_read_v1_layer(buf, vs, ve, path, len(layers), formats))
        else:
            net_rest += buf[pos:ve]
        pos = ve
    try:
        net = pb.NetParameter.FromString(bytes(net_rest))
    except DecodeError as exc:
        raise CaffeFormatError(f"not a Caffe net ({exc})", where=path) from None
    _check_text(net, path)
    if not layers:
        raise CaffeFormatError("no layers found", where=path,
                               hint="not a .caffemodel (a protobuf that is not a Caffe net?)")
    if len(formats) > 1 and "V2" in formats:
        raise CaffeFormatError("file mixes V2 `layer` and V1 `layers` entries", where=path)
    fmt = "V0" if "V0" in formats else ("V1" if "V1" in formats else "V2")
    unknown = [(None, name) for name in _unknown_fields(net)]
    unknown += [(raw.param.name, name) for raw in layers for name in _unknown_fields(raw.param)]
    return CaffeFile(net=net, layers=layers, path=path, format=fmt, unknown_fields=unknown)


def _reject_hdf5(head: bytes, path: str) -> None:
    if bytes(head).startswith(b"\x89HDF\r\n\x1a\n"):
        raise CaffeFormatError("an HDF5 snapshot (snapshot_format: HDF5), not a binary "
                               ".caffemodel", where=path,
                               hint="senet reads the protobuf format Caffe writes by default")


def _read_layer(buf, start, end, path, index) -> RawLayer:
    where = f"{path}: layer #{index} at byte {start}"
    kept, spans, _ = _split_message(buf, start, end, LAYER_BLOBS, where)
    param = _read_reused_numbers(_parse_params(pb.LayerParameter, kept, where), kept, where)
    return _with_blobs(param, buf, spans, f"{path}: layer '{param.name}'")


def _read_v1_layer(buf, start, end, path, index, formats) -> RawLayer:
    where = f"{path}: layer #{index} at byte {start}"
    kept, spans, nested = _split_message(buf, start, end, V1_BLOBS, where)
    v1 = _parse_params(pb.V1LayerParameter, kept, where)
    if nested is not None and v1.HasField("layer"):
        formats.add("V0")
        _, v0_spans, _ = _split_message(buf, nested[0], nested[1], V0_BLOBS, where)
        spans = spans or v0_spans
    else:
        formats.add("V1")
    from senet.converter.upgrade import upgrade_v1_layer
    param = upgrade_v1_layer(v1, where)
    return _with_blobs(param, buf, spans, f"{path}: layer '{param.name}'")


def _parse_params(message_type, data: bytes, where: str):
    """A layer's parameters (its bytes without the blobs) as `message_type`, checked."""
    try:
        message = message_type.FromString(data)
    except DecodeError as exc:
        raise CaffeFormatError(f"layer parameters do not parse ({exc})", where=where) from None
    _check_text(message, where)
    return message


def _check_text(message, where: str) -> None:
    """Reject string fields that are not UTF-8: protobuf parses them (as bytes) and the error
    would surface later, far from the file, as a UnicodeDecodeError or TypeError."""
    for fd, value in message.ListFields():
        if fd.type not in (fd.TYPE_STRING, fd.TYPE_MESSAGE):
            continue
        # is_repeated is protobuf >= 6; label is the older (now removed) spelling
        repeated = (fd.is_repeated if hasattr(fd, "is_repeated")
                    else fd.label == fd.LABEL_REPEATED)
        for item in (value if repeated else (value,)):
            if fd.type == fd.TYPE_MESSAGE:
                _check_text(item, where)
            elif not isinstance(item, str):
                raise CaffeFormatError(
                    f"field '{fd.name}' of {message.DESCRIPTOR.name} is not UTF-8 text",
                    where=where, hint="the file is corrupt")


# ----------------------------------------------------------------------------- fork fields

# LayerParameter numbers that forks give another message than BVLC (caffe.proto's header): the
# layer's type says which the bytes are. PSPNet's BN and SegNet's Upsample write 137 (BVLC
# embed_param), SegNet's DenseImageData 138 (tile_param), DeepLab v2's Interp 143
# (input_param), yjxiong's and PSPNet's ROIPooling 150 (no BVLC field).
_REUSED_NUMBERS = {
    137: {"BN": "bn_param", "Upsample": "upsample_param"},
    138: {"DenseImageData": "dense_image_data_param"},
    143: {"Interp": "interp_param"},
    150: {"ROIPooling": "roi_pooling_param"},
}


def _read_reused_numbers(param: pb.LayerParameter, kept: bytes, where: str
                         ) -> pb.LayerParameter:
    """`param` with each field at a reused number (see _REUSED_NUMBERS) read as the message
    the layer's type gives it, instead of BVLC's reading of the same bytes."""
    if not any(param.type in types for types in _REUSED_NUMBERS.values()):
        return param
    reread, rest, pos = [], bytearray(), 0
    for number, wire, vs, ve, _ in _fields(kept, 0, len(kept), where):
        name = _REUSED_NUMBERS.get(number, {}).get(param.type)
        if name is not None and wire == LEN:
            reread.append((name, number, kept[vs:ve]))
        else:
            rest += kept[pos:ve]
        pos = ve
    if not reread:
        return param
    out = _parse_params(pb.LayerParameter, bytes(rest), where)
    for name, number, data in reread:
        try:
            getattr(out, name).MergeFromString(data)
        except DecodeError as exc:
            raise CaffeFormatError(f"{name} (field {number}) does not parse ({exc})",
                                   where=where) from None
    return out


def _unknown_fields(message) -> list[str]:
    """'Message field N' for every stored field number our schema does not declare, in
    `message` and the messages inside it (a fork's field; protobuf skipped it)."""
    found = [f"{message.DESCRIPTOR.name} field {f.field_number}"
             for f in UnknownFieldSet(message)]
    for fd, value in message.ListFields():
        if fd.type != fd.TYPE_MESSAGE or fd.name == "blobs":
            continue
        repeated = (fd.is_repeated if hasattr(fd, "is_repeated")
                    else fd.label == fd.LABEL_REPEATED)
        for item in (value if repeated else (value,)):
            found += _unknown_fields(item)
    return found


def _with_blobs(param, buf, spans, where) -> RawLayer:
    layer = RawLayer(param=param)
    for k, (vs, ve) in enumerate(spans):
        arr, legacy = decode_blob(buf, vs, ve, f"{where} blob {k}")
        layer.blobs.append(arr)
        layer.legacy.append(legacy)
    return layer
