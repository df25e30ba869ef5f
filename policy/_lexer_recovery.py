"""Find the piece of FPL text that holds a syntax error, and what follows it.

A skim (strings, comments, braces and words only, no parser) finds where
top-level items, agent statements and rules begin: a start word at brace
depth 0 that opens its line or directly follows ``{`` or ``}``. The skim stops
at the first piece boundary after the error, so narrowing costs time in
proportion to the text it passes over, not to the whole file.
"""

from __future__ import annotations

import re

from policy._lexer_tables import BLOCK_KEYWORDS, EFFECT_WORDS

_SKIM = re.compile(
    r"\"(?:[^\"\\\n]|\\.)*\"?|'(?:[^'\\\n]|\\.)*'?|#[^\n]*|(\n)|([{}])"
    r"|([A-Za-z_][A-Za-z0-9_]*!?)|[^\s{}\"'#A-Za-z_]+|[ \t\r]+")

_RULE_STARTS = frozenset(EFFECT_WORDS) | {"deny!"}
_TOP_STARTS = _RULE_STARTS | set(BLOCK_KEYWORDS) | {
    "import", "agent", "system", "manifest", "trust"}
_AGENT_STARTS = _RULE_STARTS | set(BLOCK_KEYWORDS) | {
    "default", "model", "framework", "version", "var", "rules", "budget", "phase",
    "delegate", "rate_limit", "redact", "trust"}
_PHASE_STARTS = _RULE_STARTS | {"duration", "next"}

# start symbol -> (words that begin a piece, {keyword: (body start words, body symbol)})
_LEVELS = {
    "document": (_TOP_STARTS, {"agent": (_AGENT_STARTS, "agent_body")}),
    "agent_body": (_AGENT_STARTS, {"rules": (_RULE_STARTS, "rules_body"),
                                   "phase": (_PHASE_STARTS, "phase_body")}),
    "rules_body": (_RULE_STARTS, {}),
    "phase_body": (_PHASE_STARTS, {}),
}


Range = tuple[int, int, str]  # (start offset, end offset, grammar start symbol)


def narrow(text: str, lo: int, hi: int, start: str, offset: int):
    """The piece of ``text[lo:hi]`` (parsed as ``start``) holding ``offset``, and the
    ranges after it still to be read, or None when it cannot be narrowed further."""
    level = _LEVELS.get(start)
    if level is None:
        return None
    starts, bodies = level
    cuts, first_word = _cuts(text, lo, hi, starts, offset)
    before, after = _around(cuts, lo, hi, offset)
    if (before, after) != (lo, hi):
        return (before, after, start), ([(after, hi, start)] if after < hi else [])
    body = bodies.get(first_word)
    inner = _body(text, lo, hi) if body is not None else None
    if inner is None:
        return None
    a, b = inner
    tail = [(b + 1, hi, start)] if b + 1 < hi and _has_content(text, b + 1, hi) else []
    if offset >= b:
        return (tail[0], []) if tail and offset > b else None
    if offset < a:
        return None  # the error is in the item's header
    body_starts, symbol = body
    cuts, _ = _cuts(text, a, b, body_starts, offset)
    before, after = _around(cuts, a, b, offset)
    rest = ([(after, b, symbol)] if after < b else []) + tail
    return (before, after, symbol), rest


def _around(cuts: list[int], lo: int, hi: int, offset: int) -> tuple[int, int]:
    """The piece holding ``offset``. An error on the first token of a piece means
    the piece before it ended too early, so that earlier piece is the one."""
    before = max([lo] + [c for c in cuts if c < offset])
    after = next((c for c in cuts if c > before and c >= offset), hi)
    return before, after


def _has_content(text: str, lo: int, hi: int) -> bool:
    return any(not m.group().isspace() and not m.group().startswith("#")
               for m in _SKIM.finditer(text, lo, hi))


def _cuts(text: str, lo: int, hi: int, starts, offset: int) -> tuple[list[int], str]:
    """Piece starts at depth 0 up to the first one past ``offset``; the range's first word."""
    cuts: list[int] = []
    depth, line_open, first_word = 0, True, ""
    for m in _SKIM.finditer(text, lo, hi):
        newline, brace, word = m.group(1), m.group(2), m.group(3)
        if newline:
            line_open = True
            continue
        if brace:
            depth += 1 if brace == "{" else -1
            line_open = True  # a word right after a brace may start a piece
            continue
        if word and not first_word:
            first_word = word
        if word and depth == 0 and line_open and word in starts:
            cuts.append(m.start())
            if m.start() > offset:
                break
        if not m.group().isspace() and not m.group().startswith("#"):
            line_open = False
    return cuts, first_word


def _body(text: str, lo: int, hi: int) -> tuple[int, int] | None:
    """The range between the first ``{`` of the item and its matching ``}``."""
    depth, open_at = 0, -1
    for m in _SKIM.finditer(text, lo, hi):
        brace = m.group(2)
        if not brace:
            continue
        if brace == "{":
            if depth == 0:
                open_at = m.end()
            depth += 1
        else:
            depth -= 1
            if depth == 0 and open_at >= 0:
                return open_at, m.start()
    return (open_at, hi) if open_at >= 0 else None
