"""Protobuf wire-format encoding, for the writers that stream large payloads themselves."""

from __future__ import annotations

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def encode_varint(value: int) -> bytes:
    """Base-128 varint; negative values as 64-bit two's complement (protobuf's int32/int64)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_key(number: int, wire: int) -> bytes:
    return encode_varint((number << 3) | wire)


def len_field(number: int, length: int) -> bytes:
    """Key and length prefix of a length-delimited field whose payload follows."""
    return field_key(number, LEN) + encode_varint(length)
