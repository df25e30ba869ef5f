"""Reductions of the FPL grammar straight into ``policy.ast`` nodes.

Lark calls these methods while the LALR parser reduces (no parse tree and no
recursion, so deeply nested input cannot exhaust the Python stack). Values
are normalised here: effect aliases, ``deny!`` as a strict deny, units to base
quantities, string escapes decoded.

Tool references in call arguments: ``session.sum(stripe/refund.amount,
window=1h)`` passes the unquoted ``stripe/refund.amount`` as two positional
string literals, the tool pattern then the field path:
``Call("session.sum", (Literal("stripe/refund"), Literal("amount")),
(("window", Literal(3600.0, "h")),))``. Without a field (``f(stripe/*)``) it is
one literal. Only an unspaced word containing ``/`` directly followed by ``,``
or ``)`` is read this way; write ``a / b`` with spaces for a division there.
"""

from __future__ import annotations

from decimal import Decimal

from lark import Token, Transformer

from policy import ast
from policy._lexer_tables import MULTI_VALUED, UNITS, SourceError

_BINARY = {"&&": "and", "||": "or", "and": "and", "or": "or"}
_RATE_WINDOWS = ("second", "minute", "hour", "day")
_NET_KIND = {"header": "header", "headers": "header", "query": "query"}


def tspan(tok: Token) -> ast.Span:
    return ast.Span(tok.line, tok.column, tok.end_line, tok.end_column)


def join(first, last) -> ast.Span:
    a = first if isinstance(first, ast.Span) else _span_of(first)
    b = last if isinstance(last, ast.Span) else _span_of(last)
    return ast.Span(a.line, a.col, b.end_line, b.end_col)


def _span_of(item) -> ast.Span:
    if isinstance(item, Token):
        return tspan(item)
    return getattr(item, "span", ast.NO_SPAN)


def fail(code: str, message: str, where, help: str) -> SourceError:
    """An error found while building a node: the syntax up to here was fine."""
    span = where if isinstance(where, ast.Span) else _span_of(where)
    err = SourceError(code, message, span, help)
    err.after_valid_syntax = True
    return err


def number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def quantity(text: str) -> ast.Literal:
    """``15m`` -> Literal(900.0, "m"); ``10mb`` -> Literal(10485760, "mb"); ``$5`` -> 5."""
    if text.startswith("$"):
        return ast.Literal(number(text[1:]), "$")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
    unit = text[len(digits):].lower()
    kind, factor = UNITS[unit]
    if kind == "money":
        return ast.Literal(number(digits), unit)
    value = Decimal(digits) * Decimal(str(factor))
    if kind == "duration":
        return ast.Literal(float(value), unit)
    return ast.Literal(int(value) if value == value.to_integral_value() else float(value), unit)


def scalar_of(tok: Token):
    kind = tok.type
    if kind in ("QUANTITY", "MONEY"):
        return quantity(str(tok))
    if kind == "NUMBER":
        return number(str(tok))
    if kind in ("TRUE", "FALSE"):
        return kind == "TRUE"
    if kind == "NIL":
        return None
    return str(tok)


class _Kwarg(tuple):
    """A ``name=value`` call argument on its way into Call.kwargs."""


class _ToolRef(tuple):
    """The literals an unquoted ``ns/tool.field`` call argument stands for."""


