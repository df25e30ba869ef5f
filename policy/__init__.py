"""FPL (Faramesh Policy Language) for faramesh-sandbox: parse, check, compile, decide.

Typical use::

    policy = load_policy(text, "agent.fpl")        # raises PolicyError
    engine = Engine([policy], SessionStore())
    decision = engine.decide(ToolCall("fs/read", {"path": "/etc/hosts"}))
"""

from __future__ import annotations

from policy._checks import check_layer_conflicts
from policy._envelope import Envelope
from policy.calls import ToolCall
from policy.compiler import CompiledPolicy, check, compile_policy
from policy.decision import Decision, Effect
from policy.errors import Diagnostic, PolicyError
from policy.evaluator import Engine
from policy.parser import parse
from policy.printer import format_document
from policy.session import SessionStore

__all__ = [
    "CompiledPolicy",
    "Decision",
    "Diagnostic",
    "Effect",
    "Engine",
    "Envelope",
    "PolicyError",
    "SessionStore",
    "ToolCall",
    "check_sources",
    "compile_policy",
    "format_document",
    "load_policy",
    "parse",
]


def load_policy(text: str | bytes, path: str = "<input>") -> CompiledPolicy:
    """Parse and compile one policy file. Raises PolicyError with every error."""
    return compile_policy(parse(text, path), text, path)


def check_sources(sources: list[tuple[str, str | bytes]]) -> list[Diagnostic]:
    """Errors and warnings of every ``(path, text)`` file, sorted by location.

    The files are also checked as one stack of layers (W305)."""
    found: list[Diagnostic] = []
    parsed = []
    for path, text in sources:
        try:
            doc = parse(text, path)
        except PolicyError as exc:
            found.extend(exc.diagnostics)
            continue
        found.extend(check(doc, text, path))
        parsed.append((path, text.decode("utf-8", "replace") if isinstance(text, bytes) else text, doc))
    found.extend(check_layer_conflicts(parsed))
    return sorted(found, key=lambda d: d.sort_key)
