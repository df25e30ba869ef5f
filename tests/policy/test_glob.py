"""Tool-pattern matching: Go path.Match and phase visibility."""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policy.glob import compile_glob, compile_visibility, glob_match, is_valid_glob

PATH_MATCH_CASES = [
    ("stripe/*", "stripe/refund", True),
    ("stripe/*", "stripe/refund/partial", False),
    ("stripe/*", "stripe/", True),
    ("api/*", "api/users/list", False),
    ("*", "api/users/list", True),
    ("*", "", True),
    ("read_*", "read_file", True),
    ("read_*", "read_", True),
    ("read_*", "read/file", False),
    ("*.go", "main.go", True),
    ("*.go", "cmd/main.go", False),
    ("a*b*c", "axxbyyc", True),
    ("a*b*c", "ax/bc", False),
    ("a*b*c", "abx", False),
    ("*/exec", "shell/exec", True),
    ("*/exec", "a/shell/exec", False),
    ("*/*", "shell/exec", True),
    ("read_?", "read_1", True),
    ("read_?", "read_12", False),
    ("a?b", "a/b", False),
    ("[abc]x", "bx", True),
    ("[abc]x", "dx", False),
    ("[a-c]x", "cx", True),
    ("[^a-c]x", "dx", True),
    ("[^a-c]x", "ax", False),
    ("[\\]]x", "]x", True),
    ("[z-a]x", "zx", False),
    ("\\*", "*", True),
    ("\\*", "x", False),
    ("a\\?", "a?", True),
    ("shell/exec", "shell/exec", True),
    ("shell/exec", "shell/exec2", False),
    ("Shell/exec", "shell/exec", False),
    ("fs/ré*", "fs/réad", True),
]


@pytest.mark.parametrize("pattern,name,expected", PATH_MATCH_CASES)
def test_path_match_semantics(pattern, name, expected):
    """Each pattern matches exactly the names Go's path.Match accepts."""
    assert compile_glob(pattern)(name) is expected
    assert glob_match(pattern, name) is expected


@pytest.mark.parametrize("pattern,name,expected", [
    ("ab[*", "ab[zzz", True),
    ("ab[*", "abzzz", False),
    ("ab[", "ab[", True),
    ("ab[", "ab[x", False),
    ("x\\", "x\\", True),
    ("[]a]", "[]a]", True),
])
def test_malformed_pattern_falls_back_to_prefix(pattern, name, expected):
    """A malformed pattern matches by the prefix before its first star, or exactly without one."""
    assert is_valid_glob(pattern) is False
    assert compile_glob(pattern)(name) is expected


def test_many_stars_stay_fast_on_hostile_names():
    """A segment with several stars uses RE2, so a long non-matching name is still linear."""
    matcher = compile_glob("*a*a*a*a*a*a*b")
    assert matcher("a" * 20000) is False
    assert matcher("a" * 50 + "b") is True


@pytest.mark.parametrize("pattern,name,expected", [
    ("stripe/*", "stripe/refund/partial", True),
    ("stripe/*", "stripe", False),
    ("read_*", "read_customer", True),
    ("read_customer", "read_customer", True),
    ("read_customer", "read_customer/x", False),
    ("*", "anything/at/all", True),
    ("st*pe", "stripe", False),
    ("st*pe", "st*pe", True),
])
def test_phase_visibility_is_prefix_star(pattern, name, expected):
    """Phase visibility: a trailing star is a prefix match across '/', anything else is exact."""
    assert compile_visibility(pattern)(name) is expected


# A direct port of Go's path.Match (match.go), used as the oracle below.
class _Bad(Exception):
    pass


def _get_esc(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise _Bad
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise _Bad
    return chunk[0], chunk[1:]


def _match_chunk(chunk: str, s: str) -> tuple[str, bool]:
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        if chunk[0] == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = bool(chunk) and chunk[0] == "^"
            if negated:
                chunk = chunk[1:]
            matched, nrange = False, 0
            while True:
                if chunk and chunk[0] == "]" and nrange > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _get_esc(chunk)
                hi = lo
                if chunk and chunk[0] == "-":
                    hi, chunk = _get_esc(chunk[1:])
                if lo <= r <= hi:
                    matched = True
                nrange += 1
            if matched == negated:
                failed = True
        elif chunk[0] == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        elif chunk[0] == "\\":
            chunk = chunk[1:]
            if not chunk:
                raise _Bad
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        else:
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
    return (s, not failed) if not failed else ("", False)


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern and pattern[0] == "*":
        pattern, star = pattern[1:], True
    in_range, i = False, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
        elif ch == "[":
            in_range = True
        elif ch == "]":
            in_range = False
        elif ch == "*" and not in_range:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def go_path_match(pattern: str, name: str) -> bool:
    """Go's path.Match; raises _Bad for ErrBadPattern."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name
        t, ok = _match_chunk(chunk, name)
        if ok and (not t or pattern):
            name = t
            continue
        if star:
            i = 0
            while i < len(name) and name[i] != "/":
                t, ok = _match_chunk(chunk, name[i + 1:])
                if ok:
                    if not pattern and t:
                        i += 1
                        continue
                    name = t
                    break
                i += 1
            else:
                return False
            continue
        return False
    return not name


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab/*?[]^-\\", max_size=8), st.text(alphabet="ab/-]^", max_size=8))
def test_matches_a_port_of_go_path_match(pattern, name):
    """On valid patterns, compile_glob agrees with a line-by-line port of Go's path.Match."""
    try:
        expected = go_path_match(pattern, name)
    except (_Bad, IndexError):
        assume(False)
    if pattern == "*":
        expected = True
    assume(is_valid_glob(pattern))
    assert compile_glob(pattern)(name) is expected
