"""Tool-pattern matching: Go path.Match and phase visibility."""

import pytest

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
