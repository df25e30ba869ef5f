"""FPL (Faramesh Policy Language) for faramesh-sandbox: parse, check, compile, decide.

Typical use::

    policy = load_policy(text, "agent.fpl")        # raises PolicyError
    engine = Engine([policy], SessionStore())
    decision = engine.decide(ToolCall("fs/read", {"path": "/etc/hosts"}))
"""

from __future__ import annotations

from policy.calls import ToolCall
from policy.compiler import CompiledPolicy, check, compile_policy
from policy.decision import Decision, Effect
from policy.errors import Diagnostic, PolicyError
from policy.evaluator import Engine
from policy.session import SessionStore

try:  # the parser and printer live in their own modules and may be absent in a partial checkout
    from policy.parser import parse
except ImportError:  # pragma: no cover - only without policy/parser.py
    def parse(text: str, path: str = "<input>"):
        raise PolicyError([Diagnostic("E000", "the FPL parser (policy/parser.py) is not installed", path)])

try:
    from policy.printer import format_document
except ImportError:  # pragma: no cover - only without policy/printer.py
    def format_document(doc) -> str:
        raise PolicyError([Diagnostic("E000", "the FPL printer (policy/printer.py) is not installed")])

__all__ = [
    "CompiledPolicy",
    "Decision",
    "Diagnostic",
    "Effect",
    "Engine",
    "PolicyError",
    "SessionStore",
    "ToolCall",
    "check_sources",
    "compile_policy",
    "format_document",
    "load_policy",
    "parse",
]


def load_policy(text: str, path: str = "<input>") -> CompiledPolicy:
    """Parse and compile one policy file. Raises PolicyError with every error."""
    return compile_policy(parse(text, path), text, path)


def check_sources(sources: list[tuple[str, str]]) -> list[Diagnostic]:
    """Errors and warnings of every ``(path, text)`` file, sorted by location."""
    found: list[Diagnostic] = []
    for path, text in sources:
        try:
            doc = parse(text, path)
        except PolicyError as exc:
            found.extend(exc.diagnostics)
            continue
        found.extend(check(doc, text, path))
    return sorted(found, key=lambda d: d.sort_key)
