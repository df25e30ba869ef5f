"""Canonical forms of tool ids and arguments, applied before any matching.

Strings are trimmed, stripped of invisible characters (zero-width, soft hyphen,
BOM), NFKC-normalised and have Cyrillic/Greek look-alikes mapped to Latin, so
that ``ѕhell/exec`` (Cyrillic ``ѕ``) meets the rules written for ``shell/exec``.
Tool ids additionally collapse ``//`` and lose leading ``./`` and ``../``.
Arguments drop keys whose value is None; floats keep 6 significant figures and
NaN/Inf become 0. A NUL byte anywhere makes the call undecidable: callers deny it.
Plain printable ASCII takes a fast path that allocates nothing.
"""

from __future__ import annotations

import math
import unicodedata

# Characters that render as nothing and are used to split keywords.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff"))

# Cyrillic and Greek letters that look like Latin ones (after NFKC).
_CONFUSABLES = {
    # Cyrillic lower case
    "а": "a", "в": "b", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ӏ": "l", "ь": "b", "ɡ": "g",
    # Cyrillic upper case
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԁ": "D", "Ԛ": "Q", "Ԝ": "W",
    "Ү": "Y", "Һ": "H", "Ӏ": "I",
    # Greek lower case
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "τ": "t", "υ": "u", "χ": "x",
    "ϲ": "c", "ϳ": "j", "ε": "e", "η": "n", "μ": "u", "ω": "w",
    # Greek upper case
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C",
}
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLES)


class NulByte(ValueError):
    """A NUL byte was found in a tool id or an argument."""


def _plain(text: str) -> bool:
    """Printable ASCII with nothing to trim: already canonical as an argument."""
    return text.isascii() and text.isprintable() and (not text or (text[0] > " " and text[-1] > " "))


def canonical_text(text: str) -> str:
    """Trim, drop invisible characters, NFKC, map look-alikes to Latin."""
    if _plain(text):
        return text
    if "\x00" in text:
        raise NulByte("NUL byte in text")
    text = text.strip().translate(_INVISIBLE)
    text = unicodedata.normalize("NFKC", text).translate(_CONFUSABLE_TABLE)
    return text.strip()


def canonical_tool(tool: str) -> str:
    """The canonical tool id (see module docstring). Raises NulByte."""
    if _plain(tool) and "//" not in tool and not tool.startswith("."):
        return tool
    tool = canonical_text(tool)
    while "//" in tool:
        tool = tool.replace("//", "/")
    while True:
        if tool.startswith("./"):
            tool = tool[2:]
        elif tool.startswith("../"):
            tool = tool[3:]
        else:
            return tool


def canonical_number(value: float) -> float:
    """6 significant figures; NaN and infinities become 0."""
    if math.isnan(value) or math.isinf(value):
        return 0.0
    return float(f"{value:.6g}")


def _canonical_value(value: object) -> object:
    kind = type(value)
    if kind is str:
        return canonical_text(value)  # type: ignore[arg-type]
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return canonical_number(value)  # type: ignore[arg-type]
    if isinstance(value, dict):
        return canonical_args(value)
    if isinstance(value, (list, tuple)):
        return [_canonical_value(item) for item in value if item is not None]
    if isinstance(value, (bytes, bytearray)):
        if 0 in value:
            raise NulByte("NUL byte in bytes argument")
        return canonical_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return canonical_number(float(value))
    return canonical_text(str(value))


def canonical_args(args: dict) -> dict:
    """Canonical copy of ``args`` (or ``args`` itself when already canonical). Raises NulByte.

    Flat maps of plain ASCII strings, ints and bools are returned as they are."""
    for key, value in args.items():
        if type(key) is not str or not (key.isascii() and key.isidentifier()):
            break
        kind = type(value)
        if kind is str:
            if value and not (value.isascii() and value.isprintable() and value[0] > " " and value[-1] > " "):
                break
        elif kind is not int and kind is not bool:
            break
    else:
        return args
    out: dict = {}
    for key, value in args.items():
        name = canonical_text(key) if type(key) is str else canonical_text(str(key))  # NUL check first
        if value is not None:
            out[name] = _canonical_value(value)
    return out


def literal_args(args: dict) -> dict:
    """``args`` with the structure of ``canonical_args`` (nil dropped, bytes decoded, tuples
    as lists) but text and numbers exactly as written. Call only after ``canonical_args``
    accepted ``args`` (no NUL bytes)."""
    return {str(key): _literal_value(value) for key, value in args.items() if value is not None}


def _literal_value(value: object) -> object:
    if isinstance(value, dict):
        return literal_args(value)
    if isinstance(value, (list, tuple)):
        return [_literal_value(item) for item in value if item is not None]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if type(value) in (str, int, float, bool):
        return value
    return str(value)
