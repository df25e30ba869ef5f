"""Cut a failed FPL item into the pieces that can be parsed on their own.

A skim (strings, comments, braces and words only, no parser) finds where
top-level items, agent statements and rules begin: a start word at brace
depth 0 that opens its line or directly follows ``{`` or ``}``.
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


def pieces(text: str, lo: int, hi: int, start: str) -> list[tuple[int, int, str]]:
    """Sub-ranges of ``text[lo:hi]`` to parse separately, each with its start symbol."""
    level = _LEVELS.get(start)
    if level is None:
        return []
    starts, bodies = level
    cuts, first_word = _cuts(text, lo, hi, starts)
    if len(cuts) > 1 or (cuts and cuts[0] != lo):
        bounds = ([lo] if cuts[0] != lo else []) + cuts + [hi]
        return [(a, b, start) for a, b in zip(bounds, bounds[1:]) if a < b]
    body = bodies.get(first_word)
    if body is None:
        return []
    inner = _body(text, lo, hi)
    if inner is None:
        return []
    a, b = inner
    body_starts, symbol = body
    cuts, _ = _cuts(text, a, b, body_starts)
    bounds = ([a] if not cuts or cuts[0] != a else []) + cuts + [b]
    found = [(x, y, symbol) for x, y in zip(bounds, bounds[1:]) if _has_content(text, x, y)]
    if b < hi and _has_content(text, b + 1, hi):
        found.append((b + 1, hi, start))  # whatever follows the closing brace
    return found


def _has_content(text: str, lo: int, hi: int) -> bool:
    return any(not m.group().isspace() and not m.group().startswith("#")
               for m in _SKIM.finditer(text, lo, hi))


def _cuts(text: str, lo: int, hi: int, starts) -> tuple[list[int], str]:
    """Offsets of piece starts at depth 0, and the first word of the range."""
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
