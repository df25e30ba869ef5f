"""Canonical tool ids and arguments."""

import math

import pytest

from policy.canonical import NulByte, canonical_args, canonical_number, canonical_text, canonical_tool


@pytest.mark.parametrize("raw,expected", [
    ("shell/exec", "shell/exec"),
    ("  shell/exec\n", "shell/exec"),
    ("\u0455hell/exec", "shell/exec"),  # Cyrillic dze
    ("sh\u0435ll/ex\u0435c", "shell/exec"),  # Cyrillic ie
    ("\u03bfpen", "open"),  # Greek omicron
    ("sh\u200bell/exec", "shell/exec"),
    ("sh\u00adell/exec", "shell/exec"),
    ("\ufeffshell/exec", "shell/exec"),
    ("ｓｈｅｌｌ/exec", "shell/exec"),  # fullwidth, NFKC
    ("shell//exec", "shell/exec"),
    ("shell///exec", "shell/exec"),
    ("./shell/exec", "shell/exec"),
    ("../../shell/exec", "shell/exec"),
    ("Shell/Exec", "Shell/Exec"),
])
def test_canonical_tool(raw, expected):
    """Tool ids are trimmed, de-confused, NFKC'd, and lose // and leading ./ ../."""
    assert canonical_tool(raw) == expected


def test_nul_byte_is_refused_in_tool_and_args():
    """A NUL byte anywhere raises NulByte."""
    with pytest.raises(NulByte):
        canonical_tool("shell/exec\x00")
    with pytest.raises(NulByte):
        canonical_args({"path": "/etc/passwd\x00.txt"})
    with pytest.raises(NulByte):
        canonical_args({"argv": ["ls", "a\x00"]})
    with pytest.raises(NulByte):
        canonical_args({"nested": {"k": "v\x00"}})
    with pytest.raises(NulByte):
        canonical_args({"ke\x00y": None})


def test_args_drop_nil_and_normalise_nested_values():
    """None values vanish, strings are canonical text, floats keep 6 significant figures."""
    out = canonical_args({"a": None, "b": " x ", "c": 1.23456789, "d": [None, "\u0455"], "e": {"f": None, "g": 2}})
    assert out == {"b": "x", "c": 1.23457, "d": ["s"], "e": {"g": 2}}


def test_plain_args_are_returned_without_copying():
    """Already-canonical flat arguments take the fast path and are the same object."""
    args = {"path": "/tmp/x", "count": 3, "flag": True}
    assert canonical_args(args) is args


@pytest.mark.parametrize("value,expected", [
    (float("nan"), 0.0), (float("inf"), 0.0), (-float("inf"), 0.0), (1234567.0, 1234570.0), (0.1 + 0.2, 0.3),
])
def test_canonical_number(value, expected):
    """Floats keep 6 significant figures; NaN and infinities become 0."""
    assert canonical_number(value) == expected
    assert not math.isnan(canonical_number(value))


def test_canonical_text_keeps_ordinary_unicode():
    """Letters that are not look-alikes survive unchanged."""
    assert canonical_text("café") == "café"
    assert canonical_text("日本") == "日本"
