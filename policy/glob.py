"""Tool-pattern matching.

Two matchers, as in the reference engine:

* ``compile_glob`` follows Go's ``path.Match``: ``*`` matches any run of
  characters except ``/``, ``?`` one character except ``/``, ``[...]`` is a
  character class (``[^...]`` negates, ``a-z`` ranges, ``\\`` escapes) and
  ``\\x`` is a literal ``x``. A lone ``*`` matches everything. A malformed
  pattern falls back to a prefix match on the text before its first ``*``
  (exact match when it has none).
* ``compile_visibility`` is the phase-visibility matcher: a trailing ``*`` is
  a plain prefix match (it may cross ``/``), anything else is exact.

Patterns are compiled once into a plain ``str -> bool`` callable. Common shapes
(literal, ``*``, ``prefix*``, ``*suffix``) avoid regular expressions entirely;
others become an anchored regex. A segment with two or more stars goes to RE2
so that a hostile name cannot make the match backtrack exponentially.
"""

from __future__ import annotations

import re
from typing import Callable

import re2

Matcher = Callable[[str], bool]

_META = frozenset("*?[\\")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True


class BadPattern(ValueError):
    """The pattern is not valid ``path.Match`` syntax."""


class PatternTooLarge(ValueError):
    """RE2 cannot compile the pattern within its memory budget (many stars in a long segment)."""


def has_meta(pattern: str) -> bool:
    """True when ``pattern`` uses any glob syntax."""
    return any(ch in _META for ch in pattern)


def _match_all(_name: str) -> bool:
    return True


def _match_none(_name: str) -> bool:
    return False


def _read_class_char(pattern: str, i: int) -> tuple[str, int]:
    """One (possibly escaped) character of a class, as Go's ``getEsc``."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise BadPattern("bad character class")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise BadPattern("trailing backslash in class")
    return pattern[i], i + 1


def _class_to_regex(pattern: str, i: int) -> tuple[str | None, int]:
    """Translate the class starting after ``[`` at ``i``; None if it can never match."""
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if i < len(pattern) and pattern[i] == "]" and ranges:
            i += 1
            break
        lo, i = _read_class_char(pattern, i)
        hi = lo
        if i < len(pattern) and pattern[i] == "-":
            hi, i = _read_class_char(pattern, i + 1)
        ranges.append((lo, hi))
    usable = [(lo, hi) for lo, hi in ranges if lo <= hi]  # Go: an inverted range matches nothing
    if not usable:
        return ("(?s:.)" if negated else None), i
    body = "".join(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}" for lo, hi in usable)
    return f"[{'^' if negated else ''}{body}]", i


def glob_to_regex(pattern: str) -> str | None:
    """An anchored-by-caller regex equal to ``path.Match(pattern, ·)``; None if nothing matches.

    Raises BadPattern for malformed syntax (Go's ``ErrBadPattern``)."""
    out: list[str] = []
    never = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            cls, i = _class_to_regex(pattern, i + 1)
            never = never or cls is None
            out.append(cls or "")
        elif ch == "\\":
            if i + 1 >= len(pattern):
                raise BadPattern("trailing backslash")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(ch))
            i += 1
    return None if never else "".join(out)


def _fallback(pattern: str) -> Matcher:
    """The reference's behaviour for malformed patterns: prefix before ``*``."""
    star = pattern.find("*")
    if star < 0:
        return pattern.__eq__
    prefix = pattern[:star]
    return lambda name: name.startswith(prefix)


def _simple_shape(pattern: str) -> Matcher | None:
    """Fast matchers for literal, ``prefix*`` and ``*suffix`` patterns."""
    if not has_meta(pattern):
        return pattern.__eq__
    if pattern == "*":
        return _match_all
    body = pattern[:-1]
    if pattern.endswith("*") and not has_meta(body):
        cut = len(body)
        return lambda name: name.startswith(body) and name.find("/", cut) < 0
    tail = pattern[1:]
    if pattern.startswith("*") and not has_meta(tail):
        return lambda name: name.endswith(tail) and name.rfind("/", 0, len(name) - len(tail)) < 0
    return None


def _needs_re2(pattern: str) -> bool:
    return any(segment.count("*") > 1 for segment in pattern.split("/"))


def compile_glob(pattern: str) -> Matcher:
    """Compile ``pattern`` once; the result answers ``path.Match(pattern, name)``.

    Raises PatternTooLarge when RE2 cannot compile it (the policy compiler reports E324)."""
    simple = _simple_shape(pattern)
    if simple is not None:
        return simple
    try:
        regex = glob_to_regex(pattern)
    except BadPattern:
        return _fallback(pattern)
    if regex is None:
        return _match_none
    if _needs_re2(pattern):
        compiled = re2._re2.RE2(regex.encode(), _RE2_OPTIONS)
        if not compiled.ok():  # its Match would return nothing: refuse here, not on every call
            raise PatternTooLarge(f"pattern of {len(pattern)} characters is too large to match "
                                  f"({compiled.error()[:80]})")
        both = compiled.Anchor.ANCHOR_BOTH
        match = compiled.Match

        def re2_matcher(name: str) -> bool:
            data = name.encode("utf-8", "surrogatepass")
            return match(both, data, 0, len(data))[0][0] >= 0

        return re2_matcher
    fullmatch = re.compile(regex, re.DOTALL).fullmatch
    return lambda name: fullmatch(name) is not None


def is_valid_glob(pattern: str) -> bool:
    """False when ``path.Match`` would report ErrBadPattern."""
    try:
        glob_to_regex(pattern)
    except BadPattern:
        return False
    return True


def compile_visibility(pattern: str) -> Matcher:
    """Phase visibility: ``prefix*`` is a prefix match across ``/``, else exact."""
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return lambda name: name.startswith(prefix)
    return pattern.__eq__


_cache: dict[str, Matcher] = {}


def glob_match(pattern: str, name: str) -> bool:
    """One-off ``path.Match`` with a small cache of compiled patterns."""
    matcher = _cache.get(pattern)
    if matcher is None:
        if len(_cache) > 1024:
            _cache.clear()
        matcher = _cache[pattern] = compile_glob(pattern)
    return matcher(name)
