"""Hostile input: parse returns a Document or raises PolicyError, never anything else, and fast."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import ast
from policy.errors import PolicyError
from policy.parser import parse

CORPUS = (Path(__file__).resolve().parents[2].parent / "shared" / "fpl-corpus").resolve()
SOURCES = [p.read_bytes() for p in sorted(CORPUS.glob("*.fpl")) + sorted(CORPUS.glob("extracted/*.fpl"))]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FPL_ALPHABET = st.sampled_from(list("agent rules permit deny! defer when reason: host: { } ( ) [ ] "
                                    "\" ' # $ 5 m . / * , = ! < > & | ? \n \t args.x and or not in"))


def outcome(data: str | bytes) -> str:
    """'doc' or the sorted error codes; any other exception fails the test."""
    try:
        doc = parse(data, "fuzz.fpl")
    except PolicyError as err:
        assert err.diagnostics, "a PolicyError must carry diagnostics"
        for diag in err.diagnostics:
            assert diag.code.startswith("E") and diag.span.line >= 1 and diag.help
            assert diag.code != "E199", diag.render()  # an internal defect, not a user error
        return ",".join(d.code for d in err.diagnostics)
    assert isinstance(doc, ast.Document)
    return "doc"


def test_corpus_sources_loaded():
    """The fuzz seeds are the 69 corpus files."""
    assert len(SOURCES) >= 69


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data):
    """Random bytes never raise anything but PolicyError."""
    outcome(data)


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text):
    """Random Unicode text never raises anything but PolicyError."""
    outcome(text)


@FUZZ
@given(st.lists(FPL_ALPHABET, max_size=120).map("".join))
def test_random_fpl_like_text(text):
    """Text built from FPL keywords and symbols never raises anything but PolicyError."""
    outcome(text)


@FUZZ
@given(st.sampled_from(SOURCES), st.data())
def test_truncated_corpus_files(source, data):
    """Any prefix of a corpus file parses or fails cleanly."""
    cut = data.draw(st.integers(0, len(source)))
    outcome(source[:cut])


@FUZZ
@given(st.sampled_from(SOURCES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                          min_size=1, max_size=4))
def test_byte_mutations_of_corpus_files(source, edits):
    """Overwriting up to four bytes of a corpus file parses or fails cleanly."""
    data = bytearray(source)
    for where, byte in edits:
        data[where % len(data)] = byte
    outcome(bytes(data))


def test_ten_thousand_nested_parentheses_fail_fast():
    """10k nested parentheses in a condition are E114, without recursion, in under a second."""
    start = time.process_time()
    assert outcome("permit x when " + "(" * 10_000 + "1" + ")" * 10_000) == "E114"
    assert time.process_time() - start < 1.0


def test_ten_thousand_nested_brackets_and_braces():
    """10k nested lists in a setting and 10k nested braces both fail cleanly."""
    assert outcome("runtime { x = " + "[" * 10_000 + "]" * 10_000 + " }") == "E114"
    assert outcome("agent a " + "{" * 10_000 + "}" * 10_000).startswith("E")


def test_long_not_chain_is_bounded():
    """A condition of 50k `not` operators stops at the operator limit (E113)."""
    assert outcome("permit x when " + "not " * 50_000 + "y") == "E113"


def test_two_mebibyte_file_is_rejected_quickly():
    """A 2 MiB file is E115 in well under a second."""
    data = b"permit x\n" * (2 * 1024 * 1024 // 9 + 1)
    start = time.process_time()
    assert outcome(data) == "E115"
    assert time.process_time() - start < 1.0


def test_large_files_parse_in_linear_time():
    """256 KiB of rules parses in seconds, and 4x the text takes well under 16x the time."""
    line = b"deny! shell/exec when args.cmd matches \"rm -rf\" reason: \"never\"\n"
    timings = []
    for size in (64 * 1024, 256 * 1024):
        data = line * (size // len(line))
        start = time.process_time()
        assert len(parse(data).flat_rules) == size // len(line)
        timings.append(time.process_time() - start)
    assert timings[1] < 10.0
    assert timings[1] < 16 * timings[0]


def test_many_errors_are_capped():
    """A file of 5000 broken rules reports at most 50 errors plus an E119 note."""
    found = outcome("permit x when\n" * 5000).split(",")
    assert len(found) == 51
    assert found[-1] == "E119"


def test_errors_spread_through_a_large_file_are_found_in_linear_time():
    """600 broken rules spread over 600 KB cost about one pass: 51 reports in a few seconds of CPU."""
    data = ("agent a {\n rules {\n" + ("permit x when\n" + "permit x\n" * 100) * 600 + "}}\n")
    start = time.process_time()
    found = outcome(data).split(",")
    assert (len(found), found[0], found[-1]) == (51, "E110", "E119")
    assert time.process_time() - start < 10.0