class Lower(Transformer):
    """``conditions`` maps each ``when`` token offset to the condition's text."""

    def __init__(self):
        super().__init__()
        self.conditions: dict[int, str] = {}

    # ------------------------------------------------------------ top level
    def document(self, c):
        span = join(c[0], c[-1]) if c else ast.NO_SPAN
        return ast.Document(tuple(c), span)

    def agent_body(self, c):
        return tuple(c)

    rules_body = phase_body = agent_body

    def ident(self, c):
        return c[0]

    def import_(self, c):
        ref = c[1]
        if "@latest" in ref:
            raise fail("E116", f"import {str(ref)!r} pins `@latest`", ref,
                       "pin an exact version, e.g. \"…/shell@1.0.0\"; @latest can change "
                       "under a running policy")
        alias = str(c[3]) if len(c) > 3 else None
        return ast.Import(str(ref), alias, join(c[0], c[-1]))

    def agent(self, c):
        return ast.Agent(str(c[1]), tuple(c[2:-1]), join(c[0], c[-1]))

    def system(self, c):
        return ast.System(str(c[1]), tuple(c[2:-1]), join(c[0], c[-1]))

    def manifest(self, c):
        kind = str(c[1])
        if kind not in ("orchestrator", "grant"):
            raise fail("E106", f"unknown manifest statement {kind!r}", c[1],
                       "write `manifest orchestrator <id> undeclared deny|defer` or "
                       "`manifest grant <orch> to <target> max <n> [approval]`")
        return ast.Manifest(kind, tuple(str(w) for w in c[2:]), join(c[0], c[-1]))

    # ------------------------------------------------------------ agent body
    def default(self, c):
        word = str(c[1])
        return ast.Default(ast.EFFECT_ALIASES.get(word, word), join(c[0], c[1]))

    def meta(self, c):
        return ast.Meta(str(c[0]), str(c[1]), join(c[0], c[1]))

    def var(self, c):
        return ast.Var(str(c[1]), c[2], join(c[0], c[1]))

    def rules(self, c):
        return ast.RulesBlock(tuple(c[1:-1]), join(c[0], c[-1]))

    def budget(self, c):
        settings = tuple(c[2:-1])
        fields = {}
        for s in settings:
            if s.key in ("max", "daily", "warn_at"):
                fields[s.key] = float(_amount(s))
            elif s.key == "max_calls":
                fields[s.key] = int(_amount(s))
            elif s.key == "on_exceed":
                fields[s.key] = ast.EFFECT_ALIASES.get(str(s.value), str(s.value))
        return ast.Budget(str(c[1]), settings=settings, span=join(c[0], c[-1]), **fields)

    def phase(self, c):
        rules, fields = [], {}
        for item in c[2:-1]:
            if isinstance(item, ast.Rule):
                rules.append(item)
            elif item.key == "duration":
                fields["duration"] = _seconds(item)
            elif item.key == "next":
                fields["next"] = _text(item)
            else:
                raise _unknown_key(item, "phase", "duration, next, or rules")
        return ast.Phase(str(c[1]), tuple(rules), span=join(c[0], c[-1]), **fields)

    def delegate(self, c):
        scopes, fields = [], {}
        for s in c[2:-1]:
            if s.key == "scope":
                values = s.value if isinstance(s.value, tuple) else (s.value,)
                scopes.extend(str(v) for v in values)
            elif s.key == "ttl":
                fields["ttl"] = _seconds(s)
            elif s.key == "ceiling":
                fields["ceiling"] = _text(s)
            else:
                raise _unknown_key(s, "delegate", "scope, ttl, ceiling")
        return ast.Delegate(str(c[1]), tuple(scopes), span=join(c[0], c[-1]), **fields)

    def block(self, c):
        has_name = len(c) > 2 and isinstance(c[1], Token) and c[1].type in ("WORD", "STRING")
        name = str(c[1]) if has_name else None
        kind = str(c[0])
        body = tuple(_listed(kind, s) for s in (c[2:-1] if has_name else c[1:-1]))
        return ast.Block(kind, name, body, join(c[0], c[-1]))

    trust = block

    def trust_line(self, c):
        return ast.Setting(str(c[0]), str(c[1]) if len(c) > 1 else "", join(c[0], c[-1]))

    def rate_limit(self, c):
        per = str(c[4])
        if per not in _RATE_WINDOWS:
            raise fail("E122", f"unknown rate window {per!r}", c[4],
                       "write `per second`, `per minute`, `per hour` or `per day`")
        if "." in c[2]:
            raise fail("E122", f"rate limit count {str(c[2])!r} is not a whole number", c[2],
                       "write a whole number of calls, e.g. `10 per minute`")
        return ast.RateLimit(str(c[1]), int(str(c[2])), per, join(c[0], c[4]))

    def redact(self, c):
        paths = tuple(str(item.value) for item in c[3].items)
        setting = ast.Setting("args", paths, _span_of(c[2]))
        return ast.Block("redact", str(c[1]), (setting,), join(c[0], c[2]))

    def setting(self, c):
        key, values = c[0], c[1:]
        value = values[0] if len(values) == 1 else tuple(values)
        return ast.Setting(str(key), value, tspan(key))

    def scalar(self, c):
        return scalar_of(c[0])

    def value_list(self, c):
        items = tuple(v if isinstance(v, (ast.Literal, ast.ListExpr, ast.Call)) else ast.Literal(v)
                      for v in c)
        return ast.ListExpr(items)

    def env_call(self, c):
        args = tuple(v if isinstance(v, ast.Literal) else ast.Literal(v) for v in c[1:])
        return ast.Call(str(c[0]), args, (), tspan(c[0]))

    # ------------------------------------------------------------ rules
    def rule(self, c):
        effect_tok, tool, clauses = c[0], c[1], c[2:]
        strict = effect_tok.type == "STRICT_DENY"
        effect = "deny" if strict else ast.EFFECT_ALIASES[str(effect_tok)]
        fields: dict = {}
        net = []
        for kind, value, span in clauses:
            if kind == "net":
                net.append(value)
                continue
            if kind in fields:
                raise fail("E121", f"rule has more than one `{kind}` clause", span,
                           f"merge the `{kind}` clauses into one")
            fields[kind] = value
        when = fields.pop("when", None)
        condition, text = when if when else (None, "")
        end = clauses[-1][2] if clauses else _span_of(tool)
        return ast.Rule(effect, str(tool), strict, condition, text, fields.get("notify"),
                        fields.get("reason"), tuple(net), join(effect_tok, end))

    def tool(self, c):
        return c[0]

    def when_clause(self, c):
        text = self.conditions.get(c[0].start_pos, "")
        return ("when", (c[1], text), join(c[0], c[1]))

    def text_clause(self, c):
        return (str(c[0]), str(c[1]), join(c[0], c[1]))

    def net_clause(self, c):
        span = join(c[0], c[1])
        return ("net", ast.NetClause(str(c[0]), str(c[1]), None, span), span)

    def kv_clause(self, c):
        span = join(c[0], c[2])
        clause = ast.NetClause(_NET_KIND[str(c[0])], str(c[2]), str(c[1]), span)
        return ("net", clause, span)

    # ------------------------------------------------------------ expressions
    def conditional(self, c):
        return ast.Conditional(c[0], c[2], c[3], join(c[0], c[3]))

    def binop(self, c):
        left, op, right = c
        op = _BINARY.get(str(op), str(op))
        return ast.Binary(op, left, right, join(left, right))

    def cmp_op(self, c):
        return "not in" if len(c) == 2 else str(c[0])

    def unop(self, c):
        op_tok, operand = c
        if op_tok.type == "MINUS":
            value = getattr(operand, "value", None)
            if isinstance(operand, ast.Literal) and type(value) in (int, float):
                return ast.Literal(-value, operand.unit, join(op_tok, operand))
            return ast.Unary("-", operand, join(op_tok, operand))
        return ast.Unary("not", operand, join(op_tok, operand))

    def member(self, c):
        return ast.Member(c[0], str(c[2]), join(c[0], c[2]))

    def index(self, c):
        return ast.Index(c[0], c[1], join(c[0], c[1]))

    def slice(self, c):
        last = c[2] or c[1] or c[0]
        return ast.Slice(c[0], c[1], c[2], join(c[0], last))

    def call(self, c):
        callee = c[0]
        func = _dotted(callee)
        if func is None:
            raise fail("E118", "only named functions can be called", callee,
                       "call a function by name, e.g. len(args.items) or session.sum(...)")
        args, kwargs = [], []
        for arg in c[1:]:
            if isinstance(arg, _Kwarg):
                kwargs.append((arg[0], arg[1]))
            elif isinstance(arg, _ToolRef):
                args.extend(arg)
            else:
                args.append(arg)
        return ast.Call(func, tuple(args), tuple(kwargs), _span_of(callee))

    def kwarg(self, c):
        return _Kwarg((str(c[0]), c[1]))

    def toolref(self, c):
        text, span = str(c[0]), tspan(c[0])
        slash = text.rfind("/")
        dot = text.find(".", slash)
        if dot < 0:
            return _ToolRef((ast.Literal(text, span=span),))
        return _ToolRef((ast.Literal(text[:dot], span=span), ast.Literal(text[dot + 1:], span=span)))

    def name(self, c):
        return ast.Name(str(c[0]), tspan(c[0]))

    def literal(self, c):
        value = scalar_of(c[0])
        if isinstance(value, ast.Literal):
            return ast.Literal(value.value, value.unit, tspan(c[0]))
        return ast.Literal(value, "", tspan(c[0]))

    def list_expr(self, c):
        span = join(c[0], c[-1]) if c else ast.NO_SPAN
        return ast.ListExpr(tuple(c), span)


