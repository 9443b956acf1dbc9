"""A small, schema-free parser for protobuf text format as written in Caffe prototxts.

Every message becomes a ``dict`` mapping each field name to a *list* of its
values in the order they appear (every field is treated as repeated, because
without the schema we cannot know which ones are).  Nested messages become
dicts of the same kind.  Scalars are typed by their spelling:

- quoted strings ('...' or "...", adjacent ones concatenated)  -> ``str``
- integers (decimal, 0x hex, leading-0 octal)                  -> ``int``
- floats (``1.5``, ``1e-5``, ``.5``, ``2.f``, ``inf``, ``nan``) -> ``float``
- ``true`` / ``false`` (also ``True`` / ``False``)             -> ``bool``
- any other bare identifier (enum values such as ``MAX``)      -> ``str``
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["PrototxtError", "parse_prototxt", "get", "get_all"]


class PrototxtError(ValueError):
    """Raised for text that is not valid protobuf text format."""


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+
                   |(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fF]?))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<extension>\[[A-Za-z0-9_./]+\])
  | (?P<punct>[{}<>:\[\],;])
    """,
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"',
            "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}

_CLOSE = {"{": "}", "<": ">"}


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """Split ``text`` into (kind, text, line) tokens, dropping blanks and comments."""
    tokens = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise PrototxtError(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind not in ("ws", "comment"):
            tokens.append((kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return tokens


def _unquote(token: str) -> str:
    """Decode one quoted string token, honouring C-style escapes."""
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        else:  # octal escape, 1-3 digits
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            if m is None:
                raise PrototxtError(f"bad escape in {token}")
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
    return "".join(out)


def _number(text: str) -> int | float:
    """Convert a number token to int or float by its spelling."""
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text)
    if body[:2] in ("0x", "0X"):
        return sign * int(body, 16)
    if re.fullmatch(r"0[0-7]+", body):
        return sign * int(body, 8)
    if re.fullmatch(r"\d+", body):
        return sign * int(body)
    return sign * float(body.rstrip("fF"))


_SPECIAL_IDENTS = {
    "true": True, "True": True, "false": False, "False": False,
    "inf": math.inf, "-inf": -math.inf, "infinity": math.inf, "-infinity": -math.inf,
    "nan": math.nan, "-nan": math.nan,
}


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.pos = 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> tuple[str, str, int]:
        tok = self._peek()
        if tok is None:
            raise PrototxtError("unexpected end of input")
        self.pos += 1
        return tok

    def _error(self, tok, what: str) -> PrototxtError:
        return PrototxtError(f"line {tok[2]}: expected {what}, got {tok[1]!r}")

    def message(self, closer: str | None) -> dict[str, list[Any]]:
        """Parse fields until ``closer`` (or end of input when None)."""
        msg: dict[str, list[Any]] = {}
        while True:
            tok = self._peek()
            if tok is None:
                if closer is not None:
                    raise PrototxtError(f"missing {closer!r} at end of input")
                return msg
            if tok[0] == "punct" and tok[1] == closer:
                self.pos += 1
                return msg
            if tok[0] == "punct" and tok[1] in ",;":
                self.pos += 1  # optional field separators
                continue
            self.field(msg)

    def field(self, msg: dict[str, list[Any]]) -> None:
        """Parse one ``name: value``, ``name { ... }`` or ``name: [v, ...]``."""
        tok = self._next()
        if tok[0] not in ("ident", "extension") or tok[1].startswith("-"):
            raise self._error(tok, "a field name")
        values = msg.setdefault(tok[1], [])
        nxt = self._peek()
        has_colon = nxt is not None and nxt[1] == ":"
        if has_colon:
            self.pos += 1
            nxt = self._peek()
        if nxt is not None and nxt[0] == "punct" and nxt[1] in _CLOSE:
            self.pos += 1
            values.append(self.message(_CLOSE[nxt[1]]))
        elif not has_colon:
            raise self._error(nxt or tok, "':' or '{'")
        elif nxt is not None and nxt[1] == "[":
            self.pos += 1
            values.extend(self.list_values())
        else:
            values.append(self.scalar())

    def list_values(self) -> list[Any]:
        """Parse the short repeated form ``[a, b, {..}]`` after its '['."""
        out: list[Any] = []
        while True:
            tok = self._peek()
            if tok is not None and tok[1] == "]":
                self.pos += 1
                return out
            if out:
                sep = self._next()
                if sep[1] != ",":
                    raise self._error(sep, "',' or ']'")
            tok = self._peek()
            if tok is not None and tok[1] in _CLOSE:
                self.pos += 1
                out.append(self.message(_CLOSE[tok[1]]))
            else:
                out.append(self.scalar())

    def scalar(self) -> Any:
        """Parse one scalar value: string(s), number, bool or enum identifier."""
        tok = self._next()
        kind, text = tok[0], tok[1]
        if kind == "string":
            parts = [_unquote(text)]
            while (nxt := self._peek()) is not None and nxt[0] == "string":
                parts.append(_unquote(self._next()[1]))
            return "".join(parts)
        if kind == "number":
            return _number(text)
        if kind == "ident":
            if text in _SPECIAL_IDENTS or text.lower() in ("inf", "-inf", "nan", "-nan"):
                return _SPECIAL_IDENTS.get(text, _SPECIAL_IDENTS.get(text.lower()))
            if text.startswith("-"):
                raise self._error(tok, "a value")
            return text
        raise self._error(tok, "a value")


def parse_prototxt(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into nested dicts of field name -> list of values.

    Raises ``PrototxtError`` (a ``ValueError``) with a line number on malformed input.
    """
    return _Parser(text).message(None)


def get(msg: dict[str, list[Any]], key: str, default: Any = None) -> Any:
    """Return the first value of ``key`` in ``msg``, or ``default`` when absent."""
    values = msg.get(key)
    return values[0] if values else default


def get_all(msg: dict[str, list[Any]], key: str) -> list[Any]:
    """Return every value of ``key`` in ``msg`` (an empty list when absent)."""
    return list(msg.get(key, []))
