"""Reading and writing Caffe files: binary .caffemodel, text .prototxt, blobs as NumPy arrays.

Binary files are walked at the wire level: each layer's parameters are parsed with our own
caffe.proto, but blob payloads are never copied through protobuf. A blob's packed floats become a
zero-copy NumPy view of the memory-mapped file, so a 440 MB SENet-154 costs one pass over the page
cache and no second copy (peers that parse everything with protobuf, or with stale pure-Python
generated code, need seconds to minutes and 3x the memory).
"""

from __future__ import annotations

import gzip
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from senet.converter import caffe_pb2 as pb
from senet.converter.protowire import I32, I64, LEN, VARINT, encode_varint, field_key
from senet.errors import CaffeFormatError


# Field numbers we walk by hand (Caffe's caffe.proto).
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
_LAYER_BLOBS, _V1_BLOBS, _V1_V0LAYER = 7, 6, 1
_V0_BLOBS = 50
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_BLOB_RAW_TYPE, _BLOB_RAW_DATA = 10, 12

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


def _decode_blob(buf, start: int, end: int, where: str) -> tuple[np.ndarray, bool]:
    """Turn one BlobProto into an array (a view of `buf` when stored as packed float32)."""
    legacy = [0, 0, 0, 0]
    shape: list[int] | None = None
    data = None
    loose_floats: list[tuple[int, int]] = []
    raw_type = None
    raw = None
    for number, wire, vs, ve, value in _fields(buf, start, end, where):
        if number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) and wire == VARINT:
            legacy[number - 1] = _as_int32(value)
        elif number == _BLOB_SHAPE and wire == LEN:
            shape = _decode_shape(buf, vs, ve, where)
        elif number == _BLOB_DATA and wire == LEN:
            if (ve - vs) % 4:
                raise CaffeFormatError(f"blob float data of {ve - vs} bytes is not a multiple of 4",
                                       where=where)
            data = np.frombuffer(buf, dtype="<f4", count=(ve - vs) // 4, offset=vs)
        elif number == _BLOB_DATA and wire == I32:
            loose_floats.append((vs, ve))
        elif number == _BLOB_DOUBLE_DATA and wire == LEN:
            if (ve - vs) % 8:
                raise CaffeFormatError("blob double data length is not a multiple of 8",
                                       where=where)
            data = np.frombuffer(buf, dtype="<f8", count=(ve - vs) // 8, offset=vs)
        elif number == _BLOB_RAW_TYPE and wire == VARINT:
            raw_type = value
        elif number == _BLOB_RAW_DATA and wire == LEN:
            raw = (vs, ve)
    if loose_floats:  # unpacked encoding: legal protobuf, rare in practice
        data = np.array([struct.unpack_from("<f", buf, s)[0] for s, _ in loose_floats], "<f4")
    if raw is not None and data is None:
        data = _decode_raw(buf, raw, raw_type, where)
    is_legacy = shape is None
    dims = shape if shape is not None else legacy
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
            if blob_field == _V1_BLOBS and number == _V1_V0LAYER and wire == LEN:
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
    _reject_other_formats(buf[:64], path)
    net_rest = bytearray()
    layers: list[RawLayer] = []
    formats = set()
    pos = 0
    for number, wire, vs, ve, _ in _fields(buf, 0, len(buf), path):
        if number == _NET_LAYER and wire == LEN:
            formats.add("V2")
            layers.append(_read_layer(buf, vs, ve, path, len(layers)))
        elif number == _NET_LAYERS_V1 and wire == LEN:
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
    return CaffeFile(net=net, layers=layers, path=path, format=fmt)


def _reject_other_formats(head: bytes, path: str) -> None:
    """Name the format of files that are clearly not a binary Caffe net."""
    head = bytes(head)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise CaffeFormatError("an HDF5 snapshot (snapshot_format: HDF5), not a binary "
                               ".caffemodel", where=path,
                               hint="senet reads the protobuf format Caffe writes by default")
    text = head.lstrip()
    if text[:5] in (b"name:", b"layer", b"input") or text.startswith(b"#"):
        raise CaffeFormatError("a text prototxt, not a binary .caffemodel", where=path,
                               hint="pass it with --prototxt")


def _read_layer(buf, start, end, path, index) -> RawLayer:
    where = f"{path}: layer #{index} at byte {start}"
    kept, spans, _ = _split_message(buf, start, end, _LAYER_BLOBS, where)
    try:
        param = pb.LayerParameter.FromString(kept)
    except DecodeError as exc:
        raise CaffeFormatError(f"layer parameters do not parse ({exc})", where=where) from None
    _check_text(param, where)
    return _with_blobs(param, buf, spans, f"{path}: layer '{param.name}'")


def _read_v1_layer(buf, start, end, path, index, formats) -> RawLayer:
    where = f"{path}: layer #{index} at byte {start}"
    kept, spans, nested = _split_message(buf, start, end, _V1_BLOBS, where)
    try:
        v1 = pb.V1LayerParameter.FromString(kept)
    except DecodeError as exc:
        raise CaffeFormatError(f"layer parameters do not parse ({exc})", where=where) from None
    _check_text(v1, where)
    if nested is not None and v1.HasField("layer"):
        formats.add("V0")
        _, v0_spans, _ = _split_message(buf, nested[0], nested[1], _V0_BLOBS, where)
        spans = spans or v0_spans
    else:
        formats.add("V1")
    from senet.converter.upgrade import upgrade_v1_layer
    param = upgrade_v1_layer(v1, where)
    return _with_blobs(param, buf, spans, f"{path}: layer '{param.name}'")


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


def _with_blobs(param, buf, spans, where) -> RawLayer:
    layer = RawLayer(param=param)
    for k, (vs, ve) in enumerate(spans):
        arr, legacy = _decode_blob(buf, vs, ve, f"{where} blob {k}")
        layer.blobs.append(arr)
        layer.legacy.append(legacy)
    return layer


def read_prototxt(path: str | os.PathLike, allow_unknown_fields: bool = False,
                  warn=None) -> CaffeFile:
    """Read a text .prototxt; an unknown field is an error naming field and line.

    With ``allow_unknown_fields`` it is skipped and reported through ``warn(message)``.
    """
    path = str(path)
    try:
        raw = Path(path).read_bytes()
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8", errors="strict")
    except FileNotFoundError:
        raise CaffeFormatError("file not found", where=path) from None
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise CaffeFormatError("not a valid gzip file", where=path) from None
    except UnicodeDecodeError:
        raise CaffeFormatError("not a text prototxt (not UTF-8)", where=path,
                               hint="a binary .caffemodel given as --prototxt?") from None
    except OSError as exc:
        raise CaffeFormatError(f"cannot read: {exc.strerror}", where=path) from None
    net, unknown = _parse_skipping_unknown_fields(text, path)
    if unknown and not allow_unknown_fields:
        raise CaffeFormatError("; ".join(unknown), where=path,
                               hint="fields from a Caffe fork that senet's schema lacks; "
                                    "--allow-unknown-fields skips them with a warning")
    if unknown and warn:
        warn(f"{path}: ignored unknown fields (--allow-unknown-fields): " + "; ".join(unknown))
    return _from_net_parameter(net, path)


def _parse_skipping_unknown_fields(text: str, path: str, limit: int = 1000
                                   ) -> tuple[pb.NetParameter, list[str]]:
    """The net parsed with every field unknown to our schema skipped, and one
    'line N: ... has no field named X' message per such field, in the order found."""
    found: list[str] = []
    while True:
        net = pb.NetParameter()
        try:
            text_format.Parse(text, net)
            return net, found
        except text_format.ParseError as exc:
            unknown = "has no field named" in str(exc) and exc.GetLine()
            if not unknown or len(found) >= limit:
                raise CaffeFormatError(_describe_parse_error(exc), where=path) from None
            found.append(_describe_parse_error(exc).rstrip("."))
            text = _blank_field(text, exc.GetLine(), exc.GetColumn())


def _blank_field(text: str, line: int, column: int) -> str:
    """Replace the field starting at line:column (name, optional ':', then a scalar, a quoted
    string, a [list] or a {block}) by spaces, keeping newlines so line numbers stay true."""
    lines = text.split("\n")
    start = sum(len(l) + 1 for l in lines[:line - 1]) + column - 1
    pos = start
    n = len(text)
    while pos < n and (text[pos].isalnum() or text[pos] in "_.[]/"):
        pos += 1  # the field name (extensions are bracketed)
    while pos < n and text[pos] in " \t\r\n:":
        pos += 1
    depth, quote = 0, None
    while pos < n:
        ch = text[pos]
        if quote:
            if ch == "\\":
                pos += 1
            elif ch == quote:
                quote = None
                if depth == 0:
                    pos += 1
                    break
        elif ch in "\"'":
            quote = ch
        elif ch in "{[<":
            depth += 1
        elif ch in "}]>":
            depth -= 1
            if depth <= 0:
                pos += 1
                break
        elif depth == 0 and (ch.isspace() or ch in ";,"):
            break
        pos += 1
    return text[:start] + "".join(c if c == "\n" else " " for c in text[start:pos]) + text[pos:]


def _describe_parse_error(exc: text_format.ParseError) -> str:
    line = getattr(exc, "GetLine", lambda: None)()
    message = str(exc)
    # protobuf formats "LINE:COL : message"; keep the message and name the line ourselves.
    if " : " in message:
        message = message.split(" : ", 1)[1]
    message = message.replace('"senet.caffe.', '"').replace("senet.caffe.", "")
    return f"line {line}: {message}" if line else message


def parse_prototxt_text(text: str, path: str = "<text>") -> CaffeFile:
    """Parse prototxt text held in memory (used by tests and the model writer)."""
    net = pb.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        raise CaffeFormatError(_describe_parse_error(exc), where=path) from None
    return _from_net_parameter(net, path)


def _from_net_parameter(net: pb.NetParameter, path: str) -> CaffeFile:
    from senet.converter.upgrade import upgrade_v1_layer
    layers = [RawLayer(param=_copy_layer(lp)) for lp in net.layer]
    fmt = "V2"
    if net.layers:
        if net.layer:
            raise CaffeFormatError("file mixes `layer` and V1 `layers` entries", where=path)
        fmt = "V1"
        layers = [RawLayer(param=upgrade_v1_layer(v1, f"{path}: layer #{i}"))
                  for i, v1 in enumerate(net.layers)]
    for layer in layers:
        for blob in layer.param.blobs:
            arr, legacy = _blob_from_message(blob, f"{path}: layer '{layer.param.name}'")
            layer.blobs.append(arr)
            layer.legacy.append(legacy)
        layer.param.ClearField("blobs")
    rest = pb.NetParameter()
    rest.CopyFrom(net)
    rest.ClearField("layer")
    rest.ClearField("layers")
    return CaffeFile(net=rest, layers=layers, path=path, format=fmt)


def _copy_layer(lp: pb.LayerParameter) -> pb.LayerParameter:
    out = pb.LayerParameter()
    out.CopyFrom(lp)
    return out


def _blob_from_message(blob: pb.BlobProto, where: str) -> tuple[np.ndarray, bool]:
    return _decode_blob(blob.SerializeToString(), 0, blob.ByteSize(), where)


# ----------------------------------------------------------------------------- writing

def encode_blob(array: np.ndarray, legacy_4d: bool = False) -> list[bytes]:
    """BlobProto bytes for an array, as chunks (the float payload is not copied into a new
    buffer beyond one little-endian float32 conversion)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    header = bytearray()
    if legacy_4d:
        dims = [1] * (4 - data.ndim) + list(data.shape)
        if len(dims) != 4:
            raise ValueError("legacy blobs are at most 4-D")
        for number, d in zip((_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH), dims):
            header += field_key(number, VARINT) + encode_varint(int(d))
    else:
        packed = b"".join(encode_varint(int(d)) for d in data.shape)
        shape_msg = field_key(1, LEN) + encode_varint(len(packed)) + packed if data.ndim else b""
        header += field_key(_BLOB_SHAPE, LEN) + encode_varint(len(shape_msg)) + shape_msg
    payload = memoryview(data).cast("B")
    header += field_key(_BLOB_DATA, LEN) + encode_varint(payload.nbytes)
    return [bytes(header), payload]


def write_caffemodel(path: str | os.PathLike, net: pb.NetParameter,
                     blobs: dict[str, list[np.ndarray]], v1: bool = False,
                     legacy_blobs: bool = False) -> None:
    """Write a .caffemodel: `net`'s layers with `blobs[layer name]` attached.

    Blob bytes are streamed straight from the arrays. With ``v1`` the layers are written in the
    V1 `layers` format (net must then hold V1LayerParameter entries in `net.layers`).
    """
    head = pb.NetParameter()
    head.CopyFrom(net)
    head.ClearField("layer")
    head.ClearField("layers")
    entries = net.layers if v1 else net.layer
    number, blob_field = (_NET_LAYERS_V1, _V1_BLOBS) if v1 else (_NET_LAYER, _LAYER_BLOBS)
    with open(path, "wb") as out:
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
