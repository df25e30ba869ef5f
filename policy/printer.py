"""``policy.ast`` -> canonical FPL text.

Canonical form: 2-space indentation, one statement per line, effects spelled
``permit``/``deny``/``deny!``/``defer``, rule clauses in the order when, network
clauses (as written), notify, reason; strings double-quoted with escapes;
quantities re-emitted with the unit they were written in (``15m``, ``10mb``,
``$500``); durations stored only as seconds (phase ``duration``, delegate
``ttl``) use the largest unit that divides them. Config-style blocks print
``key = value``, the others ``key value``. Expressions get the fewest
parentheses that keep their shape, so ``parse(format_document(d)) == d``.
"""

from __future__ import annotations

import re
from decimal import Decimal

from policy import ast
from policy._lexer_tables import KNOWN_KEYS, MULTI_VALUED, NETVAL_RE, UNITS, WORD_RE

MAX_LINE = 100
_EQUALS_BLOCKS = frozenset({"runtime", "provider", "identity", "egress", "model_policy",
                            "session", "spawn", "enforcement", "alert"})
_PREC = {"??": 2, "or": 3, "and": 4, "+": 7, "-": 7, "*": 8, "/": 8, "%": 8, "**": 9}
_PREC.update({op: 6 for op in ("==", "!=", "<", "<=", ">", ">=", "in", "not in",
                                "matches", "contains", "startsWith", "endsWith")})
