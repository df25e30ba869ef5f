"""Tool patterns in the form the engine matches them: canonical and compilable.

Tool ids are canonicalised before any matching (policy/canonical.py), so a pattern
spelled differently from its canonical form would silently never match. Hence:

- text spellings (fullwidth letters, look-alikes, invisible characters, surrounding
  spaces) name the tool they canonicalise to: the pattern is rewritten, warning W307;
- what no canonical id contains (`//`, a leading `./` or `../`, a NUL byte), or a text
  spelling whose canonical form changes the wildcards (`＊` is `*`), cannot mean
  anything certain: error E323, with the canonical spelling as the hint. Rewriting
  those could widen a permit (`../*` would become `*`);
- a pattern RE2 cannot compile (thousands of stars in one segment) is error E324.
"""

from __future__ import annotations

import dataclasses

from policy import ast
from policy.canonical import NulByte, canonical_text, canonical_tool
from policy.glob import PatternTooLarge, compile_glob

_GLOB_SYNTAX = frozenset("*?[]\\")

# (severity, code, message, help), or None when the pattern is already canonical
Problem = tuple[str, str, str, str]


def _syntax(pattern: str) -> list[str]:
    return [ch for ch in pattern if ch in _GLOB_SYNTAX]


def too_large(pattern: str) -> Problem | None:
    """E324 when ``compile_glob`` cannot compile ``pattern``."""
    try:
        compile_glob(pattern)
    except PatternTooLarge:
        return ("error", "E324", f"tool pattern of {len(pattern)} characters with {pattern.count('*')} "
                "wildcards is too large to match", "split it into shorter patterns with fewer `*`")
    return None


def tool_pattern(pattern: str) -> tuple[str, Problem | None]:
    """The canonical form of a tool pattern, and what is wrong with the pattern as written."""
    try:
        text = canonical_text(pattern)
    except NulByte:
        return pattern, ("error", "E323", "tool pattern contains a NUL byte: it can never match",
                         "remove the NUL byte")
    shown = pattern.encode("unicode_escape").decode("ascii") if not pattern.isprintable() else pattern
    structural = canonical_tool(text)
    if structural != text:
        why = "`//` becomes `/`" if "//" in text else "a leading `./` or `../` is dropped"
        return pattern, ("error", "E323", f"tool pattern `{shown}` can never match: tool ids are "
                         f"canonicalised first ({why})",
                         f"write `{structural}`" if structural else "write the tool id without `./` or `../`")
    if text != pattern and (_syntax(text) != _syntax(pattern) or "\\" in pattern):
        return pattern, ("error", "E323", f"tool pattern `{shown}` is canonicalised to `{text}`, which "
                         "changes its wildcards or escapes", f"write it in ASCII: `{text}` (escape a literal "
                         "`*`, `?` or `[` with \\)")
    problem = too_large(text)
    if problem is None and text != pattern:
        problem = ("warning", "W307", f"tool pattern `{shown}` is matched as `{text}`: tool ids are "
                   "canonicalised first", f"write `{text}`")
    return text, problem


def canonical_patterns(doc: ast.Document, report) -> ast.Document:
    """``doc`` with every rule and rate_limit pattern canonical; problems go to ``report``.

    A rule or rate_limit whose pattern is an error is left out, so later checks never see
    it: the document fails to compile anyway."""

    def pattern_of(item, field: str):
        canonical, problem = tool_pattern(getattr(item, field))
        if problem is not None:
            severity, code, message, help_text = problem
            (report.error if severity == "error" else report.warning)(code, message, item.span, help_text)
            if severity == "error":
                return None
        return item if canonical == getattr(item, field) else dataclasses.replace(item, **{field: canonical})

    def kept(items) -> tuple:
        return tuple(new for new in map(fix, items) if new is not None)

    def fix(item):
        if isinstance(item, ast.Rule):
            return pattern_of(item, "tool")
        if isinstance(item, ast.RateLimit):
            return pattern_of(item, "pattern")
        if isinstance(item, (ast.RulesBlock, ast.Phase)):
            return dataclasses.replace(item, rules=kept(item.rules))
        if isinstance(item, ast.Agent):
            return dataclasses.replace(item, items=kept(item.items))
        if isinstance(item, ast.Delegate):  # scopes are globs too (glob[:constraint])
            for scope in item.scopes:
                problem = too_large(scope.split(":", 1)[0])
                if problem is not None:
                    report.error(problem[1], problem[2], item.span, problem[3])
        return item

    return dataclasses.replace(doc, items=kept(doc.items))