def _dotted(expr) -> str | None:
    parts = []
    while isinstance(expr, ast.Member):
        parts.append(expr.name)
        expr = expr.obj
    if not isinstance(expr, ast.Name):
        return None
    parts.append(expr.name)
    return ".".join(reversed(parts))


def _listed(kind: str, s: ast.Setting) -> ast.Setting:
    """Keys that take several values (credential scope) always hold a tuple."""
    if (kind, s.key) in MULTI_VALUED and not isinstance(s.value, tuple):
        return ast.Setting(s.key, (s.value,), s.span)
    return s


def _amount(s: ast.Setting) -> float:
    value = s.value.value if isinstance(s.value, ast.Literal) else s.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail("E122", f"`{s.key}` expects a number, got {s.value!r}", s.span,
                   f"write e.g. `{s.key} 100` (amounts may be written $100)")
    return value


def _seconds(s: ast.Setting) -> float:
    value = s.value
    if isinstance(value, ast.Literal) and UNITS.get(value.unit, ("",))[0] == "duration":
        return float(value.value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise fail("E122", f"`{s.key}` expects a duration, got {value!r}", s.span,
               f"write e.g. `{s.key} 15m` (units s, m, h, d, w)")


def _text(s: ast.Setting) -> str:
    if not isinstance(s.value, str):
        raise fail("E122", f"`{s.key}` expects a word or string, got {s.value!r}", s.span,
                   f"write e.g. `{s.key} inherited`")
    return s.value


def _unknown_key(s: ast.Setting, block: str, known: str) -> SourceError:
    return fail("E106", f"unknown setting `{s.key}` in {block} block", s.span,
                f"a {block} block takes: {known}")
