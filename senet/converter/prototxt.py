"""Reading text .prototxt files (plain or gzipped) into the reader's `CaffeFile`.

An unknown field is an error naming field and line, or, when asked, skipped with a warning;
blobs written inline in the text become NumPy arrays as in a binary file.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from senet.converter import caffe_pb2 as pb
from senet.converter.caffe_reader import CaffeFile, RawLayer, decode_blob
from senet.errors import CaffeFormatError


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


# A text file starts, after blanks and comments, with a field name then ':' or '{'.
_TEXT_START = re.compile(rb"\s*(#|[A-Za-z_][A-Za-z0-9_]*\s*[:{])")
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")


def looks_like_prototxt(head: bytes) -> bool:
    """True when the first bytes of a file are protobuf text, not a binary message: they
    start like a text field (or a comment) and hold no control bytes. A binary net opens
    with a length byte (below 0x20 for any name under 32 characters) or a tag byte."""
    head = bytes(head)
    return bool(_TEXT_START.match(head)) and not _BINARY_BYTES.search(head)


def is_prototxt_file(path: str | os.PathLike) -> bool:
    """True when `path` (plain or .gz) reads as a text prototxt; False for a binary file or
    one that cannot be read (the reader then says why)."""
    try:
        with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
            return looks_like_prototxt(f.read(64))
    except (OSError, EOFError, zlib.error):
        return False


# Fork V1 enum names (DeepLab's IMAGE_SEG_DATA, INTERP, ...) ride through the parse in V1's
# unused `param` strings with this prefix; upgrade.py turns them into type strings.
FORK_V1_TYPE = "senet-fork-v1-type:"
_UNKNOWN_V1_TYPE = re.compile(r'V1LayerParameter\.LayerType" has no value named (\w+)')


def _parse_skipping_unknown_fields(text: str, path: str, limit: int = 1000
                                   ) -> tuple[pb.NetParameter, list[str]]:
    """The net parsed with every field unknown to our schema skipped, and one
    'line N: ... has no field named X' message per such field, in the order found.
    A V1 layer type from a fork's enum is kept by name (see FORK_V1_TYPE)."""
    found: list[str] = []
    while True:
        net = pb.NetParameter()
        try:
            text_format.Parse(text, net)
            return net, found
        except text_format.ParseError as exc:
            fork_type = _UNKNOWN_V1_TYPE.search(str(exc))
            if fork_type and exc.GetLine():
                text = _replace_token(text, exc.GetLine(), exc.GetColumn(), fork_type.group(1),
                                      f'NONE param: "{FORK_V1_TYPE}{fork_type.group(1)}"')
                continue
            unknown = "has no field named" in str(exc) and exc.GetLine()
            if not unknown or len(found) >= limit:
                raise CaffeFormatError(_describe_parse_error(exc), where=path) from None
            found.append(_describe_parse_error(exc).rstrip("."))
            text = _blank_field(text, exc.GetLine(), exc.GetColumn())


def _replace_token(text: str, line: int, column: int, token: str, new: str) -> str:
    """`text` with `token`, found at line:column (1-based), replaced by `new` (one line)."""
    lines = text.split("\n")
    start = sum(len(l) + 1 for l in lines[:line - 1]) + column - 1
    if text[start:start + len(token)] != token:
        raise CaffeFormatError(f"line {line}: cannot locate the V1 type '{token}'")
    return text[:start] + new + text[start + len(token):]


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
    return decode_blob(blob.SerializeToString(), 0, blob.ByteSize(), where)
