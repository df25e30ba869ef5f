"""Turn "token X where the parser expected Y" into a labelled FPL diagnostic.

Each entry of ``_CASES`` recognises one common mistake from the offending
token, the token before it and the expected terminals; the first match wins
and the generic E100 message is the fallback.
"""

from __future__ import annotations

from lark import Token

from policy import ast
from policy._lexer import Lexer
from policy._lexer_tables import EFFECT_WORDS
from policy.errors import Diagnostic

READABLE = {
    "RBRACE": "`}`", "_LBRACE": "`{`", "_LSQB": "`[`", "_RSQB": "`]`", "_LPAR": "`(`",
    "_RPAR": "`)`", "_COMMA": "`,`", "_COLON": "`:`", "_EQUAL": "`=`", "$END": "end of input",
    "WORD": "a word", "STRING": "a string", "KEY": "a setting name", "NAME": "a name",
    "NUMBER": "a number", "QUANTITY": "a quantity (15m, 10mb)", "MONEY": "an amount ($500)",
    "EFFECT": "an effect (permit, deny, defer)", "STRICT_DENY": "deny!",
    "WHEN": "when", "TEXT_KW": "notify:/reason:", "NETKW": "host:/port:/method:/path:",
    "KVKW": "query:/header:", "NETVAL": "a value", "MWORD": "a manifest word",
    "RAWLINE": "text", "TOOLREF": "a tool reference", "CMP": "a comparison",
    "AGENT": "agent", "SYSTEM": "system", "IMPORT": "import", "MANIFEST": "manifest",
    "DEFAULT": "default", "META": "model/framework/version", "BLOCK_KW": "a block keyword",
}
_NAMED_BLOCKS = {"AGENT": ("agent", "agent my-agent {"), "SYSTEM": ("system", "system global {"),
                 "PHASE": ("phase", "phase intake {"), "DELEGATE": ("delegate", "delegate worker {"),
                 "BUDGET": ("budget", "budget session {"), "VAR": ("var", "var region \"eu\"")}
_AGENT_STATEMENTS = ("default, model, framework, version, var, rules, budget, phase, delegate, "
                     "ambient, selector, credential, rate_limit, redact, egress, model_policy, "
                     "session, spawn, completion_gate, enforcement, alert, or a rule "
                     "(permit|deny|deny!|defer <tool> ...)")
_TOP_STATEMENTS = ("agent, system, import, manifest, runtime, provider, identity, trust, or a "
                   "rule (permit|deny|deny!|defer <tool> ...)")


def _shown(tok: Token) -> str:
    return "end of input" if tok.type == "$END" else f"`{tok}`"


def _missing_name(tok, prev, expected, lexer):
    if prev is None or prev.type not in _NAMED_BLOCKS or not expected <= {"WORD", "STRING"}:
        return None
    word, example = _NAMED_BLOCKS[prev.type]
    return ("E102", f"`{word}` is missing its name before {_shown(tok)}",
            f"write a name after `{word}`, e.g. `{example}`")


def _unclosed(tok, prev, expected, lexer):
    if tok.type != "$END":
        return None
    if "RBRACE" in expected and lexer.open_braces:
        return ("E108", "unexpected end of input: a `{` is never closed",
                "add the missing `}`; the unclosed `{` is marked", lexer.open_braces[-1])
    return ("E108", "unexpected end of input", "complete the statement; expected "
            + _expected_text(expected))


def _unmatched(tok, prev, expected, lexer):
    if tok.type == "RBRACE" and lexer.unmatched_close:
        return ("E109", "unmatched `}`", "remove it, or add the `{ ... }` block it closes")
    return None


def _same_line_effect(tok, prev, expected, lexer):
    if tok.type == "NAME" and tok in (*EFFECT_WORDS, "deny!"):
        return ("E117", f"`{tok}` follows a condition on the same line",
                f"start the next rule on its own line, or use a variable name other than `{tok}`")
    return None