_TERNARY, _NOT, _UNARY, _POSTFIX, _ATOM = 1, 5, 10, 11, 12
_DURATIONS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_RESERVED_VALUES = frozenset({"true", "false"})
_PLAIN_VALUE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-/*]*")


# ------------------------------------------------------------ scalars


def quote(text: str) -> str:
    """A double-quoted FPL string that reads back as ``text``."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable() and code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _word_or_quote(text: str) -> str:
    return text if WORD_RE.fullmatch(text) and text not in _RESERVED_VALUES else quote(text)


def _bare_value(text: str) -> str:
    """Identifiers and tool globs stay bare in settings; hosts, paths, prose are quoted."""
    if _PLAIN_VALUE.fullmatch(text) and text not in _RESERVED_VALUES:
        return text
    return quote(text)


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def number(value: int | float) -> str:
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return text if "." in text else text + ".0"
    return str(value)


def quantity(lit: ast.Literal) -> str:
    value = lit.value
    sign = "-" if value < 0 else ""
    if lit.unit == "$":
        return f"{sign}${number(abs(value))}"
    kind, factor = UNITS[lit.unit]
    if kind == "money":
        return number(value) + lit.unit
    scaled = Decimal(repr(abs(value))) / Decimal(str(factor))
    return f"{sign}{_decimal_text(scaled)}{lit.unit}"


def _seconds(value: float) -> str:
    for unit, factor in _DURATIONS:
        if value and value % factor == 0:
            return f"{int(value // factor)}{unit}"
    return quantity(ast.Literal(value, "s"))


# ------------------------------------------------------------ expressions


def format_expr(expr: ast.Expr) -> str:
    """One-line text of a condition expression."""
    return _expr(expr, 0)


def _prec(expr) -> int:
    if isinstance(expr, ast.Binary):
        return _PREC[expr.op]
    if isinstance(expr, ast.Conditional):
        return _TERNARY
    if isinstance(expr, ast.Unary):
        return _NOT if expr.op == "not" else _UNARY
    if isinstance(expr, ast.Literal):
        is_number = type(expr.value) in (int, float)
        return _UNARY if is_number and expr.value < 0 else _ATOM
    if isinstance(expr, (ast.Member, ast.Index, ast.Slice, ast.Call)):
        return _POSTFIX
    return _ATOM


def _expr(expr, min_prec: int) -> str:
    text = _expr_text(expr)
    return f"({text})" if _prec(expr) < min_prec else text


def _expr_text(e) -> str:
    if isinstance(e, ast.Literal):
        return _literal(e)
    if isinstance(e, ast.Name):
        return e.name
    if isinstance(e, ast.Binary):
        p = _PREC[e.op]
        left, right = (_UNARY, p) if e.op == "**" else (p, p + 1)
        return f"{_expr(e.left, left)} {e.op} {_expr(e.right, right)}"
    if isinstance(e, ast.Unary):
        if e.op == "not":
            return "not " + _expr(e.operand, _NOT)
        return "-" + _expr(e.operand, _UNARY)
    if isinstance(e, ast.Member):
        return f"{_expr(e.obj, _POSTFIX)}.{e.name}"
    if isinstance(e, ast.Index):
        return f"{_expr(e.obj, _POSTFIX)}[{_expr(e.index, 0)}]"
    if isinstance(e, ast.Slice):
        lo = _expr(e.lo, 0) if e.lo is not None else ""
        hi = _expr(e.hi, 0) if e.hi is not None else ""
        return f"{_expr(e.obj, _POSTFIX)}[{lo}:{hi}]"
    if isinstance(e, ast.Call):
        args = [_expr(a, 0) for a in e.args] + [f"{k}={_expr(v, 0)}" for k, v in e.kwargs]
        return f"{e.func}({', '.join(args)})"
    if isinstance(e, ast.Conditional):
        return f"{_expr(e.cond, _TERNARY + 1)} ? {_expr(e.then, 0)} : {_expr(e.otherwise, 0)}"
    if isinstance(e, ast.ListExpr):
        return "[" + ", ".join(_expr(i, 0) for i in e.items) + "]"
    raise TypeError(f"not an FPL expression: {type(e).__name__}")


def _literal(lit: ast.Literal) -> str:
    value = lit.value
    if lit.unit:
        return quantity(lit)
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return number(value)
    return quote(str(value))


# ------------------------------------------------------------ rules


def format_rule(rule: ast.Rule, indent: str = "") -> str:
    head = f"{'deny!' if rule.strict else rule.effect} {_word_or_quote(rule.tool)}"
    clauses = []
    if rule.condition is not None:
        clauses.append("when " + format_expr(rule.condition))
    for net in rule.net:
        if net.key is None:
            clauses.append(f"{net.kind}: {_net_value(net.value)}")
        else:
            clauses.append(f"{net.kind}: {_net_value(net.key)}={_net_value(net.value)}")
    if rule.notify is not None:
        clauses.append("notify: " + quote(rule.notify))
    if rule.reason is not None:
        clauses.append("reason: " + quote(rule.reason))
    line = " ".join([head, *clauses])
    if len(indent) + len(line) <= MAX_LINE or not clauses:
        return indent + line
    return "\n".join([indent + head] + [f"{indent}  {c}" for c in clauses])


def _net_value(text: str) -> str:
    return text if NETVAL_RE.fullmatch(text) else quote(text)


# ------------------------------------------------------------ settings


def _value(value, kind: str = "", key: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, str):
        return _bare_value(value)
    if isinstance(value, ast.Literal):
        if value.unit:
            return quantity(value)
        return quote(value.value) if isinstance(value.value, str) else _value(value.value)
    if isinstance(value, ast.ListExpr):
        return "[" + ", ".join(_value(i) for i in value.items) + "]"
    if isinstance(value, ast.Call):
        return f"{value.func}(" + ", ".join(_value(a) for a in value.args) + ")"
    if isinstance(value, tuple):
        known = KNOWN_KEYS.get(kind, ())
        return " ".join(quote(v) if isinstance(v, str) and v in known else _value(v)
                        for v in value)
    raise TypeError(f"not an FPL setting value: {value!r}")


def _setting(s: ast.Setting, kind: str, indent: str) -> str:
    if kind == "trust":
        return f"{indent}{s.key} {s.value}".rstrip()
    value = s.value
    if isinstance(value, tuple) and len(value) == 1 and (kind, s.key) not in MULTI_VALUED:
        value = value[0]
    sep = " = " if kind in _EQUALS_BLOCKS else " "
    return f"{indent}{s.key}{sep}{_value(value, kind, s.key)}"


def _block(head: str, lines: list[str], indent: str) -> str:
    if not lines:
        return f"{indent}{head} {{\n{indent}}}"
    return "\n".join([f"{indent}{head} {{", *lines, f"{indent}}}"])


def _settings_block(head: str, kind: str, settings, indent: str) -> str:
    inner = indent + "  "
    return _block(head, [_setting(s, kind, inner) for s in settings], indent)


# ------------------------------------------------------------ statements


def _budget_settings(b: ast.Budget) -> tuple[ast.Setting, ...]:
    if b.settings:
        return b.settings
    out = [ast.Setting("max", ast.Literal(b.max, "$"))] if b.max is not None else []
    if b.daily is not None:
        out.append(ast.Setting("daily", ast.Literal(b.daily, "$")))
    if b.max_calls is not None:
        out.append(ast.Setting("max_calls", b.max_calls))
    if b.warn_at is not None:
        out.append(ast.Setting("warn_at", b.warn_at))
    out.append(ast.Setting("on_exceed", b.on_exceed))
    return tuple(out)


def _item(item, indent: str) -> str:
    inner = indent + "  "
    if isinstance(item, ast.Rule):
        return format_rule(item, indent)
    if isinstance(item, ast.Default):
        return f"{indent}default {item.effect}"
    if isinstance(item, ast.Meta):
        return f"{indent}{item.key} {quote(item.value)}"
    if isinstance(item, ast.Var):
        value = quote(item.value) if isinstance(item.value, str) else _value(item.value)
        return f"{indent}var {_word_or_quote(item.name)} {value}"
    if isinstance(item, ast.RulesBlock):
        return _block("rules", [format_rule(r, inner) for r in item.rules], indent)
    if isinstance(item, ast.Budget):
        head = f"budget {_word_or_quote(item.scope)}"
        return _settings_block(head, "budget", _budget_settings(item), indent)
    if isinstance(item, ast.Phase):
        lines = [format_rule(r, inner) for r in item.rules]
        if item.duration is not None:
            lines.append(f"{inner}duration {_seconds(item.duration)}")
        if item.next is not None:
            lines.append(f"{inner}next {_word_or_quote(item.next)}")
        return _block(f"phase {_word_or_quote(item.name)}", lines, indent)
    if isinstance(item, ast.Delegate):
        lines = [f"{inner}scope {quote(s)}" for s in item.scopes]
        if item.ttl is not None:
            lines.append(f"{inner}ttl {_seconds(item.ttl)}")
        if item.ceiling is not None:
            lines.append(f"{inner}ceiling {_word_or_quote(item.ceiling)}")
        return _block(f"delegate {_word_or_quote(item.target)}", lines, indent)
    if isinstance(item, ast.RateLimit):
        return f"{indent}rate_limit {quote(item.pattern)}: {item.count} per {item.per}"
    if isinstance(item, ast.Block):
        return _block_item(item, indent)
    if isinstance(item, ast.Agent):
        lines = [_item(i, inner) for i in item.items]
        return _block(f"agent {_word_or_quote(item.name)}", lines, indent)
    if isinstance(item, ast.System):
        return _settings_block(f"system {_word_or_quote(item.name)}", "system",
                               item.settings, indent)
    if isinstance(item, ast.Manifest):
        return f"{indent}manifest {' '.join([item.kind, *map(_manifest_word, item.words)])}"
    if isinstance(item, ast.Import):
        alias = f" as {_word_or_quote(item.alias)}" if item.alias is not None else ""
        return f"{indent}import {quote(item.ref)}{alias}"
    raise TypeError(f"not an FPL statement: {type(item).__name__}")


def _block_item(b: ast.Block, indent: str) -> str:
    if b.kind == "redact":
        paths = b.settings[0].value if b.settings else ()
        if isinstance(paths, ast.ListExpr):
            paths = tuple(item.value for item in paths.items)
        listed = ", ".join(quote(str(p)) for p in paths)
        return f"{indent}redact {_word_or_quote(b.name or '')} args: [{listed}]"
    head = b.kind if b.name is None else f"{b.kind} {_word_or_quote(b.name)}"
    return _settings_block(head, b.kind, b.settings, indent)


def _manifest_word(word: str) -> str:
    return word if WORD_RE.fullmatch(word) or word.replace(".", "", 1).isdigit() else quote(word)


def format_document(doc: ast.Document) -> str:
    """Canonical FPL text of ``doc``, ending with a newline."""
    out: list[str] = []
    previous_multiline = False
    for item in doc.items:
        text = _item(item, "")
        multiline = "\n" in text
        if out:
            out.append("\n\n" if multiline or previous_multiline else "\n")
        out.append(text)
        previous_multiline = multiline
    return "".join(out) + "\n" if out else ""
