"""Diagnostics: ``path:line:col: error[code]: message``, the source line, a caret, a help line."""

from __future__ import annotations

from dataclasses import dataclass, field

from policy.ast import Span


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str  # stable, e.g. "E101"
    message: str
    path: str = "<input>"
    span: Span = field(default_factory=Span)
    help: str = ""
    severity: str = "error"  # error | warning
    source_line: str = ""  # the text of span.line, filled in by the producer
    related: tuple["Diagnostic", ...] = ()  # e.g. the deny! that makes a permit unreachable

    @property
    def sort_key(self) -> tuple:
        return (self.path, self.span.line, self.span.col, self.code)

    def render(self) -> str:
        """Human-readable form, rustc style."""
        line, col = self.span.line, self.span.col
        where = f"{self.path}:{line}:{col}" if line else self.path
        out = [f"{where}: {self.severity}[{self.code}]: {self.message}"]
        if self.source_line and line:
            gutter = f"{line:>4} | "
            text, start = _window(self.source_line.rstrip("\n"), max(col - 1, 0))
            width = 1
            if self.span.end_line == line and self.span.end_col > col:
                width = self.span.end_col - col
            width = max(1, min(width, len(text) - start))
            out.append(gutter + text)
            out.append(" " * (len(gutter) + start) + "^" * width)
        for rel in self.related:
            out.append(f"  note: {rel.path}:{rel.span.line}:{rel.span.col}: {rel.message}")
        if self.help:
            out.append(f"  help: {self.help}")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "line": self.span.line,
            "col": self.span.col,
            "end_line": self.span.end_line,
            "end_col": self.span.end_col,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "help": self.help,
            "related": [r.to_dict() for r in self.related],
        }


class PolicyError(Exception):
    """One or more error diagnostics; never carries a Python traceback to the user."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=lambda d: d.sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        errors = [d for d in self.diagnostics if d.severity == "error"]
        body = "\n".join(d.render() for d in self.diagnostics)
        n = len(errors)
        return f"{body}\n{n} error{'s' if n != 1 else ''}"


SHOWN_LINE_CHARS = 160  # a longer source line is shown around the caret only


def _window(text: str, caret: int) -> tuple[str, int]:
    """At most SHOWN_LINE_CHARS of ``text`` around ``caret``, and the caret's offset in it."""
    if len(text) <= SHOWN_LINE_CHARS:
        return text, min(caret, len(text))
    begin = max(0, min(caret - SHOWN_LINE_CHARS // 2, len(text) - SHOWN_LINE_CHARS))
    shown = text[begin:begin + SHOWN_LINE_CHARS]
    prefix = "..." if begin else ""
    suffix = "..." if begin + SHOWN_LINE_CHARS < len(text) else ""
    return prefix + shown + suffix, caret - begin + len(prefix)


def line_of(text: str, line: int) -> str:
    """The 1-based line ``line`` of ``text``, or '' when out of range."""
    lines = text.splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else ""