def _equals_after_meta(tok, prev, expected, lexer):
    if tok.type == "_EQUAL" and prev is not None and prev.type in ("META", "DEFAULT"):
        return ("E100", f"`{prev}` takes its value without `=`",
                f"write `{prev} \"...\"` (only config blocks such as runtime use `key = value`)")
    return None


def _missing_value(tok, prev, expected, lexer):
    if prev is not None and prev.type == "KEY" and "_EQUAL" in expected:
        return ("E123", f"setting `{prev}` has no value",
                f"write a value after the key, e.g. `{prev} 100` or `{prev} \"text\"`")
    return None


def _missing_tool(tok, prev, expected, lexer):
    if prev is not None and prev.type in ("EFFECT", "STRICT_DENY") and expected <= {"WORD", "STRING"}:
        return ("E107", f"rule `{prev}` is missing its tool pattern",
                f"write the tool after the effect, e.g. `{prev} shell/*`")
    return None


def _expected_operand(tok, prev, expected, lexer):
    if "NAME" in expected and "CMP" not in expected:
        after = f" after `{prev}`" if prev is not None else ""
        found = "" if tok.type == "$END" else f", found {_shown(tok)}"
        return ("E110", f"expected an expression{after}{found}",
                "complete the condition, e.g. `when args.amount > 500`")
    return None


def _unknown_statement(tok, prev, expected, lexer):
    if "DEFAULT" in expected:
        return ("E106", f"unknown statement {_shown(tok)} in agent body",
                "an agent body holds: " + _AGENT_STATEMENTS)
    if "AGENT" in expected:
        return ("E106", f"unknown top-level statement {_shown(tok)}",
                "a policy holds: " + _TOP_STATEMENTS)
    if "KEY" in expected and tok.type not in ("RBRACE",):
        return ("E106", f"expected a setting name, found {_shown(tok)}",
                "write one `key value` per line, e.g. `max_calls 100`")
    return None


def _inside_condition(tok, prev, expected, lexer):
    if "CMP" in expected and prev is not None and prev.line == tok.line:
        return ("E100", f"unexpected {_shown(tok)} in condition",
                "join conditions with `and`/`or`, quote string values, and give clause "
                "keywords a colon (reason: \"...\")")
    return None


_CASES = (_unmatched, _missing_name, _same_line_effect, _equals_after_meta, _missing_value,
          _missing_tool, _expected_operand,
          _unclosed, _inside_condition, _unknown_statement)


_MISSING = (_missing_name, _missing_value, _missing_tool, _expected_operand)


def _expected_text(expected: set[str]) -> str:
    names = sorted({READABLE.get(t, t.lower()) for t in expected})
    if len(names) > 8:
        names = names[:8] + ["..."]
    return ", ".join(names)


def explain(tok: Token, expected: set[str], lexer: Lexer, path: str) -> Diagnostic:
    prev = lexer.prev if lexer.last is tok else lexer.last
    if tok.type == "$END" and prev is not None:
        # point just past the last token rather than at whatever follows the item
        span = ast.Span(prev.end_line, prev.end_column, prev.end_line, prev.end_column + 1)
    else:
        span = ast.Span(tok.line or 1, tok.column or 1, tok.end_line or tok.line or 1,
                        tok.end_column or (tok.column or 1) + 1)
    for case in _CASES:
        found = case(tok, prev, expected, lexer)
        if found:
            code, message, help = found[:3]
            if len(found) > 3:
                span = found[3]
            elif case in _MISSING and prev is not None and tok.line > prev.end_line:
                # something is missing at the end of a line: point there, not at the next line
                span = ast.Span(prev.end_line, prev.end_column, prev.end_line, prev.end_column + 1)
            return Diagnostic(code, message, path, span, help)
    return Diagnostic("E100", f"unexpected {_shown(tok)}", path, span,
                      "expected " + _expected_text(expected))
